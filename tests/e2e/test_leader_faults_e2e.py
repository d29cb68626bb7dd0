"""Issue 17's leadership cases on the real control plane, two controller replicas each.

1. An unreadable state shard (each hostile shape the issue found: `last-scale.json` of
   `null` or `[1]`, `pools` a list, a role state a list, `last_replicas: 1e999`, deep nesting):
   the replica that wins the Lease ticks (zero ticks lost to a silent leader), overwrites the
   ConfigMap with a valid state, and does not scale down (zero wrong scale-downs).
2. A leader that cannot tick (its API calls fail; the other replica's do not): /readyz names
   the failure, and after the bound it releases the Lease; the standby takes over and ticks.
3. The leader-only route, as the overlays ship it (selector-less Service, one EndpointSlice,
   a Role on that slice by name, nothing on Pods), with both replicas running on the
   ServiceAccount's own token: the slice points at the leader; a crashed leader's address is
   replaced by the new leader's within a lease duration of its taking over; the ServiceAccount
   cannot patch Pods (SubjectAccessReview and a real PATCH); and dropped PATCHes of the slice
   (before they reach the server, or after it applied them) are retried and counted.

Controllers run in-process (as in test_controller_e2e.py), each with its own ApiClient.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.controller import app as ctl
from autoscaler.controller import factory
from autoscaler.controller.settings import Settings
from autoscaler.controller.shards import shard_of
from autoscaler.controller.state_store import LAST_SCALE_KEY, STATE_KEY, pack
from autoscaler.decision.state import ScaleState
from autoscaler.telemetry import Telemetry
from autoscaler.testing import FakeMetricsSource
from autoscaler.types import Role

from ..faults.conftest import COUNTS
from ..k8senv.cluster import ClusterInfo
from .support import PAUSE_IMAGE, delete_namespace, manifest, state_doc, wait_for
from .test_controller_e2e import (
    LEASE,
    ROOT,
    TICK_S,
    _sa_client,
    admin_client,
    create_deployments,
    policy_text,
    put_policy,
    ready_from,
    role_spec,
    spec_replicas,
)

pytestmark = [pytest.mark.k8s, pytest.mark.faults]

STATE_CM = "pd-autoscaler-state"
STATE_DOCS: dict[str, dict[str, str]] = {
    "last-scale null": {LAST_SCALE_KEY: "null"},
    "last-scale [1]": {LAST_SCALE_KEY: "[1]"},
    "pools a list": {STATE_KEY: '{"version":1,"pools":[]}'},
    "role state a list": {STATE_KEY: '{"version":1,"pools":{"l":{"aggregated":[]}}}'},
    "last_replicas 1e999": {
        STATE_KEY: '{"version":1,"pools":{"l":{"aggregated":{"last_replicas":1e999}}}}'},
    "deep nesting": {STATE_KEY: '{"version":1,"pools":' + "[" * 50_000 + "]" * 50_000 + "}"},
}


@contextlib.asynccontextmanager
async def replica(cluster: ClusterInfo, ns: str, source: FakeMetricsSource, identity: str,
                  **kw: Any) -> AsyncIterator[ctl.Controller]:
    async with replica_task(cluster, ns, source, identity, **kw) as (c, _):
        yield c


@contextlib.asynccontextmanager
async def replica_task(cluster: ClusterInfo, ns: str, source: FakeMetricsSource, identity: str,
                       *, api: ApiClient | None = None, settings_kw: dict[str, Any] | None = None,
                       **kw: Any) -> AsyncIterator[tuple[ctl.Controller, asyncio.Task[None]]]:
    """A replica and its task (a test may end it early); `api`: whose credentials it uses
    (default: the cluster admin's)."""
    own = api is None
    api = api or await admin_client(cluster)
    settings = Settings(namespace=ns, identity=identity, tick_s=TICK_S, leader_election=True,
                        http_host="127.0.0.1", http_port=0, state_configmap=STATE_CM,
                        **{**LEASE, **(settings_kw or {})})
    c = factory.on_cluster(settings, api=api, source=source, telemetry=Telemetry(), **kw)
    task = asyncio.create_task(c.run(), name=identity)
    try:
        yield c, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if own:
            await api.close()


SHARD = f"{STATE_CM}-{shard_of('l', 60)}"


async def put_state(api: ApiClient, ns: str, data: dict[str, str]) -> None:
    """The hostile documents, packed as the controller packs them, in pool `l`'s shard."""
    core = client.CoreV1Api(api)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=SHARD),
                              binary_data={k + ".gz": pack(v) for k, v in data.items()})
    try:
        await core.create_namespaced_config_map(ns, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        await core.replace_namespaced_config_map(SHARD, ns, body)


async def state_valid(api: ApiClient, ns: str) -> bool:
    try:
        ScaleState.from_json(await state_doc(api, ns, "l", STATE_KEY) or "")
        return isinstance(json.loads(await state_doc(api, ns, "l", LAST_SCALE_KEY) or ""), dict)
    except ValueError:
        return False


async def lease_holder(api: ApiClient, ns: str) -> str | None:
    lease = await client.CoordinationV1Api(api).read_namespaced_lease("pd-autoscaler", ns)
    return lease.spec.holder_identity


def _const(v: Any) -> Any:
    async def get() -> Any:
        return v() if callable(v) else v
    return get


async def test_unreadable_state_never_silences_the_leader(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    ns = k8s_namespace
    await create_deployments(k8s_api, ns, ("l", 3))
    await put_policy(k8s_api, ns, policy_text(
        {"name": "l", "roles": {"aggregated": role_spec(ns, "l", max_r=6, down_window_s=30)}}))
    src = FakeMetricsSource(ready=ready_from(k8s_api, ns, {("l", Role.AGGREGATED): "l"}))
    src.set_totals("l", Role.AGGREGATED, queue_depth=0)  # idle: only the window holds 3
    lost = 0
    for case, data in STATE_DOCS.items():
        await put_state(k8s_api, ns, data)
        async with replica(k8s_cluster, ns, src, "ctl-a") as a, \
                replica(k8s_cluster, ns, src, "ctl-b") as b:
            t0 = time.monotonic()
            await wait_for(_const(lambda: (a.health.leader and a.ticks > 0)
                                  or (b.health.leader and b.ticks > 0)),
                           timeout_s=20, what=f"{case}: a leader ticks")
            first_tick_s = time.monotonic() - t0
            # A leader's first tick comes within one lease round plus the state retries.
            if first_tick_s > LEASE["lease_duration_s"] + 10:
                lost += 1
            await wait_for(lambda: state_valid(k8s_api, ns), timeout_s=10,
                           what=f"{case}: state ConfigMap overwritten with a valid state")
            assert await spec_replicas(k8s_api, ns, "l") == 3, f"{case}: wrong scale-down"
            leader = a if a.health.leader else b
            # Ready once its Deployment watch cache has listed (it ticks through GETs before
            # that, and /readyz says "not synced yet" meanwhile, which on a loaded machine can
            # outlast the state check above).
            await wait_for(_const(leader.health.ready), until=lambda r: r[0], timeout_s=20,
                           what=f"{case}: the leader is ready")
            ok, detail = leader.health.ready()
            assert ok, f"{case}: leader not ready: {detail}"
        COUNTS["hostile state ConfigMaps (two replicas)"] += 1
    COUNTS["ticks lost to a silent leader"] += lost
    assert lost == 0


async def test_leader_that_cannot_tick_hands_over_to_the_standby(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    ns = k8s_namespace
    await create_deployments(k8s_api, ns, ("l", 1))
    await put_policy(k8s_api, ns, policy_text(
        {"name": "l", "roles": {"aggregated": role_spec(ns, "l", max_r=6)}}))
    src = FakeMetricsSource(ready=ready_from(k8s_api, ns, {("l", Role.AGGREGATED): "l"}))
    src.set_totals("l", Role.AGGREGATED, queue_depth=4)  # -> 2
    step_down_after_s = 4.0
    async with replica(k8s_cluster, ns, src, "ctl-a", step_down_after_s=step_down_after_s) as a:
        await wait_for(_const(lambda: a.health.leader and a.ticks > 0), timeout_s=20,
                       what="a leads")
        async with replica(k8s_cluster, ns, src, "ctl-b",
                           step_down_after_s=step_down_after_s) as b:
            await asyncio.sleep(2 * LEASE["retry_period_s"])
            assert not b.health.leader

            # a's API calls break (an error nobody maps); b's are fine.
            async def broken(ref: Any) -> Any:
                msg = f"deployments/{ref.name}: API answered garbage"
                raise RuntimeError(msg)

            a.actuator.status = broken  # type: ignore[method-assign]
            t_break = time.monotonic()
            await wait_for(_const(lambda: "tick" in a.health.failing), timeout_s=10,
                           what="a reports its failing ticks")
            ok, detail = a.health.ready()
            assert not ok
            assert "API answered garbage" in detail
            await wait_for(_const(lambda: b.health.leader and b.ticks > 0), timeout_s=30,
                           what="the standby takes over and ticks")
            handover_s = time.monotonic() - t_break
            assert a.step_downs >= 1
            assert handover_s <= step_down_after_s + 2 * LEASE["lease_duration_s"] + 5
            assert await lease_holder(k8s_api, ns) == "ctl-b"
            await wait_for(lambda: spec_replicas(k8s_api, ns, "l"), until=lambda r: r == 2,
                           timeout_s=20, what="the new leader scales")
            print(f"hand-over after the break: {handover_s:.1f}s "  # the figure for the note
                  f"(bound {step_down_after_s}s + lease {LEASE['lease_duration_s']}s)")


# --- 3. the leader-only route -----------------------------------------------------------------

OVERLAYS = {"external-metrics": ROOT / "manifests" / "overlays" / "external-metrics",
            "keda": ROOT / "manifests" / "keda"}
IP_A, IP_B = "10.244.7.11", "10.244.7.12"


def overlay_docs(kubectl: Path, overlay: str, ns: str, llm: str) -> list[dict[str, Any]]:
    """The overlay as kustomize renders it, its namespaces mapped onto this test's."""
    out = subprocess.run([str(kubectl), "kustomize", str(OVERLAYS[overlay])], check=True,
                         capture_output=True, text=True).stdout
    text = (out.replace("namespace: pd-autoscaler", f"namespace: {ns}")
            .replace("namespace: llm", f"namespace: {llm}"))
    return [d for d in yaml.safe_load_all(text) if d]


async def apply_route(api: ApiClient, docs: list[dict[str, Any]], *, rbac: bool) -> str:
    """Create the overlay's leader Service and EndpointSlice (and with `rbac`, the
    ServiceAccount and the Roles/RoleBindings of the test's namespaces); the slice's name."""
    core, rbac_api = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    create: dict[str, Any] = {"Service": core.create_namespaced_service,
                              "EndpointSlice": discovery.create_namespaced_endpoint_slice}
    if rbac:
        create.update({"ServiceAccount": core.create_namespaced_service_account,
                       "Role": rbac_api.create_namespaced_role,
                       "RoleBinding": rbac_api.create_namespaced_role_binding})
    names = [d["metadata"]["name"] for d in docs if d["kind"] == "EndpointSlice"]
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] == "ConfigMap" and rbac and d["metadata"]["name"] == STATE_CM:
            await core.create_namespaced_config_map(ns, d)  # shipped: the SA cannot create it
        elif d["kind"] in create and ns is not None and not ns.startswith("kube-"):
            await create[d["kind"]](ns, d)
    (name,) = names
    return name


async def slice_addresses(api: ApiClient, ns: str, name: str) -> list[str]:
    obj = await client.DiscoveryV1Api(api).read_namespaced_endpoint_slice(name, ns)
    return [a for e in (obj.endpoints or []) for a in (e.addresses or [])
            if e.conditions is None or e.conditions.ready is not False]


async def can(api: ApiClient, ns: str, *, verb: str, resource: str, group: str = "",
              name: str | None = None) -> bool:
    """A SubjectAccessReview for the controller's ServiceAccount."""
    review = await client.AuthorizationV1Api(api).create_subject_access_review({
        "spec": {"user": f"system:serviceaccount:{ns}:pd-autoscaler",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                            "system:authenticated"],
                 "resourceAttributes": {"namespace": ns, "verb": verb, "group": group,
                                        "resource": resource, "name": name or ""}}})
    return bool(review.status.allowed)


async def test_leader_endpoint_follows_the_lease_on_the_overlays_rbac(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    assert k8s_cluster.kubectl is not None
    ns = k8s_namespace
    llm = f"{ns}-llm"
    core = client.CoreV1Api(k8s_api)
    await core.create_namespace({"metadata": {"name": llm,
                                              "labels": {"pd-autoscaler/e2e": "true"}}})
    try:
        docs = overlay_docs(k8s_cluster.kubectl, "external-metrics", ns, llm)
        name = await apply_route(k8s_api, docs, rbac=True)
        await create_deployments(k8s_api, llm, ("llama-8b-prefill", 1))
        assert await slice_addresses(k8s_api, ns, name) == []

        # What the ServiceAccount may do: its one slice, by name; nothing on Pods, anywhere.
        for where in (ns, llm):
            for verb in ("patch", "update", "create", "delete"):
                assert not await can(k8s_api, where, verb=verb, resource="pods"), (where, verb)
        for verb in ("get", "patch", "update"):
            assert await can(k8s_api, ns, verb=verb, resource="endpointslices",
                             group="discovery.k8s.io", name=name), verb
        assert not await can(k8s_api, ns, verb="patch", resource="endpointslices",
                             group="discovery.k8s.io", name="kubernetes")
        assert not await can(k8s_api, ns, verb="create", resource="endpointslices",
                             group="discovery.k8s.io")
        assert not await can(k8s_api, ns, verb="list", resource="endpointslices",
                             group="discovery.k8s.io")

        await put_policy(k8s_api, ns, policy_text({"name": "l", "roles": {
            "aggregated": role_spec(llm, "llama-8b-prefill", max_r=4)}}))
        src = FakeMetricsSource(ready=ready_from(
            k8s_api, llm, {("l", Role.AGGREGATED): "llama-8b-prefill"}))
        src.set_totals("l", Role.AGGREGATED, queue_depth=2)
        sa_a = await _sa_client(k8s_api, k8s_cluster, ns, "pd-autoscaler")
        sa_b = await _sa_client(k8s_api, k8s_cluster, ns, "pd-autoscaler")
        async with sa_a, sa_b:
            # And a real attempt with the token: a Pod's image is not the controller's to set.
            await core.create_namespaced_pod(ns, manifest({
                "metadata": {"name": "victim"},
                "spec": {"containers": [{"name": "c", "image": PAUSE_IMAGE}]}}))
            with pytest.raises(ApiException) as denied:
                await client.CoreV1Api(sa_a).patch_namespaced_pod(
                    "victim", ns, {"spec": {"containers": [{"name": "c", "image": "evil"}]}})
            assert denied.value.status == 403

            def route(ip: str, pod: str) -> dict[str, Any]:
                return {"dry_run": True, "leader_endpointslice": name, "pod_ip": ip,
                        "pod_name": pod, "leader_endpoint_reassert_s": 2.0}

            async with replica_task(k8s_cluster, ns, src, "ctl-a", api=sa_a,
                                    settings_kw=route(IP_A, "ctl-a"),
                                    release_on_exit=False) as (a, a_task):
                await wait_for(_const(lambda: a.health.leader and a.ticks > 0), timeout_s=20,
                               what="a leads")
                await wait_for(lambda: slice_addresses(k8s_api, ns, name),
                               until=lambda eps: eps == [IP_A], timeout_s=10,
                               what="the slice points at the leader a")
                async with replica(k8s_cluster, ns, src, "ctl-b", api=sa_b,
                                   settings_kw=route(IP_B, "ctl-b")) as b:
                    await wait_for(_const(lambda: b.health.ready()[0]), timeout_s=10,
                                   what="b ready (standby)")
                    assert not b.health.leader
                    assert await slice_addresses(k8s_api, ns, name) == [IP_A]

                    # a crashes: no relinquish, no Lease release. b takes over after the
                    # lease expires and replaces a's address with its own.
                    t_kill = time.monotonic()
                    a_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await a_task
                    assert await slice_addresses(k8s_api, ns, name) == [IP_A]
                    await wait_for(_const(lambda: b.health.leader), timeout_s=20,
                                   what="b takes over")
                    t_lead = time.monotonic()
                    await wait_for(lambda: slice_addresses(k8s_api, ns, name),
                                   until=lambda eps: eps == [IP_B], timeout_s=10,
                                   what="the slice points at the new leader b")
                    t_slice = time.monotonic()
                    assert t_slice - t_lead <= LEASE["lease_duration_s"]
                    assert b.leader_endpoint is not None
                    assert "leader-endpoint" not in b.health.failing
                    # Someone re-applies the manifest (endpoints: []): b puts itself back.
                    await client.DiscoveryV1Api(k8s_api).patch_namespaced_endpoint_slice(
                        name, ns, {"endpoints": []},
                        _content_type="application/merge-patch+json")
                    await wait_for(lambda: slice_addresses(k8s_api, ns, name),
                                   until=lambda eps: eps == [IP_B], timeout_s=10,
                                   what="the leader re-asserts a reset slice")
                    print(f"slice moved to the new leader {t_slice - t_kill:.1f}s after the "
                          f"crash, {t_slice - t_lead:.2f}s after it took the Lease "
                          f"(lease {LEASE['lease_duration_s']}s)")
                # b stopped cleanly: it removed its own address.
                assert await slice_addresses(k8s_api, ns, name) == []
    finally:
        await delete_namespace(core, llm)


class DroppingDiscovery:
    """The EndpointSlice API with dropped PATCHes: `before` of them are lost on the way (never
    reach the server), then `after` of them are applied by the server and their answer lost."""

    def __init__(self, real: client.DiscoveryV1Api, *, before: int = 0, after: int = 0) -> None:
        self._real = real
        self.before = before
        self.after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def patch_namespaced_endpoint_slice(self, *args: Any, **kw: Any) -> Any:
        if self.before:
            self.before -= 1
            raise aiohttp.ServerDisconnectedError
        result = await self._real.patch_namespaced_endpoint_slice(*args, **kw)
        if self.after:
            self.after -= 1
            raise aiohttp.ServerDisconnectedError
        return result


async def test_dropped_endpoint_patches_are_retried(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    """On the KEDA overlay's slice: the leader's first two PATCHes never arrive; then, after a
    crash, the new leader's first PATCH is applied but its answer is lost. Both converge (the
    second without writing twice), and every drop is counted in
    pd_autoscaler_kubernetes_api_errors_total."""
    assert k8s_cluster.kubectl is not None
    ns = k8s_namespace
    docs = overlay_docs(k8s_cluster.kubectl, "keda", ns, f"{ns}-llm")
    name = await apply_route(k8s_api, docs, rbac=False)
    await create_deployments(k8s_api, ns, ("l", 1))
    await put_policy(k8s_api, ns, policy_text(
        {"name": "l", "roles": {"aggregated": role_spec(ns, "l", max_r=4)}}))
    src = FakeMetricsSource(ready=ready_from(k8s_api, ns, {("l", Role.AGGREGATED): "l"}))
    src.set_totals("l", Role.AGGREGATED, queue_depth=2)

    def route(ip: str) -> dict[str, Any]:
        return {"dry_run": True, "leader_endpointslice": name, "pod_ip": ip}

    def dropped(c: ctl.Controller) -> float:
        value = c.telemetry.registry.get_sample_value(
            "pd_autoscaler_kubernetes_api_errors_total",
            {"operation": "patch_endpointslice", "code": "ServerDisconnectedError"})
        return value or 0.0

    async with replica_task(k8s_cluster, ns, src, "ctl-a", settings_kw=route(IP_A),
                            release_on_exit=False) as (a, a_task):
        assert a.leader_endpoint is not None
        a.leader_endpoint._discovery = DroppingDiscovery(  # type: ignore[assignment]
            a.leader_endpoint._discovery, before=2)
        await wait_for(lambda: slice_addresses(k8s_api, ns, name),
                       until=lambda eps: eps == [IP_A], timeout_s=20,
                       what="the slice points at a after two dropped PATCHes")
        assert (a.leader_endpoint.failures, a.leader_endpoint.writes) == (2, 1)
        assert dropped(a) == 2
        async with replica(k8s_cluster, ns, src, "ctl-b", settings_kw=route(IP_B)) as b:
            assert b.leader_endpoint is not None
            b.leader_endpoint._discovery = DroppingDiscovery(  # type: ignore[assignment]
                b.leader_endpoint._discovery, after=1)
            await asyncio.sleep(2 * LEASE["retry_period_s"])
            a_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await a_task
            await wait_for(lambda: slice_addresses(k8s_api, ns, name),
                           until=lambda eps: eps == [IP_B], timeout_s=20,
                           what="the slice points at b after a lost answer")
            await wait_for(_const(lambda: b.leader_endpoint is not None
                                  and b.leader_endpoint.has is True), timeout_s=10,
                           what="b knows the slice is its own")
            # The retry read the slice, found b's address already there, and wrote nothing.
            assert (b.leader_endpoint.failures, b.leader_endpoint.writes) == (1, 0)
            assert dropped(b) == 1
    COUNTS["leader EndpointSlice PATCHes dropped and retried"] += 3
