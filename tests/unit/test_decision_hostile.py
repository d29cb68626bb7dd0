"""The decision core under hostile numbers (issue 17): no overflow, budgets that see every pool,
and no window outlasting its length because of a timestamp from a skewed clock."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from autoscaler.decision import signals
from autoscaler.decision.core import decide
from autoscaler.decision.state import STATE_VERSION, RoleState, ScaleState
from autoscaler.policy.base import RoleContext
from autoscaler.spec import PolicyFile
from autoscaler.testing import Ticker, obs, pool_policy
from autoscaler.types import Need, PoolObservation, Role, RoleObservation, SignalSample, Snapshot

A = Role.AGGREGATED
Q5 = [{"signal": "queue_depth", "target": 5}]


def agg(**role: object) -> Ticker:
    spec = {"signals": Q5, "max_replicas": 50, **role}
    return Ticker(pool_policy(aggregated=spec))


@pytest.mark.parametrize("value", [1e308, 1e300])
def test_absurd_finite_value_is_clamped_not_an_overflow(value: float) -> None:
    """One pod's 1e308 crashed every tick with OverflowError; it is now a (clamped) need."""
    rd = agg().tick(0, aggregated=obs(4, queue_depth=value))[A]
    assert rd.desired == 8  # the queue's stock step (2x) still applies
    assert rd.needs[0].keep == signals.MAX_WANT
    t = Ticker(pool_policy(aggregated={"signals": [{"signal": "kv_cache", "target": 0.8}],
                                       "max_replicas": 50}))
    rd = t.tick(0, aggregated=obs(4, kv_cache=value))[A]
    assert rd.recommended == signals.MAX_WANT
    assert rd.desired == 50  # max_replicas (panic lifts the rate limit)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), -3.0])
def test_non_finite_or_negative_value_holds_with_a_reason(value: float) -> None:
    t = agg(behavior={"scale_down": {"stabilization_window_s": 0}})
    rd = t.tick(0, aggregated=obs(4, queue_depth=value))[A]
    assert rd.desired == 4
    note = rd.needs[0].note
    assert ("invalid value" in note) or ("missing" in note), note


def test_total_signal_overflowing_ratio_holds() -> None:
    """A value that is finite but whose ratio to the smallest target overflows (1e308 / 1e-6)."""
    t = Ticker(pool_policy(aggregated={"signals": [{"signal": "queue_depth", "target": 1e-6}],
                                       "max_replicas": 50}))
    rd = t.tick(0, aggregated=obs(4, queue_depth=1e308))[A]
    assert rd.desired == 4
    assert "invalid value" in rd.needs[0].note


@dataclass
class _Absurd:
    """A plug-in that asks for more replicas than a float can hold."""

    want: int

    def needs(self, ctx: RoleContext) -> Sequence[Need]:
        return [Need("plugin", self.want, self.want, 1.0, 1.0)]


def test_plugin_need_beyond_float_range_is_clamped() -> None:
    policy = pool_policy(aggregated={"signals": Q5, "max_replicas": 50})
    t = Ticker(policy, policies={("p", A): [_Absurd(10**400)]})
    rd = t.tick(0, aggregated=obs(4, queue_depth=5))[A]  # must not raise OverflowError
    assert rd.desired == 50
    assert "clamped" in next(n.note for n in rd.needs if n.source == "plugin")


def two_pools(budget: int) -> PolicyFile:
    role = {"signals": [{"signal": "running", "target": 5}], "min_replicas": 1, "max_replicas": 20, "gpus_per_replica": 1}

    def pool(name: str) -> dict[str, object]:
        r = {**role, "deployment": {"namespace": "t", "name": name}}
        return {"name": name, "roles": {"aggregated": r}}

    return PolicyFile.model_validate({"gpu_budget": budget, "pools": [pool("a"), pool("b")]})


def _snap(now: float, held: dict[str, dict[Role, int]] | None = None) -> Snapshot:
    b = RoleObservation(
        replicas=2, ready=2, signals={"running": SignalSample(value=20.0, replicas=2)}
    )
    return Snapshot(taken_at=now, pools={"b": PoolObservation(roles={A: b})}, held=held or {})


def test_budget_counts_a_paused_pool_at_its_current_size() -> None:
    """Pool a paused at 6 GPUs: pool b may grow to 2 of the 8, not to 8 (14 in use)."""
    policy = two_pools(8)
    decision, _ = decide(_snap(0, {"a": {A: 6}}), ScaleState(), policy, now=0)
    rd = decision.pools["b"].roles[A]
    assert rd.recommended == 8
    assert rd.desired == 2
    assert "gpu-budget" in rd.clipped_by


def test_budget_counts_an_unobservable_pool_at_its_last_observed_size() -> None:
    policy = two_pools(8)
    state = ScaleState(pools={"a": {A: RoleState(last_replicas=5)}})
    decision, new_state = decide(_snap(0), state, policy, now=0)
    assert decision.pools["b"].roles[A].desired == 3
    assert new_state.role("a", A).last_replicas == 5  # kept for the next tick


