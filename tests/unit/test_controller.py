"""The controller's pieces without a cluster: settings, policy documents, the actuator's error
mapping and backoff, the write fence, state persistence round trips, the decision store and the
HTTP probes. The same behaviours against the real API server are in tests/e2e."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import cli, errors, testing
from autoscaler.actuator import kubernetes as kube
from autoscaler.actuator.base import WorkloadStatus
from autoscaler.actuator.fenced import FencedActuator
from autoscaler.controller import settings as settings_mod
from autoscaler.controller.policy_source import PolicyDocs
from autoscaler.controller.settings import settings_from
from autoscaler.server import app as app_mod
from autoscaler.server.store import DecisionStore
from autoscaler.spec import DeploymentRef, PolicyFile
from autoscaler.telemetry import Telemetry
from autoscaler.types import Decision, Role

POLICY = Path(__file__).resolve().parents[2] / "policies" / "llama-8b-disagg.yaml"
REF = DeploymentRef(namespace="llm", name="p-prefill")
NO_API: Any = SimpleNamespace()


# --- settings -------------------------------------------------------------------------------


def _args(**kw: Any) -> argparse.Namespace:
    base = {"kubeconfig": None, "namespace": None, "policy_file": None, "prometheus_url": None,
            "dry_run": None}
    base.update(kw)
    return argparse.Namespace(**base)


def test_settings_env_then_flags() -> None:
    """PD_AUTOSCALER_* variables set defaults; flags override them."""
    env = {"PD_AUTOSCALER_NAMESPACE": "ops", "PD_AUTOSCALER_TICK_S": "5",
           "PD_AUTOSCALER_DRY_RUN": "true", "PD_AUTOSCALER_IDENTITY": "me"}
    s = settings_from(_args(namespace="flag-ns"), env)
    assert (s.namespace, s.tick_s, s.dry_run, s.identity) == ("flag-ns", 5.0, True, "me")


@pytest.mark.parametrize(("env", "fragment"), [
    pytest.param({"PD_AUTOSCALER_TICK_S": "fast"}, "PD_AUTOSCALER_TICK_S", id="not-a-number"),
    pytest.param({"PD_AUTOSCALER_DRY_RUN": "maybe"}, "expected true/false", id="bad-bool"),
    pytest.param({"PD_AUTOSCALER_LEASE_DURATION_S": "5"}, "lease_duration_s", id="lease-order"),
    pytest.param({"PD_AUTOSCALER_TICK_S": "0"}, "tick_s: must be > 0", id="zero-tick"),
])
def test_settings_errors_name_the_variable(env: dict[str, str], fragment: str) -> None:
    """A bad variable is a ConfigError naming it (exit code 2 through the CLI)."""
    with pytest.raises(errors.ConfigError) as exc:
        settings_from(_args(namespace="x"), env)
    assert fragment in str(exc.value)


def test_flags_and_variables_come_from_one_field_list() -> None:
    """Every setting is a PD_AUTOSCALER_* variable (the downward API's two unprefixed); the
    `run` flags are the fields that declare one, under their historical names."""
    names = settings_mod.env_names()
    assert names["tick_s"] == "PD_AUTOSCALER_TICK_S"
    assert names["policy_file"] == "PD_AUTOSCALER_POLICY_FILE"
    assert (names["pod_name"], names["pod_namespace"], names["pod_ip"]) == (
        "POD_NAME", "POD_NAMESPACE", "POD_IP")
    assert set(names) == set(settings_mod.Settings.model_fields)
    run = next(a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices["run"]
    flags = {s for a in run._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == {"--kubeconfig", "--namespace", "--policy", "--prometheus-url", "--dry-run",
                     "--external-metrics-port", "--external-metrics-cert-dir",
                     "--keda-grpc-port", "--keda-metrics-api", "--leader-endpointslice"}
    args = cli.build_parser().parse_args(["run", "--policy", "p.yaml", "--dry-run"])
    s = settings_from(args, {"PD_AUTOSCALER_NAMESPACE": "x"})
    assert (s.policy_file, s.dry_run) == (Path("p.yaml"), True)


# --- policy documents -----------------------------------------------------------------------


def _doc(pool: str, dep: str, *, extra: str = "") -> str:
    return f"""
apiVersion: pd-autoscaler.io/v1alpha1
kind: AutoscalingPolicy
{extra}
pools:
  - name: {pool}
    roles:
      aggregated:
        deployment: {{namespace: llm, name: {dep}}}
        max_replicas: 4
        signals: [{{signal: queue_depth, target: 2}}]
"""


def test_policy_docs_merge_and_keep_last_good() -> None:
    """Documents merge by pools; an invalid update keeps that document's last good version."""
    docs = PolicyDocs()
    new, problems = docs.propose({"a.yaml": _doc("a", "da"), "b.yaml": _doc("b", "db")})
    assert problems == []
    docs.docs = new
    merged = docs.merged()
    assert merged is not None
    assert [p.name for p in merged.pools] == ["a", "b"]

    bad = _doc("a", "da").replace("max_replicas: 4", "max_replicas: -1")
    new, problems = docs.propose({"a.yaml": bad})
    assert any("a.yaml: pools.0.roles.aggregated.max_replicas" in p for p in problems)
    assert new["a.yaml"] == docs.docs["a.yaml"]


def test_policy_docs_reject_cross_document_conflicts() -> None:
    """Two documents scaling one Deployment are rejected as a whole; the old set stays."""
    docs = PolicyDocs()
    docs.docs, _ = docs.propose({"a.yaml": _doc("a", "same")})
    new, problems = docs.propose({"b.yaml": _doc("b", "same")})
    assert problems
    assert "scaled by more than one role" in problems[0]
    assert set(new) == {"a.yaml"}


def test_policy_docs_dry_run_if_any_document_asks() -> None:
    """Shadow mode in one document holds for the merged policy (never act on a shadow doc)."""
    docs = PolicyDocs()
    docs.docs, _ = docs.propose({"a.yaml": _doc("a", "da", extra="dry_run: true"),
                                 "b.yaml": _doc("b", "db")})
    merged = docs.merged()
    assert merged is not None
    assert merged.dry_run


# --- actuator -------------------------------------------------------------------------------


def _dep(spec: int, ready: int | None, annotations: dict[str, str] | None = None) -> Any:
    return SimpleNamespace(
        spec=SimpleNamespace(replicas=spec),
        status=SimpleNamespace(ready_replicas=ready),
        metadata=SimpleNamespace(annotations=annotations, uid="u1", resource_version="7"),
    )


@pytest.mark.parametrize(("dep", "want"), [
    pytest.param(_dep(4, 1), WorkloadStatus(4, 1, 3), id="pending-is-spec-minus-ready"),
    pytest.param(_dep(2, None), WorkloadStatus(2, 0, 2), id="no-ready-yet"),
    pytest.param(_dep(2, 3), WorkloadStatus(2, 2, 0), id="surplus-ready-clamped"),
    pytest.param(_dep(2, 2, {kube.PAUSED_ANNOTATION: "True"}), WorkloadStatus(2, 2, 0, True),
                 id="paused"),
])
def test_status_of(dep: Any, want: WorkloadStatus) -> None:
    """Pending counts every requested-but-unready replica; the paused annotation is honoured."""
    assert kube.status_of(dep) == want


class FakeApps:
    """AppsV1Api stand-in: scripted errors per call, records patches."""

    def __init__(self) -> None:
        self.read_errors: list[BaseException] = []
        self.patch_errors: list[BaseException] = []
        self.patches: list[Any] = []
        self.reads = 0

    async def read_namespaced_deployment(self, name: str, ns: str, **_: Any) -> Any:
        self.reads += 1
        if self.read_errors:
            raise self.read_errors.pop(0)
        return _dep(2, 2)

    async def read_namespaced_deployment_scale(self, name: str, ns: str, **_: Any) -> Any:
        return _dep(2, 2)

    async def patch_namespaced_deployment_scale(self, name: str, ns: str, body: Any,
                                                **_: Any) -> Any:
        if self.patch_errors:
            raise self.patch_errors.pop(0)
        self.patches.append(body)
        return None


def _actuator(clock: list[float]) -> tuple[kube.KubernetesActuator, FakeApps, testing.FakeEvents]:
    events = testing.FakeEvents()
    apps = FakeApps()
    act = kube.KubernetesActuator(NO_API, apps=apps, events=events, clock=lambda: clock[0])
    return act, apps, events


async def test_scale_patches_scale_subresource_as_compare_and_swap() -> None:
    """A scale is a JSON patch of spec.replicas on deployments/scale: `test` the replicas just
    read, then `replace` them."""
    act, apps, _ = _actuator([0.0])
    await act.scale(REF, 5, reason="test")
    assert len(apps.patches) == 1
    test, replace = apps.patches[0]
    assert test["op"] == "test"
    assert test["path"] == "/spec/replicas"
    assert replace == {"op": "replace", "path": "/spec/replicas", "value": 5}


@pytest.mark.parametrize("status", [409, 422])
async def test_conflict_is_mapped_not_retried(status: int) -> None:
    """409 or a failed `test` op (422): ActuationConflict, nothing written, the next tick
    re-decides on what is there."""
    act, apps, _ = _actuator([0.0])
    apps.patch_errors = [ApiException(status=status)]
    with pytest.raises(errors.ActuationConflict):
        await act.scale(REF, 3, reason="t")
    assert apps.patches == []


async def test_not_found_and_forbidden_are_mapped() -> None:
    """404 -> TargetNotFound plus one Event per disappearance; 403 names the permission."""
    act, apps, events = _actuator([0.0])
    apps.read_errors = [ApiException(status=404), ApiException(status=404)]
    for _ in range(2):
        with pytest.raises(errors.TargetNotFound):
            await act.status(REF)
    assert events.reasons() == ["TargetNotFound"]
    apps.patch_errors = [ApiException(status=403)]
    with pytest.raises(errors.Forbidden) as exc:
        await act.scale(REF, 3, reason="t")
    assert "patch deployments/scale/p-prefill in namespace llm" in str(exc.value)


async def test_transient_errors_back_off_per_target() -> None:
    """5xx/timeouts back off that Deployment only: calls fail fast until the delay passes."""
    clock = [100.0]
    act, apps, _ = _actuator(clock)
    apps.read_errors = [ApiException(status=503)]
    with pytest.raises(errors.ActuationUnavailable):
        await act.status(REF)
    with pytest.raises(errors.ActuationUnavailable, match="backing off"):
        await act.status(REF)
    assert apps.reads == 1
    other = DeploymentRef(namespace="llm", name="p-decode")
    assert (await act.status(other)).replicas == 2  # another target is unaffected
    clock[0] += 1.5
    apps.read_errors = [TimeoutError()]
    with pytest.raises(errors.ActuationUnavailable):  # the timeout; the delay doubles
        await act.status(REF)
    clock[0] += 1.5
    with pytest.raises(errors.ActuationUnavailable, match="backing off"):
        await act.status(REF)
    clock[0] += 1.0
    assert (await act.status(REF)).ready == 2


async def test_fence_refuses_writes_when_not_leader() -> None:
    """Only the leader writes: a lost lease turns a scale into an ActuationError."""
    act, apps, _ = _actuator([0.0])
    leader = [True]
    fenced = FencedActuator(act, lambda _ref: leader[0])
    await fenced.scale(REF, 2, reason="t")
    leader[0] = False
    with pytest.raises(errors.ActuationError, match="not the leader"):
        await fenced.scale(REF, 3, reason="t")
    assert len(apps.patches) == 1


# State persistence: tests/unit/test_state_shards.py.


# --- store and HTTP -------------------------------------------------------------------------


async def test_store_wait_newer() -> None:
    """Push-style readers wake on the next recorded decision."""
    store = DecisionStore()
    policy = testing.pool_policy(prefill={"signals": [{"signal": "queue_depth", "target": 2}]},
                                 decode={"signals": [{"signal": "kv_cache", "target": 0.7}]})
    waiter = asyncio.create_task(store.wait_newer(0, timeout_s=5))
    await asyncio.sleep(0)
    store.record(Decision(at=1.0, pools={}), policy)
    latest = await waiter
    assert latest is not None
    assert latest.seq == 1
    assert await store.wait_newer(1, timeout_s=0.01) is None


async def test_probes_and_metrics() -> None:
    """/readyz waits for a policy and the API; /healthz fails when the leader's ticks stall."""
    health = app_mod.Health(stall_after_s=30)
    now = [0.0]
    app = app_mod.create_app(health=health, store=DecisionStore(), telemetry=Telemetry(),
                             clock=lambda: now[0])
    async with TestClient(TestServer(app)) as http:
        assert (await http.get("/readyz")).status == 503
        health.policy_loaded = health.api_reachable = True
        assert (await http.get("/readyz")).status == 200
        health.leader, health.last_tick = True, 0.0
        assert (await http.get("/healthz")).status == 200
        now[0] = 31.0
        resp = await http.get("/healthz")
        assert resp.status == 503
        assert "no tick" in (await resp.json())["detail"]
        metrics = await http.get("/metrics")
        assert "pd_autoscaler_leader" in await metrics.text()


async def test_fake_metrics_source_spreads_totals() -> None:
    """Totals are spread over ready replicas, as per-pod series would report them."""
    src = testing.FakeMetricsSource()
    src.ready[("p", Role.PREFILL)] = 4
    src.set_totals("p", Role.PREFILL, queue_depth=20)
    policy: PolicyFile = testing.pool_policy(
        prefill={"signals": [{"signal": "queue_depth", "target": 2}]},
        decode={"signals": [{"signal": "kv_cache", "target": 0.7}]})
    from autoscaler.metrics.source import RoleTarget  # noqa: PLC0415

    spec = policy.pools[0].roles[Role.PREFILL]
    out = await src.fetch([RoleTarget("p", Role.PREFILL, spec)], now=0)
    assert out[("p", Role.PREFILL)]["queue_depth"].value == 5.0
    src.unavailable = "down"
    with pytest.raises(errors.MetricsUnavailable):
        await src.fetch([], now=0)
