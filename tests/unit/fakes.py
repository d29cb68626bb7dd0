"""Kubernetes API stand-ins shared by the controller's unit tests."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.controller.endpoint import MERGE_PATCH


class FakeStateCore:
    """CoreV1Api stand-in holding the controller's state ConfigMaps by name (404 until created):
    `data` (the legacy single ConfigMap) and `binaryData` (the shards), merged as a patch does."""

    def __init__(self) -> None:
        self.cms: dict[str, Any] = {}

    def put(self, name: str, *, data: dict[str, str] | None = None,
            binary_data: dict[str, str] | None = None) -> None:
        self.cms[name] = SimpleNamespace(data=dict(data or {}),
                                         binary_data=dict(binary_data or {}))

    def doc(self, name: str, key: str) -> str | None:
        """A shard's document, unpacked (None if absent)."""
        from autoscaler.controller.state_store import unpack  # noqa: PLC0415

        cm = self.cms.get(name)
        raw = cm.binary_data.get(key + ".gz") if cm is not None else None
        return None if raw is None else unpack(raw, where=name)

    async def read_namespaced_config_map(self, name: str, ns: str, **_: Any) -> Any:
        if name not in self.cms:
            raise ApiException(status=404)
        return self.cms[name]

    async def patch_namespaced_config_map(self, name: str, ns: str, body: Any, **_: Any) -> Any:
        if name not in self.cms:
            raise ApiException(status=404)
        cm = self.cms[name]
        cm.data.update(body.get("data", {}))
        cm.binary_data.update(body.get("binaryData", {}))
        return cm

    async def create_namespaced_config_map(self, ns: str, body: Any, **_: Any) -> Any:
        self.put(body.metadata.name, data=body.data, binary_data=body.binary_data)
        return self.cms[body.metadata.name]


class FakeReadyApps:
    """AppsV1Api stand-in: every Deployment has 2 replicas, both ready."""

    async def read_namespaced_deployment(self, name: str, ns: str, **_: Any) -> Any:
        return SimpleNamespace(spec=SimpleNamespace(replicas=2),
                               status=SimpleNamespace(ready_replicas=2),
                               metadata=SimpleNamespace(annotations=None, uid="u1",
                                                        resource_version="7"))


def ep(address: str, *, pod: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [address], "conditions": {"ready": True}}
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "ns"}
    return out


class FakeDiscovery:
    """DiscoveryV1Api stand-in for one EndpointSlice: reads give a model with the current
    resourceVersion; a merge patch whose resourceVersion is stale gets 409."""

    def __init__(self, endpoints: list[dict[str, Any]], *, address_type: str = "IPv4") -> None:
        self.endpoints = endpoints
        self.address_type = address_type
        self.rv = 1
        self.read_errors: list[BaseException] = []
        self.patch_errors: list[BaseException] = []
        # Writes by someone else that land between our read and our patch.
        self.interleaved: list[list[dict[str, Any]]] = []
        self.writes: list[list[str]] = []
        self.reads = 0

    def addresses(self) -> list[str]:
        return [a for e in self.endpoints for a in e["addresses"]]

    async def read_namespaced_endpoint_slice(self, name: str, ns: str, **_: Any) -> Any:
        await asyncio.sleep(0)
        self.reads += 1
        if self.read_errors:
            raise self.read_errors.pop(0)
        return client.V1EndpointSlice(
            address_type=self.address_type,
            metadata=client.V1ObjectMeta(name=name, namespace=ns, resource_version=str(self.rv)),
            endpoints=[client.V1Endpoint(
                addresses=list(e["addresses"]),
                conditions=client.V1EndpointConditions(ready=e["conditions"].get("ready")),
                target_ref=(client.V1ObjectReference(**e["targetRef"])
                            if "targetRef" in e else None))
                for e in self.endpoints])

    async def patch_namespaced_endpoint_slice(self, name: str, ns: str, body: Any,
                                              **kw: Any) -> Any:
        await asyncio.sleep(0)
        assert kw["_content_type"] == MERGE_PATCH
        if self.patch_errors:
            raise self.patch_errors.pop(0)
        if self.interleaved:
            self.endpoints = self.interleaved.pop(0)
            self.rv += 1
        if body["metadata"]["resourceVersion"] != str(self.rv):
            raise ApiException(status=409, reason="Conflict")
        self.endpoints = body["endpoints"]
        self.rv += 1
        self.writes.append(self.addresses())
        return None
