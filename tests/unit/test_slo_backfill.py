"""An slo policy's history survives a controller restart: `SLOPolicy.prime` and the backfill of
its rates from Prometheus range queries (`controller/backfill.py`; the range queries are a fake
here, `PrometheusSource.range_rates` against a real Prometheus is in tests/prom/test_range.py).

Without it a restarted (or newly elected) controller's slo policy has no burst headroom and no
trend: it sizes on the current rate alone and, once the scale-down window passes, releases the
replicas the last bursts needed.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from autoscaler.controller import backfill
from autoscaler.metrics.source import RoleTarget
from autoscaler.types import Role
from tests.unit.test_slo_policy import make, spec, tick

TICK = 15.0
WINDOW = 60.0
RESTART = 2400.0  # 40 min of history, more than the 30-min burst memory
WALL = 1_700_000_000.0  # wall-clock time at the restart


def arrivals(t: float) -> float:
    """Requests/s at second t: 5 req/s, with a 12-s burst of 60 req/s every 5 minutes."""
    return 60.0 if t % 300.0 < 12.0 else 5.0


def window_rate(t: float) -> float:
    """The source's rate over the window ending at t (fluid: the mean of the per-second rate)."""
    return float(np.mean([arrivals(s) for s in np.arange(t - WINDOW, t, 1.0)]))


def rates(t: float) -> tuple[float, float, float]:
    lam = window_rate(t)
    return lam, lam * 2000.0, lam * 200.0


def run_live(pol: object, until: float, shift: float = 0.0) -> None:
    for k in range(1, int(until / TICK)):
        lam, ptok, gtok = rates(k * TICK)
        tick(pol, k * TICK + shift, req=lam, ptok=ptok, gtok=gtok)  # type: ignore[arg-type]


@pytest.mark.parametrize("role", [Role.PREFILL, Role.DECODE])
# shift: where the policy's clock has its zero. The controller's clock is monotonic (zero at
# the node's boot): restarted on a node up for 10 minutes, 30 of the 40 minutes refilled lie
# before 0, and they count as the rest (they were dropped as "negative" once).
@pytest.mark.parametrize("shift", [0.0, -1800.0], ids=["clock-zero-before", "clock-zero-inside"])
def test_a_primed_restart_decides_as_if_it_never_stopped(role: Role, shift: float) -> None:
    """The policy that ran for 40 minutes and a fresh one primed with the same rates at the same
    ticks take the same decision at the restart tick, reason included; a fresh one without the
    history asks for fewer replicas (the headroom for the recurring bursts is gone)."""
    live, primed, amnesiac = make(role), make(role), make(role)
    run_live(live, RESTART, shift)
    points = [(k * TICK + shift, *rates(k * TICK)) for k in range(1, int(RESTART / TICK))]
    assert primed.prime(points) == len(points)
    lam, ptok, gtok = rates(RESTART)
    at = RESTART + shift
    want_live, why_live, _ = tick(live, at, req=lam, ptok=ptok, gtok=gtok)
    want_primed, why_primed, _ = tick(primed, at, req=lam, ptok=ptok, gtok=gtok)
    want_new, _, _ = tick(amnesiac, at, req=lam, ptok=ptok, gtok=gtok)
    assert (want_primed, why_primed) == (want_live, why_live)
    assert "burst headroom" in why_live
    if role is Role.PREFILL:
        assert want_new < want_live


def test_prime_skips_bad_points_and_never_rewrites_live_history() -> None:
    """Points with a rate that is not finite or negative, or a time that is not finite, are
    left out; a policy that has ticked keeps its live
    history (a reload's refill never rewrites it)."""
    pol = make()
    loaded = pol.prime([
        (900.0, 5.0, 10_000.0, 1000.0),
        (915.0, float("nan"), 10_000.0, 1000.0),
        (930.0, -1.0, 10_000.0, 1000.0),
        (945.0, 5.0, 10_000.0, 1000.0),
        (float("inf"), 5.0, 10_000.0, 1000.0),
    ])
    assert loaded == 2
    assert [t for t, _, _ in pol.rate.samples] == [900.0, 945.0]
    live = make()
    tick(live, 1000.0, req=5.0, ptok=10_000.0, gtok=1000.0)
    assert live.prime([(900.0, 50.0, 100_000.0, 1000.0)]) == 0
    assert [t for t, _, _ in live.rate.samples] == [1000.0]


class FakeRange:
    """Range rates on the wall clock: 5 req/s, 10,000 prompt and 1,000 generated tokens/s; the
    prompt-token series misses one step."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float, float]] = []

    async def __call__(
        self, target: RoleTarget, series: str, *, start: float, end: float, step: float
    ) -> tuple[np.ndarray, np.ndarray]:
        del target
        self.calls.append((series, start, end, step))
        ts = np.arange(start, end, step) + step / 2
        value = {"request_rate": 5.0, "prompt_tokens_rate": 10_000.0,
                 "generation_tokens_rate": 1000.0}[series]
        vals = np.full(len(ts), value)
        if series == "prompt_tokens_rate":
            vals = np.delete(vals, 3)
            ts = np.delete(ts, 3)
        return ts, vals


def test_backfill_asks_each_rate_once_per_tick_over_the_memory() -> None:
    """The three rates over the policy's memory (3 h: the burst shape's; the burst memory and
    trend window are 30 min), one point per tick, on the policy's clock; a step missing from one
    rate is left out."""
    pol = make()
    fake = FakeRange()
    target = RoleTarget(pool="p", role=Role.PREFILL, spec=spec())
    now = 20000.0
    filled = asyncio.run(backfill.backfill({("p", Role.PREFILL): [pol]}, [target], fake,
                                           now=now, wall_now=WALL))
    steps = 10800 // 15
    assert filled == [backfill.Filled("p", Role.PREFILL, backfill.SLO_SERIES, steps - 1)]
    assert [c[0] for c in fake.calls] == ["request_rate", "prompt_tokens_rate",
                                          "generation_tokens_rate"]
    _, start, end, step = fake.calls[0]
    assert step == TICK
    assert end - start == 10800.0
    assert end == pytest.approx(19995.0 - now + WALL)  # whole ticks before now, wall clock
    times = [t for t, _, _ in pol.rate.samples]
    # The rate samples keep the 30-min burst memory; the shape keeps all 3 h.
    assert times[-1] - times[0] == pytest.approx(1800.0)
    assert pol.rate.shape[0][0] == pytest.approx(19995.0 - 10800.0 + 7.5, abs=15.0)
    assert times[-1] < now
    assert pol.p_mean == pytest.approx(2000.0)
    assert pol.has_history


def test_backfill_capped_by_max_history_and_failures_skip_the_role() -> None:
    pol = make()
    fake = FakeRange()
    target = RoleTarget(pool="p", role=Role.PREFILL, spec=spec())
    asyncio.run(backfill.backfill({("p", Role.PREFILL): [pol]}, [target], fake, now=5000.0,
                                  wall_now=WALL, max_history_s=300.0))
    assert all(end - start == 300.0 for _, start, end, _ in fake.calls)

    async def failing(*_: object, **__: object) -> tuple[np.ndarray, np.ndarray]:
        msg = "prometheus: 503"
        raise RuntimeError(msg)

    fresh = make()
    (f,) = asyncio.run(backfill.backfill({("p", Role.PREFILL): [fresh]}, [target], failing,
                                         now=5000.0, wall_now=WALL))
    assert f.bins == 0
    assert "503" in f.error
    assert not fresh.has_history
