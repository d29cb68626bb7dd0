"""KubernetesActuator's write preconditions without a cluster (the real-API version is
tests/e2e/test_actuator_precondition_e2e.py): replicas changed since the decision's read, a
writer slipping in between the read and the PATCH (the JSON patch's `test` op), the fence."""

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
        # JSON patch semantics, as the API server applies them: a failed `test` is a 422.
        for op in body:
            if op["op"] == "test" and self.replicas != op["value"]:
                raise ApiException(status=422)
        self.patches.append(body)
        self.replicas = next(op["value"] for op in body if op["op"] == "replace")
        self.rv += 1
        return None


def _act(apps: Apps, fence: Any = None) -> kube.KubernetesActuator:
    return kube.KubernetesActuator(SimpleNamespace(), apps=apps, fence=fence)  # type: ignore[arg-type]


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


async def test_unchanged_replicas_write_is_a_compare_and_swap() -> None:
    """A status update moves the resourceVersion, not the replicas: the write goes through,
    as a `test` of the replicas read and a `replace`."""
    apps = Apps(4)
    act = _act(apps)
    await act.status(REF)
    apps.rv = 9  # a pod turned ready
    await act.scale(REF, 6, reason="t")
    assert apps.patches == [[
        {"op": "test", "path": "/spec/replicas", "value": 4},
        {"op": "replace", "path": "/spec/replicas", "value": 6},
    ]]


async def test_writer_between_read_and_patch_fails_the_test_op() -> None:
    """Read 4, the operator sets 10 while our PATCH is in flight: the `test` op fails, nothing
    is written, ActuationConflict (the next tick re-decides on 10)."""
    apps = Apps(4)
    act = _act(apps)
    await act.status(REF)

    def operator() -> None:
        apps.replicas = 10

    apps.on_patch = operator
    with pytest.raises(errors.ActuationConflict, match="HTTP 422"):
        await act.scale(REF, 3, reason="t")
    assert apps.replicas == 10
    assert apps.patches == []


@pytest.mark.parametrize("status", [409, 422])
async def test_a_conflict_is_not_retried(status: int) -> None:
    """A conflict is not retried blindly: the next tick decides on what is there now."""
    apps = Apps(4)
    act = _act(apps)
    await act.status(REF)
    apps.patch_errors = [ApiException(status=status)]
    with pytest.raises(errors.ActuationConflict):
        await act.scale(REF, 9, reason="t")
    assert apps.patches == []
    assert apps.replicas == 4


async def test_closed_fence_writes_nothing() -> None:
    """The lease is lost between the decision and the write: no PATCH is sent."""
    apps = Apps(4)
    leader = [True]
    act = _act(apps, fence=lambda _ref: leader[0])
    await act.status(REF)
    leader[0] = False
    with pytest.raises(errors.ActuationError, match="fence closed"):
        await act.scale(REF, 9, reason="t")
    assert apps.patches == []
    assert apps.replicas == 4
