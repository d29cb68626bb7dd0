"""The decision core, rule by rule, on synthetic time.

Covers: the HPA formula and deadband, max over signals, consolidation, pending replicas as
capacity, panic, up/down stabilization, rate limits, bounds, missing and partial data, ratio
coupling, GPU budgets, and state that survives a restart.
"""

from __future__ import annotations

import math

import pytest

from autoscaler.decision.state import ScaleState
from autoscaler.policy.config import PolicyFile
from autoscaler.testing import Ticker, desired, obs, pool_policy
from autoscaler.types import RoleObservation, SignalSample

NO_WINDOWS = {
    "scale_up": {"stabilization_window_s": 0},
    "scale_down": {"stabilization_window_s": 0},
    "panic": {"enabled": False},
    # Tests of other rules feed ready == replicas each tick and use the queue as a generic
    # signal; settling and the stock step have their own tests.
    "stock_settle_s": 0,
    "stock_max_step": None,
}


def agg(signals: list[dict[str, object]], **behavior: object) -> Ticker:
    b = dict(NO_WINDOWS)
    b.update(behavior)
    return Ticker(pool_policy(aggregated={"signals": signals, "behavior": b, "max_replicas": 50}))


Q5 = [{"signal": "queue_depth", "target": 5}]


@pytest.mark.parametrize(
    ("replicas", "mean", "want", "clip"),
    [
        pytest.param(4, 5.0, 4, (), id="at-target"),
        pytest.param(4, 5.4, 4, (), id="deadband-up"),
        pytest.param(4, 4.6, 4, (), id="deadband-down"),
        pytest.param(4, 10.0, 8, (), id="double"),
        pytest.param(4, 7.6, 7, (), id="ceil-of-total"),  # 30.4 / 5 = 6.08 -> 7
        pytest.param(4, 0.0, 1, ("min-replicas",), id="idle-to-min"),
        pytest.param(4, 100.0, 50, ("max-replicas",), id="max-bound"),
    ],
)
def test_hpa_formula_with_deadband(
    replicas: int, mean: float, want: int, clip: tuple[str, ...]
) -> None:
    """ceil(total / target), no change while |value/target - 1| <= tolerance, then bounds."""
    t = agg(Q5, scale_up={"stabilization_window_s": 0, "rules": []})
    (d,) = t.tick(0, aggregated=obs(replicas, queue_depth=mean)).values()
    assert (d.desired, d.clipped_by) == (want, clip)


def test_largest_need_wins_and_is_named() -> None:
    """With several signals, the one asking for most replicas drives and is named."""
    t = agg([*Q5, {"signal": "kv_cache", "target": 0.5}])
    (d,) = t.tick(0, aggregated=obs(4, queue_depth=6.0, kv_cache=0.9)).values()
    assert d.desired == 8  # kv: ceil(3.6 / 0.5) = 8 beats queue: ceil(24 / 5) = 5
    assert d.driver.startswith("kv_cache=0.9")


@pytest.mark.parametrize(
    ("kv", "queue", "want"),
    [
        pytest.param(0.3, 0.0, 2, id="kv-keeps-two"),  # 1.2 / (0.7 * 0.9) = 1.9 -> 2
        pytest.param(0.3, 4.0, 4, id="queue-vetoes"),  # queue keep = ceil(16 / 4.5) = 4
        pytest.param(0.6, 0.0, 4, id="still-busy"),  # 2.4 / 0.63 = 3.8 -> 4
    ],
)
def test_consolidation_every_signal_must_agree(kv: float, queue: float, want: int) -> None:
    """Scale down only to a count where every signal stays under target * (1 - tolerance)."""
    t = agg([*Q5, {"signal": "kv_cache", "target": 0.7}])
    (d,) = t.tick(0, aggregated=obs(4, queue_depth=queue, kv_cache=kv)).values()
    assert d.desired == want


