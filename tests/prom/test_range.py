"""`PrometheusSource.range_rates` (the forecast backfill's range queries) against a real
Prometheus scraping the fake fleet: the range series carry the values the instant queries read,
per role, with the escaped spelling, NaN pods left out, no data as empty arrays, long ranges
split into several query_range requests on one grid, and a backfill through them fills a
forecast policy's history on its own clock."""

from __future__ import annotations

import time

import numpy as np
import pytest

from autoscaler import telemetry
from autoscaler.controller import backfill
from autoscaler.forecast import refit
from autoscaler.metrics.source import RoleTarget
from autoscaler.policy.forecast import ForecastConfig, ForecastPolicy
from autoscaler.types import Role
from tests.prom import fleet as fl
from tests.prom.promserver import eventually_async

pytestmark = pytest.mark.prometheus

P, D, A = Role.PREFILL, Role.DECODE, Role.AGGREGATED
STEP = 2.0
POINTS = 3


def _target(fleet: fl.Fleet, pool: str, role: Role) -> RoleTarget:
    (t,) = [t for t in fleet.targets(pool) if t.role is role]
    return t


async def test_range_matches_instant_rates(fleet: fl.Fleet) -> None:
    """After a few scrapes every point of a role's range series equals what the instant
    queries report for it (sum over pods; `running` = mean x pods)."""
    src = fl.source(fleet.prom.url)
    cases = [
        ("alpha", P, "prompt_tokens_rate"),
        ("alpha", P, "request_rate"),
        ("alpha", D, "generation_tokens_rate"),
        ("alpha", D, "running"),
        ("gamma", A, "request_rate"),  # stored under the escaped vllm_ spelling
    ]

    async def check() -> None:
        instant = await src.fetch(fleet.targets("alpha", "gamma"), now=time.monotonic())
        end = time.time()
        start = end - POINTS * STEP
        for pool, role, series in cases:
            ts, values = await src.range_rates(
                _target(fleet, pool, role), series, start=start, end=end, step=STEP
            )
            assert len(ts) == POINTS, (pool, role, series, ts)
            # One point in the middle of every step (the client rounds to whole seconds).
            np.testing.assert_allclose(ts, start + STEP * (np.arange(POINTS) + 0.5), atol=0.51)
            sample = instant[(pool, role)]["running" if series == "running" else series]
            assert sample.value is not None, sample
            want = sample.value * sample.replicas if series == "running" else sample.value
            assert want > 0, (pool, role, series)
            np.testing.assert_allclose(values, want, rtol=0.15, err_msg=f"{pool} {series}")

    try:
        await eventually_async(check, timeout=30)
    finally:
        src.close()


async def test_nan_pods_left_out_and_no_data_is_empty(fleet: fl.Fleet) -> None:
    """A pod with NaN gauges does not turn the role's total into NaN; a role without pods
    yields empty arrays, not an error."""
    src = fl.source(fleet.prom.url)
    end = time.time()
    try:
        ts, values = await src.range_rates(
            _target(fleet, "nanpool", A), "running", start=end - 6, end=end, step=STEP
        )
        assert len(ts) == POINTS
        assert values.tolist() == [0.0] * POINTS  # the two good pods run nothing
        ts, values = await src.range_rates(
            _target(fleet, "empty", A), "request_rate", start=end - 6, end=end, step=STEP
        )
        assert (ts.size, values.size) == (0, 0)
    finally:
        src.close()


async def test_long_ranges_are_split_on_one_grid(fleet: fl.Fleet) -> None:
    """range_points_per_query=2 sends ceil(5 / 2) = 3 query_range requests (counted by
    Prometheus) and returns the same points as one request."""
    whole = fl.source(fleet.prom.url)
    split = fl.source(fleet.prom.url, range_points_per_query=2)
    target = _target(fleet, "alpha", D)
    end = time.time()
    kw = {"start": end - 5 * STEP, "end": end, "step": STEP}
    try:
        ts1, v1 = await whole.range_rates(target, "running", **kw)
        before = fleet.prom.self_counter(
            "prometheus_http_requests_total", handler="/api/v1/query_range"
        )
        ts2, v2 = await split.range_rates(target, "running", **kw)
        after = fleet.prom.self_counter(
            "prometheus_http_requests_total", handler="/api/v1/query_range"
        )
    finally:
        whole.close()
        split.close()
    assert after - before == 3
    assert split.stats.range_queries == 3
    assert ts2.tolist() == ts1.tolist()
    assert len(ts1) == 5
    assert v2.tolist() == v1.tolist() == [80.0] * 5


