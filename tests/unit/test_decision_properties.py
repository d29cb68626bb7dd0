"""Properties of the decision core that must hold for any load, any policy within reason.

- replicas always within bounds;
- missing or NaN data never lowers replicas;
- ratio mode always yields the exact ratio;
- a GPU budget is never exceeded;
- a spike shorter than the scale-down window never causes an up-then-down reversal inside it.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.testing import Ticker, obs, pool_policy
from autoscaler.types import Role

# Per-replica signal values, including the awkward ones: zero, huge, missing, NaN.
value = st.one_of(
    st.floats(min_value=0, max_value=500, allow_nan=False),
    st.just(0.0),
    st.none(),
    st.just(math.nan),
)
present = st.floats(min_value=0, max_value=500, allow_nan=False)

behaviors = st.fixed_dictionaries(
    {
        "tolerance": st.sampled_from([0.0, 0.05, 0.1, 0.3]),
        "scale_up": st.fixed_dictionaries(
            {
                "stabilization_window_s": st.sampled_from([0, 30, 120]),
                "rules": st.sampled_from(
                    [
                        [],
                        [{"type": "pods", "value": 2, "period_s": 30}],
                        [{"type": "percent", "value": 50, "period_s": 60}],
                    ]
                ),
            }
        ),
        "scale_down": st.fixed_dictionaries(
            {
                "stabilization_window_s": st.sampled_from([0, 60, 300]),
                "rules": st.sampled_from([[], [{"type": "pods", "value": 1, "period_s": 30}]]),
            }
        ),
        "panic": st.fixed_dictionaries(
            {"enabled": st.booleans(), "threshold": st.sampled_from([1.5, 2.0, 4.0])}
        ),
        "consolidation": st.booleans(),
        "count_pending": st.booleans(),
    }
)

bounds = st.tuples(st.integers(1, 5), st.integers(1, 30)).filter(lambda b: b[0] <= b[1])

SIGNALS = [
    {"signal": "queue_depth", "target": 4},
    {"signal": "kv_cache", "target": 0.7},
    {"signal": "ttft", "quantile": 0.9, "target": 1.0},
]
KEYS = ("queue_depth", "kv_cache", "ttft_p90")


def role(b: tuple[int, int], behavior: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "signals": SIGNALS,
        "behavior": behavior,
        "min_replicas": b[0],
        "max_replicas": b[1],
        **extra,
    }


@st.composite
def observations(
    draw: st.DrawFn, lo: int, hi: int, values: st.SearchStrategy[float | None] = value
) -> Any:
    replicas = draw(st.integers(lo, hi))
    pending = draw(st.integers(0, replicas))
    ready = replicas - pending
    reporting = draw(st.integers(0, ready)) if ready else 0
    sigs = {k: draw(values) for k in KEYS}
    return obs(replicas, pending=pending, reporting=reporting, **sigs)


@settings(max_examples=150, deadline=None)
@given(st.data(), bounds, behaviors)
def test_replicas_always_within_bounds(
    data: st.DataObject, b: tuple[int, int], behavior: dict[str, Any]
) -> None:
    """Whatever the load, the decision stays within [min, max]."""
    t = Ticker(pool_policy(aggregated=role(b, behavior)))
    for now in range(0, 600, 15):
        o = data.draw(observations(b[0], b[1]))
        (d,) = t.tick(now, aggregated=o).values()
        assert b[0] <= d.desired <= b[1]


@settings(max_examples=150, deadline=None)
@given(st.data(), bounds, behaviors)
def test_missing_or_nan_never_lowers(
    data: st.DataObject, b: tuple[int, int], behavior: dict[str, Any]
) -> None:
    """A tick with any missing/NaN signal (or a partial report) never scales down."""
    t = Ticker(pool_policy(aggregated=role(b, behavior)))
    for now in range(0, 600, 15):
        o = data.draw(observations(b[0], b[1]))
        (d,) = t.tick(now, aggregated=o).values()
        degraded = any(s.missing for s in o.signals.values()) or any(
            s.replicas < o.ready for s in o.signals.values()
        )
        if degraded:
            assert d.desired >= o.replicas, d


ratios = st.tuples(st.integers(1, 4), st.integers(1, 4)).filter(lambda r: math.gcd(*r) == 1)


@settings(max_examples=150, deadline=None)
@given(st.data(), ratios, behaviors)
def test_ratio_mode_exact(
    data: st.DataObject, ratio: tuple[int, int], behavior: dict[str, Any]
) -> None:
    """Ratio mode always yields prefill:decode exactly a:b, within both roles' bounds."""
    a, bb = ratio
    p_b, d_b = (a, 6 * a), (bb, 6 * bb)
    t = Ticker(
        pool_policy(
            prefill=role(p_b, behavior),
            decode=role(d_b, behavior),
            pool={"coupling": {"mode": "ratio", "prefill": a, "decode": bb}},
        )
    )
    k = data.draw(st.integers(1, 6))
    p_cur, d_cur = a * k, bb * k
    for now in range(0, 300, 15):
        d = t.tick(
            now,
            prefill=obs(p_cur, **{key: data.draw(value) for key in KEYS}),
            decode=obs(d_cur, **{key: data.draw(value) for key in KEYS}),
        )
        p_cur, d_cur = d[Role.PREFILL].desired, d[Role.DECODE].desired
        assert p_cur * bb == d_cur * a
        assert p_b[0] <= p_cur <= p_b[1]
        assert d_b[0] <= d_cur <= d_b[1]


