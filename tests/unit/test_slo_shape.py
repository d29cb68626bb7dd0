"""The slo kind's burst shape on synthetic time: burst multipliers remembered for hours and
applied at the current level (`RateSeries.shape_headroom`, `SLOPolicy.shape_replicas`), for
prefill and for an aggregated role, whose decode share follows the burst the shape holds.

Each scenario feeds 60-s window rates sampled every 15 s, built from per-slot arrival rates
(req/s in each 15-s slot), exactly as a source reports them.
"""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.policy.base import RoleContext
from autoscaler.policy.slo import SLOConfig, SLOPolicy
from autoscaler.policy.slo_model import RateSeries, _excess_point
from autoscaler.spec import RoleSpec
from autoscaler.types import Role, RoleObservation, SignalSample

TICK = 15.0
W = 60.0


def windows(slots: list[float]) -> list[float]:
    """The 60-s window rate at the end of each 15-s slot (the first slots: their own mean)."""
    out = []
    for i in range(len(slots)):
        lo = max(0, i - 3)
        out.append(sum(slots[lo : i + 1]) / (i + 1 - lo))
    return out


def series(memory_s: float = 10800, halflife_s: float = 3600) -> RateSeries:
    return RateSeries(memory_s=1800, halflife_s=600, trend_s=0, window_s=W, short=True,
                      shape_memory_s=memory_s, shape_halflife_s=halflife_s)  # fmt: skip


def feed(s: RateSeries, slots: list[float]) -> float:
    """Feed the slots' window rates; returns the time of the last sample."""
    t = 0.0
    for v in windows(slots):
        t += TICK
        s.add(t, v)
    return t


def hour(base: float, burst_at_min: float | None, factor: float, slots_on: int = 4) -> list[float]:
    """An hour of 15-s slots at `base` req/s with `slots_on` slots (1 min) at `factor` x base."""
    slots = [base] * 240
    if burst_at_min is not None:
        i = int(burst_at_min * 4)
        slots[i : i + slots_on] = [base * factor] * slots_on
    return slots


@pytest.mark.parametrize(
    ("name", "slots", "held"),
    [
        # A smooth day-like swing (2 -> 8 req/s over 3 h): every short-window rate is within its
        # own noise of the level, so there is no shape to hold.
        ("smooth swing", [2.0 + 6.0 * i / 720 for i in range(720)], False),
        # A minute at 10x, once an hour, twice: 2 x 60 x 18 = 2,160 excess requests of ~16,000,
        # far above the 1 % budget: held an hour later.
        ("hourly burst", hour(2.0, 14, 10.0) + hour(2.0, 14, 10.0)[:228], True),
        # One 15-s slot at 2x in three hours: 30 excess requests of ~21,600, within the budget.
        ("one small burst", hour(2.0, 30, 2.0, 1) + hour(2.0, None, 1) * 2, False),
        # One 15-s slot at 10x, 2 h 50 min ago: its 270 excess requests, at an eighth of their
        # weight by now, are within 1 % of the ~3 h of weighted requests: a single short spike
        # is not worth a replica for hours.
        ("one short spike", hour(2.0, 10, 10.0, 1) + hour(2.0, None, 1) * 2, False),
    ],
)
def test_shape_holds_recurring_bursts_only(name: str, slots: list[float], held: bool) -> None:
    s = series()
    t = feed(s, slots)
    rate, _, level = s.shape_headroom(t, 0.99)
    assert level == pytest.approx(slots[-1], rel=0.03), name
    if held:
        assert rate > 5.0 * level, name
    else:
        assert rate <= level * (1 + 1e-9), name


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (0.0, 10.0),  # no excess allowed: the largest value
        (4.0, 6.0),  # only the 10 is above: 10 - x = 4
        (7.0, 4.0),  # 10 and 5 are above: 15 - 2x = 7
        (100.0, 1.0),  # everything fits: the floor
    ],
)
def test_excess_point_by_hand(budget: float, expected: float) -> None:
    pts = [(5.0, 1.0), (10.0, 1.0), (2.0, 1.0)]
    assert _excess_point(pts, budget, floor=1.0) == pytest.approx(expected)


def test_shape_scales_down_with_the_level() -> None:
    """A minute at 10x (40 req/s at 4 req/s), then the load halves: 57 minutes later the 30-min
    headroom has forgotten the burst, and the shape holds it at the size the current level gives
    it (about 10 x 2, less its noise), not at the 40 req/s it was."""
    s = series()
    t = feed(s, hour(4.0, 14, 10.0) + hour(2.0, None, 1.0)[:228])
    head, _ = s.headroom(t, 0.99)
    rate, age, level = s.shape_headroom(t, 0.99)
    assert head < 5.0
    assert level == pytest.approx(2.0)
    assert 10.0 < rate < 22.0
    assert age == pytest.approx((240 + 228 - 14 * 4 - 4) * TICK, abs=5 * TICK)