def test_without_consolidation_scale_down_uses_plain_formula() -> None:
    """consolidation: false -> the HPA formula decides scale-down too."""
    t = agg([{"signal": "kv_cache", "target": 0.7}], consolidation=False)
    (d,) = t.tick(0, aggregated=obs(4, kv_cache=0.3)).values()
    assert d.desired == 2  # ceil(1.2 / 0.7) = 2
    t = agg([{"signal": "kv_cache", "target": 0.7}], consolidation=False)
    (d,) = t.tick(0, aggregated=obs(4, kv_cache=0.45)).values()
    assert d.desired == 3  # ceil(1.8 / 0.7) = 3, consolidation would keep ceil(1.8/0.63) = 3 too


@pytest.mark.parametrize(
    ("mean", "want"),
    [
        pytest.param(55 / 12, 12, id="inside-deadband-holds"),  # 55 / 60 = 0.917 >= 0.9
        pytest.param(50 / 12, 10, id="below-deadband-shrinks"),  # 50 / 60 = 0.833 -> ceil(10)
    ],
)
def test_without_consolidation_deadband_holds_scale_down(mean: float, want: int) -> None:
    """consolidation: false keeps the HPA deadband on the way down: 12 replicas at 0.917 x
    target stay 12 (the HPA's tolerance), not ceil(55 / 5) = 11."""
    t = agg(Q5, consolidation=False)
    (d,) = t.tick(0, aggregated=obs(12, queue_depth=mean)).values()
    assert d.desired == want


@pytest.mark.parametrize(
    ("count_pending", "signal", "want"),
    [
        pytest.param(True, "queue_depth", 4, id="queue-capped-while-pending"),
        pytest.param(False, "queue_depth", 8, id="hpa-like-cascades"),
        pytest.param(True, "kv_cache", 8, id="flow-signal-not-capped"),
    ],
)
def test_pending_replicas_absorb_the_queue(count_pending: bool, signal: str, want: int) -> None:
    """While replicas are pending, a growing queue does not ask for more (no cascade)."""
    target = 5 if signal == "queue_depth" else 0.2
    value = 20.0 if signal == "queue_depth" else 0.8
    t = agg([{"signal": signal, "target": target}], count_pending=count_pending)
    (d,) = t.tick(0, aggregated=obs(4, pending=2, **{signal: value})).values()
    assert d.desired == want
    if want == 4:
        assert "pending" in d.driver


def test_panic_skips_up_window_and_forbids_scale_down() -> None:
    """A burst >= threshold x ready scales up at once; panic then blocks scale-down."""
    t = agg(
        Q5,
        scale_up={"stabilization_window_s": 120},
        scale_down={"stabilization_window_s": 0},
        panic={"enabled": True, "threshold": 2.0, "window_s": 60},
    )
    (d,) = t.tick(0, aggregated=obs(2, queue_depth=25.0)).values()
    assert (d.desired, d.panic) == (10, True)
    (d,) = t.tick(15, aggregated=obs(10, queue_depth=0.0)).values()
    assert (d.desired, d.panic, d.clipped_by) == (10, True, ("panic-no-scale-down",))
    (d,) = t.tick(61, aggregated=obs(10, queue_depth=0.0)).values()
    assert (d.desired, d.panic) == (1, False)


def test_without_panic_up_window_needs_a_sustained_rise() -> None:
    """Up-stabilization: the lowest recommendation over the window wins, so a blip is ignored."""
    t = agg(Q5, scale_up={"stabilization_window_s": 60})
    (d,) = t.tick(0, aggregated=obs(2, queue_depth=5.0)).values()
    (d,) = t.tick(15, aggregated=obs(2, queue_depth=25.0)).values()
    assert (d.desired, d.clipped_by) == (2, ("scale-up-stabilized",))
    for now in (30, 45):
        (d,) = t.tick(now, aggregated=obs(2, queue_depth=25.0)).values()
        assert d.desired == 2  # the 2 recorded at t=0 is inside the window (now - 60, now]
    (d,) = t.tick(60, aggregated=obs(2, queue_depth=25.0)).values()
    assert d.desired == 10


