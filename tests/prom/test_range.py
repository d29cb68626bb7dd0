"""`PrometheusSource.range_rates` (the forecast backfill's range queries) against a real
Prometheus scraping the fake fleet: the range series carry the values the instant queries read,
per role, with the escaped spelling, NaN pods left out, no data as empty arrays, and long ranges
split into several query_range requests on one grid."""

from __future__ import annotations

import time

import numpy as np
import pytest

from autoscaler.metrics.source import RoleTarget
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
