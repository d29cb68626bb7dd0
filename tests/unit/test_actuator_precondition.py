"""KubernetesActuator's write preconditions without a cluster (the real-API version is
tests/e2e/test_actuator_precondition_e2e.py): replicas changed since the decision's read, and
the fence checked again before the 409 retry."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler.actuator import kubernetes as kube
from autoscaler.spec import DeploymentRef

REF = DeploymentRef(namespace="llm", name="d")


def _obj(replicas: int, rv: str) -> Any:
    return SimpleNamespace(
        spec=SimpleNamespace(replicas=replicas),
        status=SimpleNamespace(ready_replicas=replicas),
        metadata=SimpleNamespace(annotations=None, uid="u", resource_version=rv),
    )


class Apps:
    """AppsV1Api stand-in: one Deployment whose replicas a test (the 'operator') can change."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.rv = 1
        self.patches: list[Any] = []
        self.patch_errors: list[BaseException] = []
        self.on_patch: Any = None

    async def read_namespaced_deployment(self, name: str, ns: str, **_: Any) -> Any:
        return _obj(self.replicas, str(self.rv))

    async def read_namespaced_deployment_scale(self, name: str, ns: str, **_: Any) -> Any:
        return _obj(self.replicas, str(self.rv))

    async def patch_namespaced_deployment_scale(self, name: str, ns: str, body: Any,
                                                **_: Any) -> Any:
        if self.on_patch is not None:
            self.on_patch()
        if self.patch_errors:
            raise self.patch_errors.pop(0)
        self.patches.append(body)
        self.replicas = body["spec"]["replicas"]
        self.rv += 1
        return None


def _act(apps: Apps, fence: Any = None) -> kube.KubernetesActuator:
    act = kube.KubernetesActuator(SimpleNamespace(), fence=fence)
    act._apps = apps  # type: ignore[assignment]
    return act


async def test_replicas_changed_since_read_is_a_conflict_not_a_write() -> None:
    apps = Apps(4)
    act = _act(apps)
    await act.status(REF)
    apps.replicas = 10  # kubectl scale between our read and our write
    with pytest.raises(errors.ActuationConflict, match="changed from 4 to 10"):
        await act.scale(REF, 3, reason="t")
    assert apps.patches == []
    await act.status(REF)
    await act.scale(REF, 3, reason="t")
    assert apps.replicas == 3


async def test_unchanged_replicas_write_with_resource_version() -> None:
    apps = Apps(4)
    act = _act(apps)
    await act.status(REF)
    apps.rv = 9  # a status update (a pod turned ready) moves the version, not the replicas
    await act.scale(REF, 6, reason="t")
    assert apps.patches == [{"metadata": {"resourceVersion": "9"}, "spec": {"replicas": 6}}]


async def test_fence_rechecked_before_the_409_retry() -> None:
    """The lease is lost while the first PATCH is in flight (it returns 409): no retry."""
    apps = Apps(4)
    leader = [True]
    act = _act(apps, fence=lambda: leader[0])
    await act.status(REF)
    apps.patch_errors = [ApiException(status=409)]

    def lose() -> None:
        leader[0] = False

    apps.on_patch = lose
    with pytest.raises(errors.ActuationError, match="fence closed"):
        await act.scale(REF, 9, reason="t")
    assert apps.patches == []
    assert apps.replicas == 4