def test_down_window_holds_after_a_spike() -> None:
    """Down-stabilization: the highest recommendation over the window wins."""
    t = agg(Q5, scale_down={"stabilization_window_s": 300})
    (d,) = t.tick(0, aggregated=obs(4, queue_depth=10.0)).values()
    assert d.desired == 8
    for now in (15, 150, 299):
        (d,) = t.tick(now, aggregated=obs(8, queue_depth=0.0)).values()
        assert (d.desired, d.clipped_by) == (8, ("scale-down-stabilized",))
    (d,) = t.tick(300, aggregated=obs(8, queue_depth=0.0)).values()
    assert d.desired == 1


@pytest.mark.parametrize(
    ("rules", "select", "start", "mean", "steps"),
    [
        pytest.param(
            [{"type": "pods", "value": 1, "period_s": 60}], "max", 2, 25.0, [3, 3, 4], id="pods-up"
        ),
        pytest.param(
            [
                {"type": "pods", "value": 1, "period_s": 60},
                {"type": "percent", "value": 100, "period_s": 60},
            ],
            "max",
            2,
            25.0,
            [4, 4, 8],
            id="max-of-rules",
        ),
        pytest.param(
            [
                {"type": "pods", "value": 1, "period_s": 60},
                {"type": "percent", "value": 100, "period_s": 60},
            ],
            "min",
            2,
            25.0,
            [3, 3, 4],
            id="min-of-rules",
        ),
        pytest.param([], "disabled", 2, 25.0, [2, 2, 2], id="up-disabled"),
    ],
)
def test_scale_up_rate_limits(
    rules: list[dict[str, object]], select: str, start: int, mean: float, steps: list[int]
) -> None:
    """Pods/Percent per period, as HPA behaviors; ticks at 0, 30 and 61 s."""
    t = agg(Q5, scale_up={"stabilization_window_s": 0, "rules": rules, "select": select})
    current = start
    got = []
    for now in (0, 30, 61):
        (d,) = t.tick(now, aggregated=obs(current, queue_depth=mean * start / current)).values()
        got.append(d.desired)
        current = d.desired
    assert got == steps


def test_scale_down_percent_limit() -> None:
    """Percent down: at most half the replicas a period ago may go per period."""
    t = agg(
        Q5,
        scale_down={
            "stabilization_window_s": 0,
            "rules": [{"type": "percent", "value": 50, "period_s": 60}],
        },
    )
    (d,) = t.tick(0, aggregated=obs(10, queue_depth=0.0)).values()
    assert (d.desired, d.clipped_by) == (5, ("scale-down-limit",))
    (d,) = t.tick(30, aggregated=obs(5, queue_depth=0.0)).values()
    assert d.desired == 5  # period start was 10 -> floor(10 * 0.5) = 5 already reached
    (d,) = t.tick(61, aggregated=obs(5, queue_depth=0.0)).values()
    assert d.desired == 2  # floor(5 * 0.5)


def test_missing_data_holds_then_floor() -> None:
    """All signals missing: hold; after floor_after_s raise to the floor; never lower."""
    t = Ticker(
        pool_policy(
            aggregated={
                "signals": Q5,
                "behavior": NO_WINDOWS,
                "missing_data": {"floor_after_s": 120, "floor_replicas": 3},
            }
        )
    )
    (d,) = t.tick(0, aggregated=obs(2, queue_depth=None)).values()
    assert (d.desired, d.driver) == (2, "hold: all signals missing")
    (d,) = t.tick(60, aggregated=obs(2, queue_depth=math.nan)).values()
    assert d.desired == 2
    (d,) = t.tick(120, aggregated=obs(2, queue_depth=None)).values()
    assert d.desired == 3
    (d,) = t.tick(135, aggregated=obs(5, queue_depth=None)).values()
    assert d.desired == 5  # the floor never scales down
    (d,) = t.tick(150, aggregated=obs(5, queue_depth=0.0)).values()
    assert d.desired == 1  # data is back


