"""Kubernetes API stand-ins shared by the controller's unit tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kubernetes_asyncio.client.rest import ApiException


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