def test_budget_counts_a_never_seen_pool_at_its_minimum() -> None:
    decision, _ = decide(_snap(0), ScaleState(), two_pools(8), now=0)
    assert decision.pools["b"].roles[A].desired == 7  # a's min_replicas 1 holds one GPU


def test_future_timestamps_do_not_stretch_the_down_window() -> None:
    """A state saved by a leader whose clock ran an hour ahead: scale-down comes after the
    600 s window, not after 4,185 s."""
    policy = pool_policy(aggregated={
        "signals": Q5, "max_replicas": 50,
        "behavior": {"scale_down": {"stabilization_window_s": 600}},
    })
    ahead = 3600.0
    t = Ticker(policy)
    t.state = ScaleState(pools={"p": {A: RoleState(
        recommendations=((ahead, 10),), events=((ahead, 2),), panic_until=ahead + 60,
        last_replicas=10, last_desired=10, last_at=ahead, last_ready=10, ready_rose_at=ahead,
    )}})
    first_down = None
    for now in range(0, 1200, 15):
        rd = t.tick(float(now), aggregated=obs(10, queue_depth=1))[A]
        if rd.desired < 10:
            first_down = now
            break
    assert first_down is not None
    assert 600 <= first_down <= 615


def test_clamped_is_identity_for_sane_state() -> None:
    rs = RoleState(recommendations=((5.0, 3),), last_at=5.0, panic_until=30.0)
    assert rs.clamped(10.0, panic_window_s=60) is rs
    far = RoleState(panic_until=10_000.0)
    assert far.clamped(10.0, panic_window_s=60).panic_until == 70.0


def test_a_restored_state_out_of_time_order_keeps_its_windows() -> None:
    """A hand-edited state may list recommendations out of order; restored, they are sorted
    (the core cuts windows by bisection), so the 600 s down window still holds the peak."""
    text = json.dumps({"version": STATE_VERSION, "pools": {"p": {"aggregated": {
        "recommendations": [[100.0, 3], [-200.0, 10], [50.0, 4]], "events": [[90.0, 1], [10.0, 2]],
        "last_replicas": 10, "last_desired": 10, "last_at": 100.0, "last_ready": 10}}}})
    state = ScaleState.from_json(text)
    rs = state.role("p", A)
    assert rs.recommendations == ((-200.0, 10), (50.0, 4), (100.0, 3))
    assert rs.events == ((10.0, 2), (90.0, 1))
    policy = pool_policy(aggregated={
        "signals": Q5, "max_replicas": 50,
        "behavior": {"scale_down": {"stabilization_window_s": 600}},
    })
    # At 450 s the 600 s window starts at -150 s: the peak of 10 has left it, 4 at 50 s holds.
    t = Ticker(policy)
    t.state = state
    desired = t.tick(450.0, aggregated=obs(10, queue_depth=1))[A].desired
    ordered = Ticker(policy)
    ordered.state = ScaleState(pools={"p": {A: RoleState(
        recommendations=((-200.0, 10), (50.0, 4), (100.0, 3)), events=((10.0, 2), (90.0, 1)),
        last_replicas=10, last_desired=10, last_at=100.0, last_ready=10)}})
    assert desired == ordered.tick(450.0, aggregated=obs(10, queue_depth=1))[A].desired < 10


@dataclass
class _Raises:
    """A plug-in with a bug."""

    def needs(self, ctx: RoleContext) -> Sequence[Need]:
        raise ZeroDivisionError("plugin bug")


def test_a_pool_whose_decision_raises_is_contained() -> None:
    """Pool a's plug-in raises: a is left undecided (state kept, reported in failed), b is
    decided as usual, and the file-wide budget still counts a at its observed size."""
    policy = two_pools(8)
    obs_a = RoleObservation(
        replicas=3, ready=3, signals={"running": SignalSample(value=5.0, replicas=3)}
    )
    snap = _snap(0)
    snap = Snapshot(taken_at=0, pools={**snap.pools, "a": PoolObservation(roles={A: obs_a})})
    state = ScaleState(pools={"a": {A: RoleState(last_replicas=3, last_at=-15.0)}})
    decision, new_state = decide(snap, state, policy, now=0, policies={("a", A): [_Raises()]})
    assert set(decision.pools) == {"b"}
    assert decision.failed == {"a": "ZeroDivisionError: plugin bug"}
    assert new_state.role("a", A) == state.role("a", A)
    assert decision.pools["b"].roles[A].desired == 5  # 8 GPUs minus a's 3