@pytest.mark.parametrize(
    ("observation", "want"),
    [
        pytest.param(obs(4, queue_depth=0.0, kv_cache=None), 4, id="one-signal-missing"),
        pytest.param(obs(4, queue_depth=0.0, kv_cache=0.1, reporting=3), 4, id="partial-series"),
        pytest.param(obs(4, queue_depth=20.0, kv_cache=None), 16, id="missing-may-scale-up"),
    ],
)
def test_partial_data_never_scales_down(observation: object, want: int) -> None:
    """A missing or partial signal vetoes a scale-down but not a scale-up."""
    t = agg([*Q5, {"signal": "kv_cache", "target": 0.7}])
    (d,) = t.tick(0, aggregated=observation).values()  # type: ignore[arg-type]
    assert d.desired == want


def test_latency_guard_pushes_up_and_vetoes_down() -> None:
    """TTFT above target asks for more (at most 2x); near target it blocks a scale-down."""
    sig = [
        {"signal": "ttft", "quantile": 0.9, "target": 1.0},
        {"signal": "kv_cache", "target": 0.7},
    ]
    t = agg(sig)
    (d,) = t.tick(0, aggregated=obs(4, ttft_p90=5.0, kv_cache=0.1)).values()
    assert d.desired == 8
    t = agg(sig)
    (d,) = t.tick(0, aggregated=obs(4, ttft_p90=0.95, kv_cache=0.1)).values()
    assert d.desired == 4
    t = agg(sig)
    (d,) = t.tick(0, aggregated=obs(4, ttft_p90=0.2, kv_cache=0.1)).values()
    assert d.desired == 1


def ratio_policy(**pool: object) -> Ticker:
    role = {"signals": Q5, "behavior": NO_WINDOWS}
    return Ticker(
        pool_policy(
            prefill={**role, "max_replicas": 8},
            decode={**role, "min_replicas": 3, "max_replicas": 24},
            pool={"coupling": {"mode": "ratio", "prefill": 1, "decode": 3}, **pool},
        )
    )


@pytest.mark.parametrize(
    ("p_mean", "d_mean", "want"),
    [
        pytest.param(15.0, 0.0, {"prefill": 3, "decode": 9}, id="prefill-need-wins"),
        pytest.param(
            0.0, 20.0, {"prefill": 4, "decode": 12}, id="decode-need-rounds-up"
        ),  # 60/5=12
        pytest.param(0.0, 0.0, {"prefill": 1, "decode": 3}, id="both-idle-to-bounds"),
        pytest.param(100.0, 0.0, {"prefill": 8, "decode": 24}, id="capped-by-both-max"),
    ],
)
def test_ratio_coupling(p_mean: float, d_mean: float, want: dict[str, int]) -> None:
    """Ratio mode: the pair moves together at exactly 1:3, the larger need wins."""
    t = ratio_policy()
    d = t.tick(0, prefill=obs(1, queue_depth=p_mean), decode=obs(3, queue_depth=d_mean))
    assert desired(d) == want


def test_pool_gpu_budget_trims_increases_only() -> None:
    """A pool budget trims scale-ups, the largest relative increase first, never below current."""
    role = {"signals": Q5, "behavior": NO_WINDOWS, "gpus_per_replica": 2}
    t = Ticker(pool_policy(prefill=role, decode=role, pool={"gpu_budget": 20}))
    d = t.tick(0, prefill=obs(2, queue_depth=20.0), decode=obs(4, queue_depth=10.0))
    # wants 8 and 8 (32 GPUs); budget 20 -> 10 replicas. Trimming the largest relative increase
    # first: prefill 8 -> 3 (+300 % down to +50 %), then decode 8 -> 7 (+100 % to +75 %).
    assert desired(d) == {"prefill": 3, "decode": 7}
    assert "pool-gpu-budget" in d[next(iter(d))].clipped_by


