"""The Deployment watch cache on the real control plane: it follows scales made by someone
else, survives the API server ending its watches, and a cache that lags behind the cluster
cannot cause a wrong write (the actuator's compare-and-swap is refused by the API server
itself).

Not here: the re-list after 410 Gone (tests/unit/test_cluster_cache.py covers it on a scripted
stream). This control plane served a watch from resourceVersion 1 with the current objects
even after an etcd compaction (its watch cache answered, not etcd), so no 410 could be forced
from a test; forcing one would need the watch cache's event window to overflow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient

from autoscaler import errors
from autoscaler.actuator.kubernetes import KubernetesActuator
from autoscaler.controller.cluster_cache import DeploymentCache, KubeDeploymentApi, Scope
from autoscaler.spec import DeploymentRef

from .support import gpu_deployment

pytestmark = [pytest.mark.k8s]


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _cached(cache: DeploymentCache, ref: DeploymentRef) -> int | None:
    synced, rec = cache.lookup(ref)
    return rec.status.replicas if synced and rec is not None else None


async def _scale(apps: client.AppsV1Api, ref: DeploymentRef, n: int) -> None:
    await apps.patch_namespaced_deployment_scale(ref.name, ref.namespace, {"spec": {"replicas": n}})


async def test_cache_follows_outside_scales_across_watch_ends(
        k8s_api: ApiClient, k8s_namespace: str) -> None:
    ns = k8s_namespace
    apps = client.AppsV1Api(k8s_api)
    refs = [DeploymentRef(namespace=ns, name=n) for n in ("p", "d")]
    for r, n in zip(refs, (2, 3), strict=True):
        await apps.create_namespaced_deployment(ns, gpu_deployment(r.name, replicas=n))
    await apps.create_namespaced_deployment(ns, gpu_deployment("not-a-target", replicas=1))
    # The server ends each watch after 2 s, so the test sees several resumes; one watch on the
    # namespace (by_name_max=0), whose other Deployments are not stored.
    cache = DeploymentCache(KubeDeploymentApi(apps, watch_timeout_s=2), by_name_max=0)
    cache.set_targets(refs)
    try:
        await _until(cache.synced, "the first list")
        assert [_cached(cache, r) for r in refs] == [2, 3]
        assert len(cache) == 2  # not-a-target was listed but not stored

        await _scale(apps, refs[0], 5)  # an operator's kubectl scale
        await _until(lambda: _cached(cache, refs[0]) == 5, "the scale event")

        st = cache.scopes[Scope(ns)]
        await _until(lambda: st.resumes >= 2, "two watch ends", timeout_s=15)
        assert st.lists == 1  # resumed, not re-listed
        await _scale(apps, refs[0], 6)
        await _until(lambda: _cached(cache, refs[0]) == 6, "a scale after the resumes")

        assert st.errors == 0
    finally:
        await cache.stop()


class Lagging:
    """The real watch, with its events held back while `flowing` is clear (a slow watch)."""

    def __init__(self, inner: KubeDeploymentApi) -> None:
        self.inner = inner
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def list(self, scope: Scope) -> tuple[list[Any], str]:
        return await self.inner.list(scope)

    async def watch(self, scope: Scope, resource_version: str) -> AsyncIterator[Any]:
        async for ev in self.inner.watch(scope, resource_version):
            await self.flowing.wait()
            yield ev


async def test_a_lagging_cache_cannot_write_over_an_outside_scale(
        k8s_api: ApiClient, k8s_namespace: str) -> None:
    """Cache says 4, an operator set 10, the controller wants 3: the API server refuses the
    compare-and-swap, 10 stays; once the event arrives the next decision's write goes through."""
    ns = k8s_namespace
    apps = client.AppsV1Api(k8s_api)
    ref = DeploymentRef(namespace=ns, name="decode")
    await apps.create_namespaced_deployment(ns, gpu_deployment(ref.name, replicas=4))
    api = Lagging(KubeDeploymentApi(apps))
    cache = DeploymentCache(api)
    cache.set_targets([ref])
    act = KubernetesActuator(k8s_api, reader=cache)
    try:
        await _until(cache.synced, "the first list")
        assert (await act.status(ref)).replicas == 4
        api.flowing.clear()
        await _scale(apps, ref, 10)
        assert (await act.status(ref)).replicas == 4  # stale
        with pytest.raises(errors.ActuationConflict, match="HTTP 422"):
            await act.scale(ref, 3, reason="test")
        got = await apps.read_namespaced_deployment_scale(ref.name, ns)
        assert got.spec.replicas == 10
        api.flowing.set()
        await _until(lambda: _cached(cache, ref) == 10, "the event")
        assert (await act.status(ref)).replicas == 10
        await act.scale(ref, 3, reason="test")
        got = await apps.read_namespaced_deployment_scale(ref.name, ns)
        assert got.spec.replicas == 3
    finally:
        await cache.stop()
