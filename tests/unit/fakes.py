"""Kubernetes API stand-ins shared by the controller's unit tests."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.controller.endpoint import MERGE_PATCH


class FakeStateCore:
    """CoreV1Api stand-in holding the controller's state ConfigMap (404 until created)."""

    def __init__(self) -> None:
        self.cm: Any = None

    async def read_namespaced_config_map(self, name: str, ns: str, **_: Any) -> Any:
        if self.cm is None:
            raise ApiException(status=404)
        return self.cm

    async def patch_namespaced_config_map(self, name: str, ns: str, body: Any, **_: Any) -> Any:
        if self.cm is None:
            raise ApiException(status=404)
        self.cm.data.update(body["data"])
        return self.cm

    async def create_namespaced_config_map(self, ns: str, body: Any, **_: Any) -> Any:
        self.cm = SimpleNamespace(data=dict(body.data))
        return self.cm


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