async def test_backfill_from_real_prometheus_fills_forecast_history(fleet: fl.Fleet) -> None:
    """backfill() through range_rates (behind the controller's InstrumentedSource, as
    `backfill.range_rates_of` finds it): the policy's complete bins since the fleet started
    hold the role's prompt-token rate, on the policy's (monotonic) clock."""
    target = _target(fleet, "alpha", P)
    cfg = ForecastConfig(model="holt", bin_s=5, min_bin_s=5, season_s=60, history_s=600,
                         min_history_s=60, capacity_per_replica=1000.0)
    src = fl.source(fleet.prom.url)
    fetch = backfill.range_rates_of(telemetry.InstrumentedSource(src, telemetry.Telemetry()))
    assert fetch is not None

    async def filled() -> ForecastPolicy:
        # A fresh policy each try: a history that has bins keeps them (live data wins).
        p = ForecastPolicy(cfg, pool="alpha", role=P, spec=target.spec, refitter=refit.Inline())
        (f,) = await backfill.backfill(
            {("alpha", P): [p]}, [target], fetch, now=time.monotonic(), wall_now=time.time()
        )
        assert f.error == ""
        assert f.bins >= 3, f
        return p

    policy: ForecastPolicy | None = None

    async def check() -> None:
        nonlocal policy
        policy = await filled()

    try:
        await eventually_async(check, timeout=40)
    finally:
        src.close()
    assert policy is not None
    values = policy.forecaster.history.tail(len(policy.forecaster.history))
    good = values[~np.isnan(values)]
    assert good.size >= 3
    # The first bin may hold a rate over less than a window of samples (extrapolated).
    np.testing.assert_allclose(good[1:], 3 * 2.0 * 1000, rtol=0.15)


async def test_backfill_from_real_prometheus_primes_an_slo_policy(fleet: fl.Fleet) -> None:
    """An slo policy primed through range_rates holds the role's rates as the instant queries
    read them: requests/s in its rate series and the mean prompt (prompt tokens over requests)
    of the fake pods, on its own clock, before any tick."""
    from autoscaler.policy.slo import SLOConfig, SLOPolicy  # noqa: PLC0415

    target = _target(fleet, "alpha", P)
    cfg = SLOConfig(profile="llama-8b-h100", tick_s=STEP, burst_memory_s=20, trend_window_s=0,
                    length_window_s=20, rate_window_s=fl.RATE_WINDOW_S)
    src = fl.source(fleet.prom.url)
    fetch = backfill.range_rates_of(telemetry.InstrumentedSource(src, telemetry.Telemetry()))
    assert fetch is not None
    primed: SLOPolicy | None = None

    async def check() -> None:
        nonlocal primed
        # A fresh policy each try: only an empty history is primed.
        p = SLOPolicy(cfg, pool="alpha", role=P, spec=target.spec)
        now = time.monotonic()
        (f,) = await backfill.backfill({("alpha", P): [p]}, [target], fetch, now=now,
                                       wall_now=time.time())
        assert f.error == ""
        assert f.bins >= 4, f
        assert all(t < now for t, _, _ in p.rate.samples)
        primed = p

    try:
        await eventually_async(check, timeout=40)
        instant = (await src.fetch([target], now=time.monotonic()))[("alpha", P)]
    finally:
        src.close()
    assert primed is not None
    lam = instant["request_rate"].value
    ptok = instant["prompt_tokens_rate"].value
    assert lam
    assert ptok
    # The oldest points may hold rates over less than a window of samples (the fleet started
    # seconds before): the last three are over whole windows.
    got = [v for _, v, _ in primed.rate.samples][-3:]
    np.testing.assert_allclose(got, lam, rtol=0.15)
    assert primed.p_mean == pytest.approx(ptok / lam, rel=0.1)