def test_file_gpu_budget_across_pools() -> None:
    """The file-level budget holds across pools."""
    role = {"signals": Q5, "behavior": NO_WINDOWS, "max_replicas": 40}
    pools = [
        {"name": n, "roles": {"aggregated": {**role, "deployment": {"name": n}}}}
        for n in ("a", "b")
    ]
    t = Ticker(PolicyFile.model_validate({"gpu_budget": 12, "pools": pools}))
    dec = t.tick_many(
        0,
        {
            "a": {"aggregated": obs(2, queue_depth=50.0)},
            "b": {"aggregated": obs(2, queue_depth=10.0)},
        },
    )
    got = {p: next(iter(pd.roles.values())).desired for p, pd in dec.pools.items()}
    assert sum(got.values()) == 12
    assert got["b"] >= 2


def test_ratio_pool_budget_trims_whole_units() -> None:
    """In ratio mode the budget removes whole (prefill, decode) units."""
    t = ratio_policy(gpu_budget=8)
    d = t.tick(0, prefill=obs(1, queue_depth=50.0), decode=obs(3, queue_depth=0.0))
    assert desired(d) == {"prefill": 2, "decode": 6}


def test_state_survives_restart_through_json() -> None:
    """The down window remembered before a restart still holds after it."""
    t = agg(Q5, scale_down={"stabilization_window_s": 300})
    t.tick(0, aggregated=obs(2, queue_depth=20.0))
    restored = ScaleState.from_json(t.state.to_json())
    assert restored == t.state
    fresh = agg(Q5, scale_down={"stabilization_window_s": 300})
    fresh.state = restored
    (d,) = fresh.tick(60, aggregated=obs(8, queue_depth=0.0)).values()
    assert d.desired == 8


def test_state_shift_moves_every_timestamp() -> None:
    """Persisted wall-clock state converts to monotonic time without changing windows."""
    t = agg(Q5, panic={"enabled": True})
    t.tick(100, aggregated=obs(2, queue_depth=50.0))
    moved = t.state.shifted(-100).shifted(100)
    assert moved == t.state


@pytest.mark.parametrize("text", ["", "[]", '{"version": 99}', "not json"])
def test_state_from_bad_json_raises_value_error(text: str) -> None:
    """Corrupt persisted state is a ValueError the controller can catch and start fresh."""
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError, incl. JSONDecodeError
        ScaleState.from_json(text)


def test_pool_not_observed_is_left_out() -> None:
    """A pool the caller could not observe gets no decision, and its state is kept."""
    t = agg(Q5)
    t.tick(0, aggregated=obs(2, queue_depth=20.0))
    before = t.state
    dec = t.tick_many(15, {})
    assert dec.pools == {}
    assert t.state == before


def test_budget_below_current_never_forces_scale_down() -> None:
    """Lowering a budget under what runs now freezes growth; it does not remove replicas."""
    role = {"signals": Q5, "behavior": NO_WINDOWS}
    t = Ticker(pool_policy(prefill=role, decode=role, pool={"gpu_budget": 4}))
    d = t.tick(0, prefill=obs(3, queue_depth=50.0), decode=obs(3, queue_depth=5.0))
    assert desired(d) == {"prefill": 3, "decode": 3}


@pytest.mark.parametrize(
    ("request_rate", "want"),
    [
        pytest.param(0.0, 1, id="idle-guard-has-no-opinion"),
        pytest.param(2.5, 4, id="missing-under-traffic-vetoes"),
        pytest.param(None, 4, id="unknown-traffic-vetoes"),
    ],
)
def test_missing_latency_guard_when_idle(request_rate: float | None, want: int) -> None:
    """TTFT is NaN when nothing was served in the window: with zero request rate that is idle
    (scale down on the load signals); under traffic or unknown traffic it is missing data."""
    t = agg([*Q5, {"signal": "ttft", "quantile": 0.9, "target": 1.0}])
    o = obs(4, queue_depth=0.0, ttft_p90=None, request_rate=request_rate)
    (d,) = t.tick(0, aggregated=o).values()
    assert d.desired == want


def test_shadow_mode_does_not_throttle_itself() -> None:
    """A decision nobody applied (shadow mode, HPA/KEDA as the actuator, a failed write) is not
    a scale event: the next ticks report the same desired count instead of oscillating."""
    t = agg(Q5, scale_up={"stabilization_window_s": 0, "rules": [{"type": "pods", "value": 3, "period_s": 60}]})
    got = [next(iter(t.tick(now, aggregated=obs(1, queue_depth=20.0)).values())).desired for now in (0, 15, 30, 45)]
    assert got == [4, 4, 4, 4]