async def test_loop_logs_a_crashing_pool_once_per_change() -> None:
    import structlog  # noqa: PLC0415

    from autoscaler.actuator.base import WorkloadStatus  # noqa: PLC0415
    from autoscaler.loop import Loop  # noqa: PLC0415
    from autoscaler.testing import FakeMetricsSource  # noqa: PLC0415

    class Act:
        async def status(self, ref: object) -> WorkloadStatus:
            return WorkloadStatus(replicas=2, ready=2, pending=0)

        async def scale(self, ref: object, replicas: int, *, reason: str) -> None:
            return None

    policy = two_pools(8)
    loop = Loop(policy, FakeMetricsSource(), Act())
    loop.policies[("a", A)] = [_Raises()]
    with structlog.testing.capture_logs() as logs:
        for t in range(3):
            report = await loop.tick(float(t))
            assert report.crashed == {"a": "ZeroDivisionError: plugin bug"}
        loop.policies[("a", A)] = []
        await loop.tick(3.0)
    events = [e["event"] for e in logs if e["event"].startswith("pool_decision")]
    assert events == ["pool_decision_failed", "pool_decision_recovered"]


@pytest.mark.parametrize(
    "text",
    [
        "null",
        "[1]",
        '{"version": 1, "pools": []}',
        '{"version": 1, "pools": {"p": []}}',
        '{"version": 1, "pools": {"p": {"aggregated": [1]}}}',
        '{"version": 1, "pools": {"p": {"aggregated": {"last_replicas": 1e999}}}}',
        '{"version": 1, "pools": {"p": {"aggregated": {"recommendations": [[1]]}}}}',
        '{"version": 1, "pools": {"p": {"nonsense-role": {}}}}',
        '{"version": 1, "pools": {"p": {"aggregated": {"events": 7}}}}',
        '{"version": 1, "pools": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"version": 1, "pools": {"p": {"aggregated": {"last_at": "soon"}}}}',
    ],
)
def test_malformed_state_is_a_value_error(text: str) -> None:
    """A hand-edited or badly restored state is reported as ValueError (the controller then
    starts fresh), never another exception type that would stop the leader's ticks."""
    with pytest.raises(ValueError, match=r"."):
        ScaleState.from_json(text)


async def test_fetch_past_the_tick_deadline_is_missing_data() -> None:
    """A source that hangs (however it got there) costs the tick its deadline, then holds."""
    import asyncio  # noqa: PLC0415

    from autoscaler.actuator.base import WorkloadStatus  # noqa: PLC0415
    from autoscaler.loop import Loop  # noqa: PLC0415

    class Hanging:
        async def fetch(self, targets: object, *, now: float) -> dict[object, object]:
            await asyncio.sleep(3600)
            return {}

    class Act:
        def __init__(self) -> None:
            self.scales: list[int] = []

        async def status(self, ref: object) -> WorkloadStatus:
            return WorkloadStatus(replicas=4, ready=4, pending=0)

        async def scale(self, ref: object, replicas: int, *, reason: str) -> None:
            self.scales.append(replicas)

    act = Act()
    policy = pool_policy(aggregated={"signals": Q5, "max_replicas": 50,
                                     "behavior": {"scale_down": {"stabilization_window_s": 0}}})
    loop = Loop(policy, Hanging(), act, fetch_deadline_s=0.2)  # type: ignore[arg-type]
    report = await asyncio.wait_for(loop.tick(0.0), 10)
    assert report.metrics_error == "metrics fetch missed the tick's 0.2s deadline"
    assert report.decision.pools["p"].roles[A].desired == 4
    assert act.scales == []


@pytest.mark.parametrize("debug", [False, True])
async def test_decision_line_at_info_on_change_and_debug_only_when_enabled(
    monkeypatch: pytest.MonkeyPatch, debug: bool
) -> None:
    """A role's `decision` line is at info when its numbers change; an unchanged role's line is
    at debug, and not built at all while debug logging is off (issue 16: 2,000 of them a tick)."""
    import logging  # noqa: PLC0415

    from autoscaler import loop as loop_mod  # noqa: PLC0415
    from autoscaler.actuator.base import WorkloadStatus  # noqa: PLC0415
    from autoscaler.testing import FakeMetricsSource  # noqa: PLC0415

    class Rec:
        def __init__(self) -> None:
            self.lines: list[tuple[str, str]] = []

        def is_enabled_for(self, level: int) -> bool:
            return debug or level >= logging.INFO

        def info(self, event: str, **kw: object) -> None:
            self.lines.append(("info", event))

        def debug(self, event: str, **kw: object) -> None:
            self.lines.append(("debug", event))

        def warning(self, event: str, **kw: object) -> None:
            self.lines.append(("warning", event))

    class Act:
        async def status(self, ref: object) -> WorkloadStatus:
            return WorkloadStatus(replicas=2, ready=2, pending=0)

        async def scale(self, ref: object, replicas: int, *, reason: str) -> None:
            return None

    rec = Rec()
    monkeypatch.setattr(loop_mod, "log", rec)
    policy = two_pools(8)
    src = FakeMetricsSource()
    loop = loop_mod.Loop(policy, src, Act())
    per_tick = []
    for t in range(3):
        rec.lines.clear()
        await loop.tick(float(t))
        per_tick.append([line for line in rec.lines if line[1] == "decision"])
    roles = sum(len(p.roles) for p in policy.pools)
    assert per_tick[0] == [("info", "decision")] * roles
    assert per_tick[1] == per_tick[2] == ([("debug", "decision")] * roles if debug else [])