@settings(max_examples=150, deadline=None)
@given(st.data(), behaviors, st.integers(4, 40), st.booleans())
def test_gpu_budget_never_exceeded(
    data: st.DataObject, behavior: dict[str, Any], budget: int, ratio: bool
) -> None:
    """Starting within the budget, no sequence of loads takes the pool over it."""
    pool: dict[str, Any] = {"gpu_budget": budget}
    if ratio:
        pool["coupling"] = {"mode": "ratio", "prefill": 1, "decode": 2}
    t = Ticker(
        pool_policy(
            prefill=role((1, 20), behavior, gpus_per_replica=1),
            decode=role((1, 40), behavior, gpus_per_replica=1),
            pool=pool,
        )
    )
    p_cur, d_cur = 1, 2
    for now in range(0, 300, 15):
        d = t.tick(
            now,
            prefill=obs(p_cur, **{k: data.draw(present) for k in KEYS}),
            decode=obs(d_cur, **{k: data.draw(present) for k in KEYS}),
        )
        p_cur, d_cur = d[Role.PREFILL].desired, d[Role.DECODE].desired
        assert p_cur + d_cur <= budget


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([60, 120, 300, 600]),
    st.floats(min_value=0.05, max_value=0.95),
    st.floats(min_value=5, max_value=200),
    st.integers(1, 4),
    behaviors,
)
def test_short_spike_no_reversal_inside_down_window(
    window: int, spike_fraction: float, spike: float, base: int, behavior: dict[str, Any]
) -> None:
    """A spike shorter than the down window scales up at most; no scale-down until the window
    after the last up-scale has passed."""
    behavior = {
        **behavior,
        "scale_down": {**behavior["scale_down"], "stabilization_window_s": window},
    }
    t = Ticker(pool_policy(aggregated=role((1, 30), behavior)))
    current = base
    spike_end = window * spike_fraction
    last_up: float | None = None
    for now in range(0, 3 * window, 5):
        load = spike if now < spike_end else 0.0
        (d,) = t.tick(
            now, aggregated=obs(current, queue_depth=load, kv_cache=0.0, ttft_p90=0.1)
        ).values()
        if d.desired > current:
            last_up = now
        if d.desired < current and last_up is not None:
            assert now - last_up >= window, (now, last_up)
        current = d.desired


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 30), st.data(), behaviors)
def test_partial_report_never_lowers(
    replicas: int, data: st.DataObject, behavior: dict[str, Any]
) -> None:
    """Fewer reporting replicas than ready ones (a vanished target) never scales down, even when
    every value that did arrive is idle."""
    load_only = {**role((1, 30), behavior), "signals": SIGNALS[:2]}
    t = Ticker(pool_policy(aggregated=load_only))
    reporting = data.draw(st.integers(0, replicas - 1))
    o = obs(replicas, reporting=reporting, queue_depth=0.0, kv_cache=0.0)
    (d,) = t.tick(0, aggregated=o).values()
    assert d.desired >= replicas
