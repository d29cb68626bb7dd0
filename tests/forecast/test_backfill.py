"""History backfill from a Prometheus range query (a fake), so a restart keeps the daily shape."""

from __future__ import annotations

import asyncio

import numpy as np

from autoscaler.controller import backfill
from autoscaler.metrics.source import RoleTarget
from autoscaler.types import Role
from tests.forecast.conftest import ctx, policy, role_spec

WALL = 1_700_000_000.0  # wall-clock "now" at restart
NOW = 5000.0  # the controller's monotonic clock at restart


class FakeRange:
    """Serves a 1,000 + 500 sin(daily) series at the requested step; records the calls."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, float, float, float]] = []
        self.fail = fail

    async def __call__(
        self, target: RoleTarget, series: str, *, start: float, end: float, step: float
    ) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((target.pool, series, start, end, step))
        if self.fail:
            msg = "prometheus: 503"
            raise RuntimeError(msg)
        ts = np.arange(start, end, step) + step / 2
        vals = 1000 + 500 * np.sin(2 * np.pi * ts / 86400)
        vals[10] = np.nan  # one missing point stays a gap
        return ts, vals


def test_backfill_fills_history_and_forecast_starts_at_once() -> None:
    """After a backfill the first tick already fits and forecasts (no min_history_s wait)."""
    p = policy(model="holt", capacity_per_replica=1000.0, history_s=2 * 86400)
    fake = FakeRange()
    target = RoleTarget(pool="p", role=Role.PREFILL, spec=role_spec())
    filled = asyncio.run(
        backfill.backfill({("p", Role.PREFILL): [p]}, [target], fake, now=NOW, wall_now=WALL)
    )
    assert filled == [backfill.Filled("p", Role.PREFILL, "prompt_tokens_rate", 2880)]
    (_, series, start, end, step) = fake.calls[0]
    assert series == "prompt_tokens_rate"
    assert step == 60
    assert end - start == 2 * 86400
    hist = p.forecaster.history
    assert len(hist) == 2880
    assert hist.observed() == 2879  # the NaN point stays a gap
    (need,) = p.needs(ctx(NOW, replicas=2, prompt_tokens_rate=1000.0, batched_tokens=0.25))
    assert need.value is not None, need.note
    assert p.forecaster.fits == 1


def test_backfill_maps_wall_time_to_policy_clock() -> None:
    """Bin k of the policy clock holds the points whose wall time + offset falls in it."""
    ts = np.array([WALL - 120.0, WALL - 61.0, WALL - 59.0])
    vals = np.array([1.0, 2.0, 4.0])
    out = backfill.to_bins(ts, vals, start_bin=80, n=3, bin_s=60, offset=NOW - WALL)
    # NOW = 5000 -> bin 83 open; WALL-120 -> t=4880 -> bin 81; WALL-61 -> 4939 -> 82; 4941 -> 82
    assert np.isnan(out[0])
    assert out[1:].tolist() == [1.0, 3.0]


def test_backfill_failure_skips_role() -> None:
    """A range query that fails leaves that role empty (it learns live) and is reported."""
    p = policy(model="holt", capacity_per_replica=1000.0, history_s=86400)
    target = RoleTarget(pool="p", role=Role.PREFILL, spec=role_spec())
    filled = asyncio.run(
        backfill.backfill(
            {("p", Role.PREFILL): [p]}, [target], FakeRange(fail=True), now=NOW, wall_now=WALL
        )
    )
    assert filled[0].bins == 0
    assert "503" in filled[0].error
    assert len(p.forecaster.history) == 0


def test_backfill_is_capped_by_max_history_s() -> None:
    """max_history_s (the controller's forecast_backfill_s) bounds the range asked for."""
    p = policy(model="holt", capacity_per_replica=1000.0, history_s=2 * 86400)
    fake = FakeRange()
    target = RoleTarget(pool="p", role=Role.PREFILL, spec=role_spec())
    filled = asyncio.run(
        backfill.backfill(
            {("p", Role.PREFILL): [p]},
            [target],
            fake,
            now=NOW,
            wall_now=WALL,
            max_history_s=6 * 3600,
        )
    )
    assert filled[0].bins == 360
    (_, _, start, end, _) = fake.calls[0]
    assert end - start == 6 * 3600
    assert len(p.forecaster.history) == 360
