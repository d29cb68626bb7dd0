"""The scale precondition on a real API server (issue 17): a scale written by someone else
between the controller's read and its PATCH is never overwritten, and a closed fence stops the
write. Nothing is faked: the operator's `kubectl scale` is a PATCH by the admin client."""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient

from autoscaler import errors
from autoscaler.actuator.kubernetes import KubernetesActuator
from autoscaler.spec import DeploymentRef

from .support import gpu_deployment

pytestmark = [pytest.mark.k8s, pytest.mark.faults]


async def _replicas(api: ApiClient, ns: str, name: str) -> int:
    scale = await client.AppsV1Api(api).read_namespaced_deployment_scale(name, ns)
    return int(scale.spec.replicas)


async def test_operator_scale_between_read_and_patch_is_not_overwritten(
    k8s_api: ApiClient, k8s_namespace: str
) -> None:
    """Read 4, an operator sets 10, the controller wants 3: 10 stays, ActuationConflict is
    raised (the next tick re-decides on 10); after a fresh read the write goes through."""
    ns, name = k8s_namespace, "decode"
    apps = client.AppsV1Api(k8s_api)
    await apps.create_namespaced_deployment(ns, gpu_deployment(name, replicas=4))
    ref = DeploymentRef(namespace=ns, name=name)
    act = KubernetesActuator(k8s_api)

    assert (await act.status(ref)).replicas == 4
    await apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 10}})
    with pytest.raises(errors.ActuationConflict, match="changed from 4 to 10"):
        await act.scale(ref, 3, reason="test")
    assert await _replicas(k8s_api, ns, name) == 10

    assert (await act.status(ref)).replicas == 10
    await act.scale(ref, 3, reason="test")
    assert await _replicas(k8s_api, ns, name) == 3


async def test_closed_fence_writes_nothing(k8s_api: ApiClient, k8s_namespace: str) -> None:
    ns, name = k8s_namespace, "prefill"
    apps = client.AppsV1Api(k8s_api)
    await apps.create_namespaced_deployment(ns, gpu_deployment(name, replicas=2))
    ref = DeploymentRef(namespace=ns, name=name)
    leader = [True]
    act = KubernetesActuator(k8s_api, fence=lambda _ref: leader[0])
    await act.status(ref)
    leader[0] = False
    with pytest.raises(errors.ActuationError, match="fence closed"):
        await act.scale(ref, 5, reason="test")
    assert await _replicas(k8s_api, ns, name) == 2


async def test_writer_between_scale_read_and_patch_fails_the_test_op(
    k8s_api: ApiClient, k8s_namespace: str
) -> None:
    """The operator's scale lands after the actuator re-read the scale subresource and before
    its PATCH: the real API server refuses the JSON patch's `test` op and 10 stays."""
    ns, name = k8s_namespace, "decode"
    apps = client.AppsV1Api(k8s_api)
    await apps.create_namespaced_deployment(ns, gpu_deployment(name, replicas=4))
    ref = DeploymentRef(namespace=ns, name=name)
    real_patch = apps.patch_namespaced_deployment_scale

    class OperatorFirst:
        """AppsV1Api whose scale PATCH is preceded by the operator's own."""

        def __getattr__(self, attr: str) -> object:
            return getattr(apps, attr)

        async def patch_namespaced_deployment_scale(self, *args: object, **kw: object) -> object:
            await real_patch(name, ns, {"spec": {"replicas": 10}})
            return await real_patch(*args, **kw)

    act = KubernetesActuator(k8s_api, apps=OperatorFirst())  # type: ignore[arg-type]
    assert (await act.status(ref)).replicas == 4
    with pytest.raises(errors.ActuationConflict, match="between the read and the write"):
        await act.scale(ref, 3, reason="test")
    assert await _replicas(k8s_api, ns, name) == 10
