"""Faults between the controller and Prometheus, against a real Prometheus, and what the
decision core makes of them.

Aspects: Prometheus stopped mid-run (unavailable, then recovery after a restart, with targets
that vanished meanwhile not counted); Prometheus slower than the timeout (missing, bounded
time); a target disappearing (partial data); NaN and stale series (partial, counted, logged
once). For each, `decide` must not scale down.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
import structlog

from autoscaler import errors, telemetry
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.metrics.source import RoleTarget
from autoscaler.testing import Ticker, pool_policy
from autoscaler.types import Role, RoleDecision, RoleObservation, SignalSample
from tests.prom import fleet as fl
from tests.prom.fakevllm import FakePod, FakeVllmServer, rs_pod
from tests.prom.promserver import PromServer, eventually_async
from tests.prom.slowproxy import SlowProxy

pytestmark = pytest.mark.prometheus

A = Role.AGGREGATED


def decide_once(
    signals: Mapping[str, SignalSample], *, current: int, ready: int | None = None
) -> RoleDecision:
    """The core's decision for one aggregated role on these samples (queue_depth target 5, no
    down-stabilization, so complete low data would scale down at once)."""
    policy = pool_policy(
        aggregated={
            "signals": [{"signal": "queue_depth", "target": 5}],
            "min_replicas": 1,
            "max_replicas": 16,
            "behavior": {"scale_down": {"stabilization_window_s": 0}},
        }
    )
    obs = RoleObservation(
        replicas=current, ready=current if ready is None else ready, signals=signals
    )
    return Ticker(policy).tick(0, aggregated=obs)[A]


def pool_targets(ns: str, *, deployment: str | None = None) -> list[RoleTarget]:
    pf = pool_policy(
        aggregated=fl.role(ns, deployment or ns),
        pool={"name": ns},
    )
    return [RoleTarget(pool=ns, role=A, spec=pf.pools[0].roles[A])]


async def read(src: PrometheusSource, targets: list[RoleTarget]) -> Mapping[str, SignalSample]:
    return (await src.fetch(targets, now=time.monotonic()))[(targets[0].pool, A)]


def test_low_complete_data_does_scale_down() -> None:
    """Control case: the same low queue from every ready replica does scale down."""
    rd = decide_once({"queue_depth": SignalSample(value=0.5, replicas=3)}, current=3)
    assert rd.desired < 3


async def test_prometheus_stopped_then_restarted(
    private_prom: PromServer, fake_vllm: FakeVllmServer
) -> None:
    """Stopped: fetch raises MetricsUnavailable quickly and the core holds. Restarted: values
    come back, and a pod that vanished while Prometheus was down is not counted (its last
    samples linger for the 5 min lookback; the sample-age check drops them)."""
    ns = "restart"
    pods = [fake_vllm.add(FakePod(rs_pod(ns, i), ns, waiting=1)) for i in range(2)]
    private_prom.set_targets("vllm", ns, [fake_vllm.target(p) for p in pods])
    targets = pool_targets(ns)
    src = fl.source(private_prom.url, max_sample_age_s=3.0, retries=1, backoff_s=0.1)
    try:

        async def both_pods() -> None:
            s = await read(src, targets)
            assert s["queue_depth"].replicas == 2, s["queue_depth"]

        await eventually_async(both_pods)
        private_prom.stop()
        private_prom.set_targets("vllm", ns, [fake_vllm.target(pods[0])])
        start = time.monotonic()
        with pytest.raises(errors.MetricsUnavailable, match="unreachable"):
            await read(src, targets)
        assert time.monotonic() - start < 5
        # What the loop passes on when the source is unavailable: no samples at all.
        assert decide_once({}, current=2).desired == 2

        private_prom.start()

        async def one_fresh_pod() -> None:
            s = await read(src, targets)
            assert s["queue_depth"].value == pytest.approx(1.0)
            assert s["queue_depth"].replicas == 1, s["queue_depth"]

        await eventually_async(one_fresh_pod, timeout=30)
        s = await read(src, targets)
        assert decide_once(s, current=2).desired >= 2
    finally:
        src.close()


async def test_prometheus_slower_than_timeout(fleet: fl.Fleet) -> None:
    """Every query times out: all samples missing (no exception: Prometheus was reached), in
    bounded time; the core holds; once fast again, values return."""
    proxy = SlowProxy(fleet.prom.port, delay_s=3.0)
    tel = telemetry.Telemetry()
    src = PrometheusSource(
        fl.settings(proxy.url, timeout_s=0.5, retries=1, backoff_s=0.1), telemetry=tel
    )
    targets = fleet.targets("alpha")
    try:
        start = time.monotonic()
        samples = await src.fetch(targets, now=0.0)
        elapsed = time.monotonic() - start
        # 9 queries + discovery in parallel (4 at a time), 2 attempts of 0.5 s each.
        assert elapsed < 8, elapsed
        for role_samples in samples.values():
            for key, s in role_samples.items():
                assert s.missing, key
                assert s.detail == "query failed: timeout", s
        assert src.stats.problems[("queue_depth", "timeout")] == 1
        assert tel.registry.get_sample_value(
            "pd_autoscaler_metric_source_errors_total",
            {"query": "queue_depth", "reason": "timeout"},
        )
        prefill = samples[("alpha", Role.PREFILL)]
        assert decide_once(prefill, current=3).desired == 3
        proxy.delay_s = 0.0
        samples = await src.fetch(targets, now=1.0)
        assert samples[("alpha", Role.PREFILL)]["queue_depth"].value == pytest.approx(6.0)
    finally:
        proxy.close()
        src.close()


async def test_target_disappearing_gives_partial_data(
    fleet: fl.Fleet, fake_vllm: FakeVllmServer
) -> None:
    """A pod whose /metrics starts failing drops out at once (staleness markers): the value
    is the remaining pods' mean over fewer replicas than ready, and the core does not scale
    down even though that mean is low."""
    ns = "vanish"
    pods = [fake_vllm.add(FakePod(rs_pod(ns, i), ns, waiting=1)) for i in range(3)]
    fleet.prom.set_targets("vllm", ns, [fake_vllm.target(p) for p in pods])
    targets = pool_targets(ns)
    src = fl.source(fleet.prom.url)
    try:

        async def replicas(n: int) -> None:
            s = await read(src, targets)
            assert s["queue_depth"].replicas == n, s["queue_depth"]

        await eventually_async(lambda: replicas(3))
        pods[2].status = 503
        await eventually_async(lambda: replicas(2), timeout=15)
        s = await read(src, targets)
        assert s["queue_depth"].value == pytest.approx(1.0)
        rd = decide_once(s, current=3)
        assert rd.desired == 3, rd.reason
    finally:
        pods[2].status = 200
        src.close()


async def test_nan_and_stale_series_are_partial_counted_and_logged_once(
    fleet: fl.Fleet,
) -> None:
    """NaN and stale pods are left out (partial), counted per tick by query and reason, and
    logged when the problem starts, not on every tick; the core does not scale down."""
    tel = telemetry.Telemetry()
    src = PrometheusSource(fl.settings(fleet.prom.url), telemetry=tel)
    targets = fleet.targets("nanpool", "stale")
    try:
        with structlog.testing.capture_logs() as logs:
            first = await src.fetch(targets, now=0.0)
            await src.fetch(targets, now=1.0)
    finally:
        src.close()
    problems = [e for e in logs if e["event"] == "metric_data_problem"]
    nan_logs = [e for e in problems if e["pool"] == "nanpool" and e["query"] == "queue_depth"]
    assert len(nan_logs) == 1, problems
    assert nan_logs[0]["reasons"] == ["nan"]
    stale_logs = [e for e in problems if e["pool"] == "stale" and e["query"] == "kv_cache"]
    assert len(stale_logs) == 1
    assert stale_logs[0]["reasons"] == ["stale"]
    nan_count = tel.registry.get_sample_value(
        "pd_autoscaler_metric_source_errors_total", {"query": "queue_depth", "reason": "nan"}
    )
    assert nan_count == 2  # two ticks
    for pool, ready in (("nanpool", 3), ("stale", 2)):
        s = first[(pool, A)]
        assert s["queue_depth"].replicas == ready - 1
        # The reporting pods' queue is low enough to shed a replica if they were all.
        assert decide_once(s, current=ready).desired >= ready


async def test_prometheus_error_reply_is_missing_not_unavailable(fleet: fl.Fleet) -> None:
    """A 4xx from Prometheus (a pod regex Python accepts but RE2 rejects: no lookahead) is a
    query error: the samples of that query are missing, it is not retried, nothing raises."""
    targets = pool_targets("alpha", deployment="alpha-prefill")
    spec = targets[0].spec.model_copy(
        update={"metrics": targets[0].spec.metrics.model_copy(update={"pod_regex": "(?=a).*"})}
    )
    targets = [RoleTarget(pool="alpha", role=A, spec=spec)]
    src = fl.source(fleet.prom.url)
    try:
        samples = await read(src, targets)
    finally:
        src.close()
    assert samples["request_rate"].missing
    assert samples["request_rate"].detail == "query failed: error"
    assert src.stats.problems[("request_rate", "error")] == 1
    assert src.stats.queries == 11  # discovery + 10 (ttft_relative among them), no retries


def test_invalid_selector_is_reported_for_its_role_only() -> None:
    """A pod regex Python cannot compile excludes only its role from the queries (one bad
    role must not blank every pool's union)."""
    from autoscaler.metrics import queries  # noqa: PLC0415

    good = pool_targets("ok")
    bad_spec = good[0].spec.model_copy(
        update={"metrics": good[0].spec.metrics.model_copy(update={"pod_regex": "(["})}
    )
    bad = RoleTarget(pool="bad", role=A, spec=bad_spec)
    plan = queries.plan([*good, bad], queries.Builder(names=queries.Names.all(), rate_window_s=60))
    assert ("bad", "aggregated") in plan.invalid
    assert all(q.roles == (("ok", "aggregated"),) for q in plan.queries)
