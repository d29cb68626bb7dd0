"""The controller against the real control plane (apiserver, kcm, scheduler, kwok GPU nodes).

Covered, one test each:
1. load rises -> prefill scales through deployments/scale; in ratio mode decode follows exactly;
2. GPUs exhausted -> Pending Pods are counted as pending, no cascade; scale-down only after the
   stabilization window;
3. a bad policy ConfigMap update is rejected (Event + log), the old policy keeps working; a good
   update applies without a restart;
4. two controllers: only the leader writes; killing it, the standby takes over within the lease
   duration and, with the restored state, does not undo the last decision;
5. the RBAC rendered from manifests/ is enforced: the ServiceAccount's token can run the
   controller and scale its targets, and nothing else (another Deployment, a Deployment spec);
6. metrics missing -> no scale-down; a Deployment deleted -> the other pools are still served.

Controllers run in-process (distinct identities, own ApiClients) with a `FakeMetricsSource`
whose load the test sets; ticks, leases and windows are seconds long.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler.actuator import kubernetes as kube
from autoscaler.controller import app as ctl
from autoscaler.controller import factory
from autoscaler.controller.settings import POLICY_LABEL, Settings
from autoscaler.controller.state_store import LAST_SCALE_KEY, STATE_KEY
from autoscaler.policy import registry
from autoscaler.policy.load import load_policy_file
from autoscaler.policy.slo import SLOPolicy
from autoscaler.spec import DeploymentRef, PolicyFile
from autoscaler.telemetry import Telemetry
from autoscaler.testing import FakeMetricsSource
from autoscaler.types import Role

from ..k8senv.cluster import ClusterInfo
from .support import delete_namespace, gpu_deployment, state_doc, wait_for

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
TICK_S = 0.5
LEASE: dict[str, Any] = {"lease_duration_s": 3, "renew_deadline_s": 2.0, "retry_period_s": 1.0}


# --- helpers --------------------------------------------------------------------------------


def role_spec(ns: str, name: str, *, min_r: int = 1, max_r: int = 8, down_window_s: float = 4,
              signals: tuple[tuple[str, float], ...] = (("queue_depth", 2),)) -> dict[str, Any]:
    """A role with fast, deterministic behaviour: no panic, generous rate limits."""
    return {
        "deployment": {"namespace": ns, "name": name},
        "min_replicas": min_r,
        "max_replicas": max_r,
        "cold_start_s": 5,
        "signals": [{"signal": s, "target": t} for s, t in signals],
        "behavior": {
            "scale_up": {"stabilization_window_s": 0,
                         "rules": [{"type": "pods", "value": 10, "period_s": 1}]},
            "scale_down": {"stabilization_window_s": down_window_s,
                           "rules": [{"type": "percent", "value": 100, "period_s": 1}]},
            "panic": {"enabled": False},
            # The queue is this suite's generic load knob: let it ask for the whole need at
            # once (the stock step is a unit-tested rule of its own).
            "stock_max_step": None,
        },
    }


def policy_text(*pools: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "pd-autoscaler.io/v1alpha1",
                           "kind": "AutoscalingPolicy", "pools": list(pools)})


async def put_policy(api: ApiClient, ns: str, text: str, *, name: str = "policy") -> None:
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": name, "labels": {POLICY_LABEL: "true"}},
            "data": {"policy.yaml": text}}
    try:
        await core.create_namespaced_config_map(ns, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        await core.replace_namespaced_config_map(name, ns, body)


async def spec_replicas(api: ApiClient, ns: str, name: str) -> int:
    scale = await client.AppsV1Api(api).read_namespaced_deployment_scale(name, ns)
    return int(scale.spec.replicas)


async def ready_replicas(api: ApiClient, ns: str, name: str) -> int:
    dep = await client.AppsV1Api(api).read_namespaced_deployment(name, ns)
    return int(dep.status.ready_replicas or 0)


async def events_for(api: ApiClient, ns: str, name: str, reason: str) -> list[Any]:
    evs = await client.CoreV1Api(api).list_namespaced_event(
        ns, field_selector=f"involvedObject.name={name},reason={reason}")
    return list(evs.items)


def ready_from(api: ApiClient, ns: str, names: dict[tuple[str, Role], str]
               ) -> Callable[[str, Role], Any]:
    """What Prometheus would see: series from the ready Pods of each role's Deployment."""

    async def ready(pool: str, role: Role) -> int:
        try:
            return await ready_replicas(api, ns, names[(pool, role)])
        except ApiException:
            return 0

    return ready



