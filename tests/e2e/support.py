"""Polling and manifest helpers shared by the e2e tests.

Tests wait for the cluster's controllers with bounded polls, never fixed sleeps: a poll returns as
soon as the condition holds, and on timeout the error shows the last observed value.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kubernetes_asyncio.client.rest import ApiException

from ..k8senv.cluster import GPU_RESOURCE

T = TypeVar("T")

# Any image works with kwok (nothing is pulled); on a real node (KUBECONFIG mode) pause runs.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool] = bool,
    timeout_s: float,
    interval_s: float = 0.25,
    what: str,
) -> T:
    """Call `probe` until `until(result)` holds; return that result or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = await probe()
        if until(last):
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout_s:g}s; last value: {last!r}")
        await asyncio.sleep(interval_s)


def manifest(obj: dict[str, Any]) -> Any:
    """Pass a plain-dict manifest where kubernetes_asyncio's annotations want a model object.

    The client serialises dicts exactly like models (and YAML-shaped dicts read far better in
    tests), but its type hints name only the model classes; this states that choice once.
    """
    return obj


def gpu_deployment(name: str, *, replicas: int, gpus: int = 1,
                   labels: dict[str, str] | None = None) -> Any:
    """A Deployment whose Pods each request `gpus` GPUs; kwok's fake GPU nodes run them."""
    match = {"app": name, **(labels or {})}
    resources = {"limits": {GPU_RESOURCE: str(gpus)}, "requests": {GPU_RESOURCE: str(gpus)}}
    return manifest({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": match},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": match},
                "spec": {
                    "containers": [{"name": "vllm", "image": PAUSE_IMAGE, "resources": resources}],
                    # Pods of a deleted namespace should go at once, freeing GPUs for the next test.
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    })


async def state_doc(api: Any, ns: str, pool: str, key: str, *, shards: int = 60,
                    prefix: str = "pd-autoscaler-state") -> str | None:
    """One document (`state.json`, `last-scale.json`, ...) of `pool`'s state shard, unpacked;
    None if the shard (not written yet) or the key is absent."""
    from kubernetes_asyncio import client  # noqa: PLC0415
    from kubernetes_asyncio.client.rest import ApiException  # noqa: PLC0415

    from autoscaler.controller.shards import shard_of  # noqa: PLC0415
    from autoscaler.controller.state_store import unpack  # noqa: PLC0415

    name = f"{prefix}-{shard_of(pool, shards)}"
    try:
        cm = await client.CoreV1Api(api).read_namespaced_config_map(name, ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    raw = (cm.binary_data or {}).get(key + ".gz")
    return None if raw is None else unpack(raw, where=name)


async def delete_namespace(core: Any, name: str) -> None:
    """Delete without waiting for the namespace itself (that takes several controller passes),
    but wait for its Pods: they hold fake GPUs the next test may count on."""
    with contextlib.suppress(ApiException):
        await core.delete_namespace(name, propagation_policy="Background")
        # A Terminating namespace admits no new Pods, so deleting them now (kwok finalises at
        # once) frees the GPUs in well under a second instead of a namespace-controller pass.
        await core.delete_collection_namespaced_pod(name, grace_period_seconds=0)

    async def pods_left() -> int:
        return len((await core.list_namespaced_pod(name)).items)

    # A timeout here fails the test's teardown on purpose: leftover Pods skew later tests.
    await wait_for(pods_left, until=lambda n: n == 0, timeout_s=60,
                   what=f"Pods of namespace {name} deleted")
