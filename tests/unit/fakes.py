"""Kubernetes API stand-ins shared by the controller's unit tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kubernetes_asyncio.client.rest import ApiException


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