def _rate_sized_at(policy: PolicyFile, n: int, *, prompt: float, output: float
                   ) -> tuple[float, float, float]:
    """(request rate, prompt, output) at which the policy's slo prefill model asks for `n`
    replicas with the prompt spread at its prior (what a controller's first ticks see): the
    middle of the range of rates sized at `n`, so neither edge's rounding decides the test."""
    pool = policy.pool("llama-8b")
    spec = pool.roles[Role.PREFILL]
    built = registry.build(spec.policies[0], pool=pool.name, role=Role.PREFILL, spec=spec,
                           where="shipped")
    assert isinstance(built, SLOPolicy)
    cv = built.config.prompt_length_cv_prior

    def count(lam: float) -> int:
        return built.prefill_replicas(lam, prompt, cv)[0]

    rates = [r / 10 for r in range(1, 2000)]
    inside = [r for r in rates if count(r) == n]
    assert inside, f"no rate sizes prefill at {n}"
    return inside[len(inside) // 2], prompt, output


async def create_deployments(api: ApiClient, ns: str, *specs: tuple[str, int]) -> None:
    apps = client.AppsV1Api(api)
    for name, replicas in specs:
        await apps.create_namespaced_deployment(ns, gpu_deployment(name, replicas=replicas))
    for name, replicas in specs:
        await wait_for(lambda n=name: ready_replicas(api, ns, n),  # type: ignore[misc]
                       until=lambda r, want=replicas: r == want,  # type: ignore[misc]
                       timeout_s=60, what=f"{name} ready")


async def admin_client(cluster: ClusterInfo) -> ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    return ApiClient(configuration=cfg)


@contextlib.asynccontextmanager
async def running(cluster: ClusterInfo, ns: str, source: FakeMetricsSource, *,
                  identity: str = "ctl-a", api: ApiClient | None = None,
                  leader_election: bool = True, **overrides: Any
                  ) -> AsyncIterator[tuple[ctl.Controller, asyncio.Task[None]]]:
    """A controller replica running in this event loop; cancelled (lease released) on exit."""
    own = api is None
    release = overrides.pop("release_on_exit", True)
    api = api or await admin_client(cluster)
    settings = Settings(namespace=ns, identity=identity, tick_s=TICK_S,
                            leader_election=leader_election, http_host="127.0.0.1",
                            http_port=0, **{**LEASE, **overrides})
    c = factory.on_cluster(settings, api=api, source=source, telemetry=Telemetry(),
                           release_on_exit=release)
    task = asyncio.create_task(c.run(), name=identity)
    try:
        yield c, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if own:
            await api.close()


async def until_leader(c: ctl.Controller, timeout_s: float = 15) -> None:
    await wait_for(lambda: _const(c.health.leader and c.ticks > 0), timeout_s=timeout_s,
                   what=f"{c.settings.identity} leading and ticking")


async def _const(v: Any) -> Any:
    return v


async def stays(probe: Callable[[], Any], want: Any, *, for_s: float, what: str) -> None:
    """`probe()` returns `want` on every poll for `for_s` seconds."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        got = await probe()
        assert got == want, f"{what}: expected {want!r} to hold, got {got!r}"
        await asyncio.sleep(0.25)


# --- 1. scale-up, ratio coupling ------------------------------------------------------------


async def test_load_rises_prefill_scales_and_decode_follows_ratio(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    """Queue load on prefill -> prefill replicas rise via deployments/scale; in ratio mode
    (1:2) decode moves with it to exactly twice as many; an Event records each change."""
    ns = k8s_namespace
    await create_deployments(k8s_api, ns, ("m-prefill", 1), ("m-decode", 2))
    pool = {"name": "m", "coupling": {"mode": "ratio", "prefill": 1, "decode": 2},
            "roles": {"prefill": role_spec(ns, "m-prefill", max_r=2),
                      "decode": role_spec(ns, "m-decode", min_r=2, max_r=6,
                                          signals=(("running", 100),))}}
    await put_policy(k8s_api, ns, policy_text(pool))
    src = FakeMetricsSource(ready=ready_from(k8s_api, ns, {("m", Role.PREFILL): "m-prefill",
                                                          ("m", Role.DECODE): "m-decode"}))
    src.set_totals("m", Role.PREFILL, queue_depth=0)
    src.set_totals("m", Role.DECODE, running=20)
    async with running(k8s_cluster, ns, src) as (c, _):
        await until_leader(c)
        await stays(lambda: spec_replicas(k8s_api, ns, "m-prefill"), 1, for_s=1.5,
                    what="idle prefill")
        src.set_totals("m", Role.PREFILL, queue_depth=4)  # 4 waiting / target 2 -> 2 replicas
        await wait_for(lambda: spec_replicas(k8s_api, ns, "m-prefill"), until=lambda r: r == 2,
                       timeout_s=20, what="prefill scaled to 2")
        await wait_for(lambda: spec_replicas(k8s_api, ns, "m-decode"), until=lambda r: r == 4,
                       timeout_s=20, what="decode at 2 x prefill")
        await wait_for(lambda: ready_replicas(k8s_api, ns, "m-decode"), until=lambda r: r == 4,
                       timeout_s=30, what="decode Pods ready")
        evs = await wait_for(lambda: events_for(k8s_api, ns, "m-prefill", "ScaledUp"),
                             timeout_s=10, what="ScaledUp Event")
        assert "New size: 2" in evs[0].message
        assert evs[0].reporting_instance == "ctl-a"
        last = yaml.safe_load(await state_doc(k8s_api, ns, "m", LAST_SCALE_KEY) or "")
        assert last["m"]["prefill"]["to"] == 2
        assert last["m"]["decode"]["to"] == 4


# --- 2. GPUs exhausted: pending, no cascade, stabilized scale-down --------------------------


async def test_gpu_exhaustion_counts_pending_then_stabilized_scale_down(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    """With the GPUs full, new Pods stay Pending and are counted as pending replicas; a growing
    queue then causes no further scale-ups. When load falls, replicas drop only after the
    scale-down stabilization window."""
    ns = k8s_namespace
    total = len(k8s_cluster.gpu_nodes) * k8s_cluster.gpus_per_node
    await create_deployments(k8s_api, ns, ("filler", total - 2), ("agg", 1))  # 1 GPU left
    window_s = 6.0
    pool = {"name": "g", "roles": {"aggregated": role_spec(ns, "agg", max_r=12,
                                                           down_window_s=window_s)}}
    await put_policy(k8s_api, ns, policy_text(pool))
    src = FakeMetricsSource(ready=ready_from(k8s_api, ns, {("g", Role.AGGREGATED): "agg"}))
    src.set_totals("g", Role.AGGREGATED, queue_depth=10)  # -> 5 replicas
    async with running(k8s_cluster, ns, src) as (c, _):
        await until_leader(c)
        await wait_for(lambda: spec_replicas(k8s_api, ns, "agg"), until=lambda r: r == 5,
                       timeout_s=20, what="scaled to 5")
        await wait_for(lambda: ready_replicas(k8s_api, ns, "agg"), until=lambda r: r == 2,
                       timeout_s=30, what="2 ready (GPUs full)")
        pods = await client.CoreV1Api(k8s_api).list_namespaced_pod(ns, label_selector="app=agg")
        assert sum(p.status.phase == "Pending" for p in pods.items) == 3

        def decided() -> Any:
            latest = c.store.latest
            assert latest is not None
            return latest.decision.pools["g"].roles[Role.AGGREGATED]

        await wait_for(lambda: _const(decided().pending), until=lambda p: p == 3, timeout_s=10,
                       what="controller counts 3 pending")
        # The queue keeps growing while replicas cold-start: no cascade beyond 5.
        src.set_totals("g", Role.AGGREGATED, queue_depth=40)
        await stays(lambda: spec_replicas(k8s_api, ns, "agg"), 5, for_s=3, what="no cascade")
        assert "capped: replicas pending" in " ".join(n.note for n in decided().needs)

        src.set_totals("g", Role.AGGREGATED, queue_depth=0)
        t0 = time.monotonic()
        await wait_for(lambda: spec_replicas(k8s_api, ns, "agg"), until=lambda r: r == 1,
                       timeout_s=window_s + 15, what="scaled down to min")
        waited = time.monotonic() - t0
        assert waited >= window_s - 1.0, f"scaled down after {waited:.1f}s < window {window_s}s"


# --- 3. policy hot reload -------------------------------------------------------------------


async def test_bad_policy_update_rejected_good_update_applied(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    """An invalid ConfigMap update -> PolicyRejected Event + `policy_rejected` log naming the
    field; the last good policy keeps scaling. A valid update applies without a restart."""
    ns = k8s_namespace
    await create_deployments(k8s_api, ns, ("h", 1))

    def doc(max_r: Any) -> str:
        return policy_text({"name": "h", "roles": {"aggregated": role_spec(ns, "h", max_r=max_r)}})

    await put_policy(k8s_api, ns, doc(2))
    src = FakeMetricsSource(ready=ready_from(k8s_api, ns, {("h", Role.AGGREGATED): "h"}))
    src.set_totals("h", Role.AGGREGATED, queue_depth=20)  # wants 10, capped by max_replicas
    with structlog.testing.capture_logs() as logs:
        async with running(k8s_cluster, ns, src) as (c, _):
            await until_leader(c)
            await wait_for(lambda: spec_replicas(k8s_api, ns, "h"), until=lambda r: r == 2,
                           timeout_s=20, what="scaled to max 2")
            await put_policy(k8s_api, ns, doc(-1))
            evs = await wait_for(lambda: events_for(k8s_api, ns, "policy", "PolicyRejected"),
                                 timeout_s=10, what="PolicyRejected Event")
            assert "pools.0.roles.aggregated.max_replicas" in evs[0].message
            assert evs[0].type == "Warning"
            ticks = c.ticks
            await stays(lambda: spec_replicas(k8s_api, ns, "h"), 2, for_s=2,
                        what="old policy holds")
            assert c.ticks > ticks  # still ticking on the last good policy
            assert c.policy is not None
            assert c.policy.pools[0].roles[Role.AGGREGATED].max_replicas == 2

            await put_policy(k8s_api, ns, doc(4))
            await wait_for(lambda: spec_replicas(k8s_api, ns, "h"), until=lambda r: r == 4,
                           timeout_s=20, what="new max 4 applied without restart")
            await wait_for(lambda: events_for(k8s_api, ns, "policy", "PolicyApplied"),
                           timeout_s=10, what="PolicyApplied Event")
    rejected = [e for e in logs if e["event"] == "policy_rejected"]
    assert rejected
    assert any("max_replicas" in p for p in rejected[0]["problems"])
    assert rejected[0]["kept"] == "last good policy"


# --- 4. leader election and restored state --------------------------------------------------


async def test_only_leader_writes_and_standby_takes_over_without_undoing(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    """Two replicas: only the leader ticks and writes. Killing it (no lease release), the
    standby takes over within the lease duration, restores the state and keeps the replicas
    the old leader set until the scale-down window (started under the old leader) has passed."""
    ns = k8s_namespace
    await create_deployments(k8s_api, ns, ("l", 1))
    window_s = 12.0
    await put_policy(k8s_api, ns, policy_text(
        {"name": "l", "roles": {"aggregated": role_spec(ns, "l", max_r=6,
                                                        down_window_s=window_s)}}))
    src = FakeMetricsSource(ready=ready_from(k8s_api, ns, {("l", Role.AGGREGATED): "l"}))
    src.set_totals("l", Role.AGGREGATED, queue_depth=8)  # -> 4
    async with running(k8s_cluster, ns, src, identity="ctl-a", release_on_exit=False) as (a, ta):
        await until_leader(a)
        async with running(k8s_cluster, ns, src, identity="ctl-b") as (b, _):
            await wait_for(lambda: spec_replicas(k8s_api, ns, "l"), until=lambda r: r == 4,
                           timeout_s=20, what="leader scaled to 4")
            await asyncio.sleep(2 * LEASE["retry_period_s"])
            assert not b.health.leader
            assert b.ticks == 0
            assert b.store.latest is None
            evs = await events_for(k8s_api, ns, "l", "ScaledUp")
            assert {e.reporting_instance for e in evs} == {"ctl-a"}

            # Load falls, and the leader dies right after one more tick saw it.
            src.set_totals("l", Role.AGGREGATED, queue_depth=0)
            seen = a.ticks
            await wait_for(lambda: _const(a.ticks), until=lambda t: t >= seen + 2, timeout_s=5,
                           what="leader saw the low load")
            t_drop = time.monotonic()
            ta.cancel()  # a crash: the lease is not released
            with contextlib.suppress(asyncio.CancelledError):
                await ta
            t_kill = time.monotonic()
            await wait_for(lambda: _const(b.health.leader), timeout_s=10, what="standby leads")
            takeover = time.monotonic() - t_kill
            assert takeover <= LEASE["lease_duration_s"] + LEASE["retry_period_s"] + 1.0
            await until_leader(b)
            # A fresh state would scale down now; the restored one keeps 4 for the window.
            left = window_s - (time.monotonic() - t_drop)
            assert left > 3, "test timing: too little of the window left to observe"
            await stays(lambda: spec_replicas(k8s_api, ns, "l"), 4, for_s=left - 2.5,
                        what="new leader keeps the old leader's decision")
            await wait_for(lambda: spec_replicas(k8s_api, ns, "l"), until=lambda r: r == 1,
                           timeout_s=15, what="scale-down after the window")
            # The Event is written after the scale and may land a moment later (one CI replay
            # listed none): wait for it rather than read once.
            evs = await wait_for(lambda: events_for(k8s_api, ns, "l", "ScaledDown"),
                                 timeout_s=10, what="the ScaledDown event")
            assert {e.reporting_instance for e in evs} == {"ctl-b"}


# --- 5. RBAC from manifests/ ----------------------------------------------------------------


def _rendered(kubectl: Path, ctl_ns: str, llm_ns: str) -> list[dict[str, Any]]:
    out = subprocess.run([str(kubectl), "kustomize", str(ROOT / "manifests" / "base")],
                         check=True, capture_output=True, text=True).stdout
    # The manifests' namespaces, mapped onto this test's fresh ones (objects and references).
    text = (out.replace("namespace: pd-autoscaler", f"namespace: {ctl_ns}")
            .replace("namespace: llm", f"namespace: {llm_ns}"))
    return [d for d in yaml.safe_load_all(text) if d]


async def _apply(api: ApiClient, docs: list[dict[str, Any]]) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    create = {
        "ServiceAccount": core.create_namespaced_service_account,
        "ConfigMap": core.create_namespaced_config_map,
        "Role": rbac.create_namespaced_role,
        "RoleBinding": rbac.create_namespaced_role_binding,
    }
    for d in docs:
        if d["kind"] in create:
            await create[d["kind"]](d["metadata"]["namespace"], d)


async def _sa_client(api: ApiClient, cluster: ClusterInfo, ns: str, sa: str) -> ApiClient:
    req = await client.CoreV1Api(api).create_namespaced_service_account_token(
        sa, ns, {"spec": {"expirationSeconds": 3600}})
    cfg = client.Configuration()
    cfg.host = cluster.api_url
    cfg.ssl_ca_cert = str(cluster.ca_cert)
    cfg.api_key = {"BearerToken": req.status.token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return ApiClient(configuration=cfg)


async def test_manifest_rbac_allows_scaling_targets_and_nothing_else(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    """With the token of the manifests' ServiceAccount and their Roles (rendered by kustomize),
    the controller runs (lease, state, policy watch, events) and scales its targets; patching
    another Deployment's scale, or any Deployment's spec, or creating a ConfigMap (a policy of
    its own), is denied by the API server."""
    assert k8s_cluster.kubectl is not None
    ns = k8s_namespace
    llm = f"{ns}-llm"
    core = client.CoreV1Api(k8s_api)
    await core.create_namespace({"metadata": {"name": llm, "labels": {"pd-autoscaler/e2e": "true"}}})
    try:
        docs = _rendered(k8s_cluster.kubectl, ns, llm)
        (dep,) = [d for d in docs if d["kind"] == "Deployment"]
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "pd-autoscaler"
        await _apply(k8s_api, docs)
        await create_deployments(k8s_api, llm, ("llama-8b-prefill", 1), ("llama-8b-decode", 1),
                                 ("other", 1))
        sa_api = await _sa_client(k8s_api, k8s_cluster, ns, "pd-autoscaler")
        async with sa_api:
            # Direct probes of what the token may do.
            await client.AppsV1Api(sa_api).read_namespaced_deployment_scale(
                "llama-8b-prefill", llm)
            denied = [
                client.AppsV1Api(sa_api).patch_namespaced_deployment_scale(
                    "other", llm, {"spec": {"replicas": 2}}),
                client.AppsV1Api(sa_api).patch_namespaced_deployment(
                    "llama-8b-prefill", llm, {"spec": {"replicas": 2}}),
                client.AppsV1Api(sa_api).patch_namespaced_deployment(
                    "llama-8b-prefill", llm,
                    {"spec": {"template": {"metadata": {"labels": {"x": "y"}}}}}),
                client.CoreV1Api(sa_api).list_namespaced_secret(ns),
                client.CoreV1Api(sa_api).patch_namespaced_config_map(
                    "pd-autoscaler-policy", ns, {"data": {"x": "y"}}),
                # No `create configmaps`: the controller cannot make itself a policy.
                client.CoreV1Api(sa_api).create_namespaced_config_map(
                    ns, {"metadata": {"name": "own-policy", "labels": {POLICY_LABEL: "true"}},
                         "data": {"policy.yaml": "pools: []"}}),
            ]
            for call in denied:
                with pytest.raises(ApiException) as exc:
                    await call
                assert exc.value.status == 403
            act = kube.KubernetesActuator(sa_api)
            with pytest.raises(errors.Forbidden) as forbidden:
                await act.scale(DeploymentRef(namespace=llm, name="other"), 2, reason="probe")
            assert f"patch deployments/scale/other in namespace {llm}" in str(forbidden.value)

            # The controller itself, on the shipped policy (the slo kind): a steady prefill
            # load that its own model sizes at 2 replicas (read from the policy, which gets
            # re-calibrated) is scaled to 2 by the manifests' controller.
            shipped = load_policy_file(ROOT / "policies" / "llama-8b-slo.yaml")
            lam, p_tok, o_tok = _rate_sized_at(shipped, 2, prompt=2000.0, output=200.0)
            src = FakeMetricsSource(ready=ready_from(k8s_api, llm, {
                ("llama-8b", Role.PREFILL): "llama-8b-prefill",
                ("llama-8b", Role.DECODE): "llama-8b-decode"}))
            for role in (Role.PREFILL, Role.DECODE):
                # Rates are sums over the role's replicas (RATE_KEYS), as every source reports.
                src.set("llama-8b", role, request_rate=lam, prompt_tokens_rate=lam * p_tok,
                        generation_tokens_rate=lam * o_tok)
            async with running(k8s_cluster, ns, src, api=sa_api, identity="sa-ctl") as (c, _):
                await until_leader(c)
                await wait_for(lambda: spec_replicas(k8s_api, llm, "llama-8b-prefill"),
                               until=lambda r: r == 2, timeout_s=20,
                               what="SA-run controller scaled prefill")
                await wait_for(lambda: events_for(k8s_api, llm, "llama-8b-prefill", "ScaledUp"),
                               timeout_s=10, what="ScaledUp Event by the SA")
                # The SA wrote the pool's state shard (shipped by the manifests).
                await wait_for(lambda: state_doc(sa_api, ns, "llama-8b", STATE_KEY),
                               timeout_s=10, what="the pool's state shard written by the SA")
                lease = await client.CoordinationV1Api(k8s_api).read_namespaced_lease(
                    "pd-autoscaler", ns)
                assert lease.spec.holder_identity == "sa-ctl"
            assert await spec_replicas(k8s_api, llm, "other") == 1
    finally:
        await delete_namespace(core, llm)


# --- 6. missing metrics, deleted target -----------------------------------------------------


async def test_missing_metrics_hold_and_deleted_deployment_spares_other_pools(
        k8s_cluster: ClusterInfo, k8s_api: ApiClient, k8s_namespace: str) -> None:
    """Metrics gone mid-run: no scale-down even past the window. A Deployment deleted mid-run:
    its pool is skipped (TargetNotFound Event), the other pool is still scaled."""
    ns = k8s_namespace
    await create_deployments(k8s_api, ns, ("a", 1), ("b", 1))
    await put_policy(k8s_api, ns, policy_text(
        {"name": "pa", "roles": {"aggregated": role_spec(ns, "a", max_r=4, down_window_s=1)}},
        {"name": "pb", "roles": {"aggregated": role_spec(ns, "b", max_r=4, down_window_s=1)}}))
    src = FakeMetricsSource(ready=ready_from(k8s_api, ns, {("pa", Role.AGGREGATED): "a",
                                                          ("pb", Role.AGGREGATED): "b"}))
    src.set_totals("pa", Role.AGGREGATED, queue_depth=6)  # -> 3
    src.set_totals("pb", Role.AGGREGATED, queue_depth=4)  # -> 2
    with structlog.testing.capture_logs() as logs:
        async with running(k8s_cluster, ns, src) as (c, _):
            await until_leader(c)
            for name, want in (("a", 3), ("b", 2)):
                await wait_for(lambda n=name: spec_replicas(k8s_api, ns, n),  # type: ignore[misc]
                               until=lambda r, w=want: r == w,  # type: ignore[misc]
                               timeout_s=20, what=f"{name} scaled to {want}")
            # Prometheus down entirely, then one signal vanishing: hold, never scale down.
            src.unavailable = "connection refused"
            await stays(lambda: spec_replicas(k8s_api, ns, "a"), 3, for_s=3,
                        what="hold while metrics unavailable")
            src.unavailable = None
            src.clear("pa")
            await stays(lambda: spec_replicas(k8s_api, ns, "a"), 3, for_s=2,
                        what="hold while the signal is missing")

            await client.AppsV1Api(k8s_api).delete_namespaced_deployment("a", ns)
            await wait_for(lambda: events_for(k8s_api, ns, "a", "TargetNotFound"),
                           timeout_s=10, what="TargetNotFound Event")
            src.set_totals("pb", Role.AGGREGATED, queue_depth=8)  # -> 4
            await wait_for(lambda: spec_replicas(k8s_api, ns, "b"), until=lambda r: r == 4,
                           timeout_s=20, what="pool pb still served")
            assert c.health.leader
    assert any(e["event"] == "metrics_unavailable" for e in logs)
    assert any(e["event"] == "pool_unobserved" and e["pool"] == "pa" for e in logs)