def test_observed_change_counts_against_rate_limit() -> None:
    """A change we decided and then observed is dated at the decision; a change somebody else
    made is dated when seen. Both count against the period's rules."""
    t = agg(Q5, scale_up={"stabilization_window_s": 0, "rules": [{"type": "pods", "value": 3, "period_s": 60}]})
    (d,) = t.tick(0, aggregated=obs(1, queue_depth=40.0)).values()
    assert d.desired == 4
    (d,) = t.tick(15, aggregated=obs(4, queue_depth=20.0)).values()
    assert (d.desired, d.clipped_by) == (4, ("scale-up-limit",))  # +3 already used at t=0
    (d,) = t.tick(60, aggregated=obs(4, queue_depth=20.0)).values()
    assert d.desired == 7
    # Someone scales by hand to 10 between ticks: seen at t=75, it uses up t=75's budget.
    (d,) = t.tick(75, aggregated=obs(10, queue_depth=100.0)).values()
    assert (d.desired, d.clipped_by) == (10, ("scale-up-limit",))


def test_latency_guards_settle_after_new_replicas_become_ready() -> None:
    """Right after replicas turn ready, a latency quantile still holds the burst for its window:
    the guard stays capped for stock_settle_s; the queue and flow signals act at once."""
    ttft = {"signal": "ttft", "quantile": 0.9, "target": 1.0}
    t = agg([ttft, *Q5], stock_settle_s=60)
    t.tick(0, aggregated=obs(4, pending=2, ttft_p90=4.0, queue_depth=0.0))
    (d,) = t.tick(15, aggregated=obs(4, ttft_p90=4.0, queue_depth=0.0)).values()
    assert d.desired == 4
    assert "latency window settling" in d.driver
    (d,) = t.tick(30, aggregated=obs(4, ttft_p90=4.0, queue_depth=10.0)).values()
    assert d.desired == 8  # the queue is not windowed: ceil(40 / 5) = 8
    (d,) = t.tick(45, aggregated=obs(8, ttft_p90=4.0, queue_depth=0.0)).values()
    assert d.desired == 8  # four more ready at t=45: the guard settles again
    (d,) = t.tick(110, aggregated=obs(8, ttft_p90=4.0, queue_depth=0.0)).values()
    assert d.desired == 16  # 65 s after the last readiness the guard counts: min(4, 2) x 8


def test_throughput_signal_is_per_replica_of_a_total() -> None:
    """prompt_tokens_rate arrives summed over replicas; the target is per replica."""
    t = agg([{"signal": "prompt_tokens_rate", "target": 10000}])
    o = RoleObservation(
        replicas=2, ready=2, signals={"prompt_tokens_rate": SignalSample(value=45000.0, replicas=2)}
    )
    (d,) = t.tick(0, aggregated=o).values()
    assert d.desired == 5
    assert d.driver.startswith("prompt_tokens_rate=2.25e+04")


def test_queue_spike_at_most_doubles_and_never_panics() -> None:
    """A burst queues hundreds of requests the ready replicas drain in seconds: the queue may
    double the replicas per decision but not jump to max, and does not enter panic; a flow
    signal asking for the same does."""
    t = agg(Q5, stock_max_step=2.0, panic={"enabled": True, "threshold": 2.0, "window_s": 60})
    (d,) = t.tick(0, aggregated=obs(2, queue_depth=150.0)).values()
    assert (d.desired, d.panic) == (4, False)
    kv = [{"signal": "kv_cache", "target": 0.1}]
    t = agg(kv, stock_max_step=2.0, panic={"enabled": True, "threshold": 2.0, "window_s": 60})
    (d,) = t.tick(0, aggregated=obs(2, kv_cache=1.0)).values()
    assert (d.desired, d.panic) == (20, True)