def test_shape_never_asks_for_more_than_it_saw() -> None:
    """A burst at a quiet moment (20 req/s at 1 req/s: x20), then the level grows eightfold:
    the multiplier would ask for ~160 req/s, a rate never seen; the shape holds the largest
    rate it saw (20 less its noise)."""
    s = series()
    t = feed(s, hour(1.0, 14, 20.0) + hour(8.0, None, 1.0)[:228])
    rate, _, level = s.shape_headroom(t, 0.99)
    assert level == pytest.approx(8.0)
    assert 15.0 < rate <= 20.0


def test_without_memory_there_is_no_shape() -> None:
    s = series(memory_s=0)
    t = feed(s, hour(2.0, 14, 10.0))
    rate, age, level = s.shape_headroom(t, 0.99)
    assert (rate, age) == (0.0, 0.0)
    assert level == pytest.approx(2.0)
    assert not s.shape


def _spec() -> RoleSpec:
    return RoleSpec.model_validate(
        {
            "deployment": {"namespace": "t", "name": "p"},
            "max_replicas": 100,
            "cold_start_s": 90,
            "policies": [{"kind": "slo", "profile": "llama-8b-h100"}],
        }
    )


def _policy(role: Role = Role.PREFILL, **config: Any) -> SLOPolicy:
    cfg = SLOConfig.model_validate({"profile": "llama-8b-h100", "prompt_length_cv": 1.0,
                                    "trend_window_s": 0, **config})  # fmt: skip
    return SLOPolicy(cfg, pool="p", role=role, spec=_spec())


def _run(pol: SLOPolicy, slots: list[float], *, output: float = 100.0) -> tuple[int, str]:
    """Feed the slots' window rates (2,000-token prompts, `output` tokens generated per
    request); returns the last tick's replicas and reason."""
    t = 0.0
    want, why = 0, ""
    for v in windows(slots):
        t += TICK
        sig = {
            "request_rate": SignalSample(v, 1),
            "prompt_tokens_rate": SignalSample(v * 2000.0, 1),
            "generation_tokens_rate": SignalSample(v * output, 1),
        }
        (need,) = pol.needs(_ctx(t, sig, pol.role))
        want, why = need.want, need.describe()
    return want, why


def _ctx(now: float, sig: dict[str, SignalSample], role: Role = Role.PREFILL) -> RoleContext:
    obs = RoleObservation(replicas=1, ready=1, signals=sig)
    return RoleContext(pool="p", role=role, spec=_spec(), obs=obs, now=now)


def test_prefill_is_ready_for_the_next_hourly_burst() -> None:
    """An hour and three quarters after a minute at 10x, the prefill role still holds the
    replicas that burst needs at the current level (the reason says so); with the shape off the
    30-min headroom has forgotten it and the role holds what the base rate needs."""
    slots = hour(8.0, 14, 10.0) + hour(8.0, None, 1.0)[:228]
    with_shape, why = _run(_policy(), slots)
    without, _ = _run(_policy(burst_shape_memory_s=0), slots)
    assert without < with_shape
    assert "burst shape " in why


@pytest.mark.parametrize(
    ("intervals", "tick"),
    [
        ([], 15.0),  # one call: the configured tick
        ([30.0] * 5, 30.0),  # a controller run at 30 s
        ([15.0] * 6 + [90.0], 15.0),  # one slow tick does not move the median
        ([15.0, 4000.0], 15.0),  # a gap beyond 600 s is no tick
    ],
)
def test_the_tick_in_use_is_the_controllers_own(intervals: list[float], tick: float) -> None:
    """The noise term and the trend horizon use the interval the controller really ticks at,
    measured from successive calls, not only the configured `tick_s`."""
    pol = _policy()
    t = 1000.0
    pol.needs(_ctx(t, {}))
    for d in intervals:
        t += d
        pol.needs(_ctx(t, {}))
    assert pol.tick_s == pytest.approx(tick)
    assert pol.horizon_s == pytest.approx(90.0 + tick)


def test_aggregated_decode_share_follows_the_burst_shape() -> None:
    """An aggregated replica both prefills and decodes: when the shape holds capacity for an
    hourly burst, the decode share is sized at the burst's rate too (its requests generate
    as well), so the role holds more than the shape's prefill replicas alone would give, and
    the reason's decode share is the burst's, not the base rate's."""
    slots = hour(8.0, 14, 10.0) + hour(8.0, None, 1.0)[:228]
    pol = _policy(Role.AGGREGATED)
    want, why = _run(pol, slots, output=400.0)
    assert "burst shape " in why
    rate, _, level = pol.rate.shape_headroom(len(slots) * TICK, 0.99)
    assert rate > 5.0 * level
    cap, _, _ = pol.decode_capacity(2000.0, 400.0)
    share = float(why.split("+ decode ")[1].split(" replicas")[0])
    # The share is the burst rate's generation, not the base 8 req/s's.
    assert share == pytest.approx(rate * 400.0 / cap, rel=0.05)
    assert share > 8.0 * 400.0 / cap * 2
    without, _ = _run(_policy(Role.AGGREGATED, burst_shape_memory_s=0), slots, output=400.0)
    assert want > without
