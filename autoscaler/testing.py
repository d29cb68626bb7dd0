"""The public test kit: test doubles and one-line builders, shipped with the package (as
structlog does). Its API is `__all__`, pinned by tests/unit/test_public_api.py.

`obs(...)` builds a role observation, `pool_policy(...)` a validated single-pool policy, and
`Ticker` drives `decide` on synthetic time so a scenario reads like a table:

    t = Ticker(pool_policy(prefill={"signals": [{"signal": "queue_depth", "target": 5}]}))
    t.tick(0, prefill=obs(2, queue_depth=20))  # -> desired 8

For the controller (`autoscaler.controller.app.Controller`), the fakes of what it acts through:
`FakeMetricsSource`, `FakeActuator`, `FakeEvents`, `FakeStateStore` (all four:
`fake_cluster()`), and `FakeClock` for its `clock`/`wall`. Its waits go through
`autoscaler.controller.backoff.sleep`, the one seam to patch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from autoscaler import errors
from autoscaler.actuator.base import ObjectRef, WorkloadStatus
from autoscaler.decision.core import PolicyMap, decide
from autoscaler.decision.state import ScaleState
from autoscaler.metrics.source import RoleSamples, RoleTarget
from autoscaler.spec import DeploymentRef, PolicyFile
from autoscaler.types import (
    Decision,
    PoolObservation,
    Role,
    RoleDecision,
    RoleObservation,
    SignalSample,
    Snapshot,
)

__all__ = [
    "DEFAULT_POOL",
    "FakeActuator",
    "FakeClock",
    "FakeEvents",
    "FakeLease",
    "FakeMetricsSource",
    "FakeStateStore",
    "ReadyFn",
    "Ticker",
    "desired",
    "fake_cluster",
    "obs",
    "pool_policy",
    "signals_of",
]

DEFAULT_POOL = "p"


def obs(
    replicas: int,
    *,
    ready: int | None = None,
    pending: int = 0,
    reporting: int | None = None,
    **signals: float | None,
) -> RoleObservation:
    """A role observation; signal values are per-replica means reported by `reporting` replicas
    (default: all ready ones). A value of None is a missing signal."""
    ready = replicas - pending if ready is None else ready
    n = ready if reporting is None else reporting
    return RoleObservation(
        replicas=replicas,
        ready=ready,
        pending=pending,
        signals={k: SignalSample(value=v, replicas=n) for k, v in signals.items()},
    )


def _role(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "deployment": {"namespace": "t", "name": f"{DEFAULT_POOL}-{name}"},
        "min_replicas": 1,
        "max_replicas": 100,
    }
    base.update(overrides)
    return base


def pool_policy(
    *,
    prefill: Mapping[str, Any] | None = None,
    decode: Mapping[str, Any] | None = None,
    aggregated: Mapping[str, Any] | None = None,
    pool: Mapping[str, Any] | None = None,
    file: Mapping[str, Any] | None = None,
) -> PolicyFile:
    """A validated one-pool policy; role dicts override the defaults field by field."""
    roles: dict[str, Any] = {}
    if aggregated is not None:
        roles["aggregated"] = _role("aggregated", aggregated)
    else:
        roles["prefill"] = _role("prefill", prefill or {})
        roles["decode"] = _role("decode", decode or {})
    p: dict[str, Any] = {"name": DEFAULT_POOL, "roles": roles}
    p.update(pool or {})
    doc: dict[str, Any] = {"pools": [p]}
    doc.update(file or {})
    return PolicyFile.model_validate(doc)


class Ticker:
    """Runs `decide` tick after tick on synthetic time, carrying the state along."""

    def __init__(self, policy: PolicyFile, *, policies: PolicyMap | None = None) -> None:
        self.policy = policy
        self.state = ScaleState()
        self.policies = policies
        self.decisions: list[Decision] = []

    def tick(
        self, now: float, *, pool: str = DEFAULT_POOL, **roles: RoleObservation
    ) -> Mapping[Role, RoleDecision]:
        snap = Snapshot(
            taken_at=now,
            pools={pool: PoolObservation(roles={Role(k): v for k, v in roles.items()})},
        )
        decision, self.state = decide(
            snap, self.state, self.policy, now=now, policies=self.policies
        )
        self.decisions.append(decision)
        return decision.pools[pool].roles

    def tick_many(self, now: float, pools: Mapping[str, Mapping[str, RoleObservation]]) -> Decision:
        snap = Snapshot(
            taken_at=now,
            pools={
                name: PoolObservation(roles={Role(k): v for k, v in roles.items()})
                for name, roles in pools.items()
            },
        )
        decision, self.state = decide(
            snap, self.state, self.policy, now=now, policies=self.policies
        )
        self.decisions.append(decision)
        return decision


def desired(decisions: Mapping[Role, RoleDecision]) -> dict[str, int]:
    return {r.value: d.desired for r, d in decisions.items()}


def signals_of(*specs: tuple[str, float]) -> Sequence[dict[str, Any]]:
    return [{"signal": s, "target": t} for s, t in specs]


ReadyFn = Callable[[str, Role], Awaitable[int]]


class FakeMetricsSource:
    """A `MetricsSource` whose answers a test sets, for the controller tests (unit and e2e).

    `set(...)` gives per-replica means reported by every ready replica (a gauge such as KV
    cache); `set_totals(...)` gives sums over the role (a queue of 20 requests) which are spread
    over the ready replicas, as Prometheus would report them. Ready counts come from `ready`
    (e2e: read from the Deployment) or from `self.ready`. A key never set is absent (missing);
    `unavailable` makes every fetch raise `MetricsUnavailable`.
    """

    def __init__(self, *, ready: ReadyFn | None = None) -> None:
        self._ready_fn = ready
        self.ready: dict[tuple[str, Role], int] = {}
        self.means: dict[tuple[str, Role], dict[str, float | None]] = {}
        self.totals: dict[tuple[str, Role], dict[str, float | None]] = {}
        self.unavailable: str | None = None
        self.fetches = 0

    def set(self, pool: str, role: Role, /, **means: float | None) -> None:
        self.means.setdefault((pool, role), {}).update(means)

    def set_totals(self, pool: str, role: Role, /, **totals: float | None) -> None:
        self.totals.setdefault((pool, role), {}).update(totals)

    def clear(self, pool: str | None = None, role: Role | None = None) -> None:
        """Forget values (all, one pool's, or one role's): their signals go missing."""
        for store in (self.means, self.totals):
            for key in [k for k in store if pool in (None, k[0]) and role in (None, k[1])]:
                del store[key]

    async def fetch(self, targets: Sequence[RoleTarget], *, now: float) -> RoleSamples:
        del now
        self.fetches += 1
        if self.unavailable is not None:
            raise errors.MetricsUnavailable(self.unavailable)
        out: dict[tuple[str, Role], dict[str, SignalSample]] = {}
        for t in targets:
            key = (t.pool, t.role)
            n = (await self._ready_fn(t.pool, t.role) if self._ready_fn is not None
                 else self.ready.get(key, 1))
            samples = {k: SignalSample(value=v, replicas=n)
                       for k, v in self.means.get(key, {}).items()}
            for k, total in self.totals.get(key, {}).items():
                value = None if total is None else total / max(n, 1)
                samples[k] = SignalSample(value=value, replicas=n)
            out[key] = samples
        return out


class FakeActuator:
    """A `ClusterActuator` without a cluster: every Deployment reports `statuses[ref]` (default
    2 replicas, both ready) and `scale` records the write in `scales` without changing what
    `status` reports (a test moves the cluster on with `statuses`). `fail` makes every call
    raise it (an `ActuationError` subclass, say)."""

    def __init__(self, default: WorkloadStatus | None = None) -> None:
        self.default = default or WorkloadStatus(replicas=2, ready=2, pending=0)
        self.statuses: dict[DeploymentRef, WorkloadStatus] = {}
        self.scales: list[tuple[DeploymentRef, int, str]] = []
        self.fail: Exception | None = None

    async def status(self, ref: DeploymentRef) -> WorkloadStatus:
        if self.fail is not None:
            raise self.fail
        return self.statuses.get(ref, self.default)

    async def scale(self, ref: DeploymentRef, replicas: int, *, reason: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.scales.append((ref, replicas, reason))

    def uid(self, ref: DeploymentRef) -> str | None:
        del ref
        return None


class FakeEvents:
    """An `EventSink` that keeps every Event: `recorded` holds (object, reason, message,
    warning) in order."""

    def __init__(self) -> None:
        self.recorded: list[tuple[ObjectRef, str, str, bool]] = []

    async def record(self, obj: ObjectRef, *, reason: str, message: str,
                     warning: bool = False) -> bool:
        self.recorded.append((obj, reason, message, warning))
        return True

    def reasons(self) -> list[str]:
        return [reason for _, reason, _, _ in self.recorded]


class FakeStateStore:
    """The controller's state store in memory, with the real one's clock handling: saved on
    wall time, restored onto the caller's monotonic clock. `saved` is the last `state.json`
    (None until the first save); `load_errors` are raised by the next loads, in order."""

    def __init__(self) -> None:
        self.saved: str | None = None
        self.decisions: list[Decision] = []
        self.last_scale: dict[str, Any] = {}
        self.load_errors: list[Exception] = []
        self.saves = 0

    async def load(self, *, mono_now: float, wall_now: float) -> ScaleState:
        if self.load_errors:
            raise self.load_errors.pop(0)
        if self.saved is None:
            return ScaleState()
        return ScaleState.from_json(self.saved).shifted(mono_now - wall_now)

    async def save(self, state: ScaleState, decision: Decision, *, mono_now: float,
                   wall_now: float, identity: str) -> None:
        del identity
        self.saves += 1
        self.saved = state.shifted(wall_now - mono_now).to_json()
        self.decisions.append(decision)


def fake_cluster() -> dict[str, Any]:
    """The collaborators `controller.app.Controller` acts through, all fakes: pass them as
    `Controller(settings, api=..., source=..., **fake_cluster())` and reach them back as
    `c.actuator`, `c.events`, `c.state_store`."""
    return {"actuator": FakeActuator(), "events": FakeEvents(), "state_store": FakeStateStore()}


class FakeClock:
    """A clock a test moves by hand: `clock()` is now, `advance(s)` moves it on. Pass one as the
    controller's monotonic `clock` and another (offset) as its `wall`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            msg = f"a clock does not go back (advance {seconds})"
            raise ValueError(msg)
        self.now += seconds
        return self.now


class FakeLease:
    """A leader-election lease the test hands over and takes back, in place of the elector:
    `grant()` makes this replica the leader (the controller's leading task starts), `revoke()`
    ends it (the controller's on-stopped callback runs, as when a renewal fails); then the
    controller contends again and waits for the next `grant()`."""

    def __init__(self) -> None:
        self.holder = False
        self.releases = 0
        self._granted = asyncio.Event()
        self._revoked = asyncio.Event()

    def grant(self) -> None:
        self._granted.set()

    def revoke(self) -> None:
        self._revoked.set()

    def held(self) -> bool:
        return self.holder

    async def contend(self, *, on_started: Callable[[], Coroutine[Any, Any, None]],
                      on_stopped: Callable[[], Coroutine[Any, Any, None]]) -> None:
        await self._granted.wait()
        self._granted.clear()
        self.holder = True
        leading = asyncio.create_task(on_started(), name="fake-lease-leading")
        try:
            await self._revoked.wait()
        finally:
            self._revoked.clear()
            self.holder = False
        await on_stopped()
        if not leading.done():
            leading.cancel()

    async def release(self) -> None:
        self.releases += 1
        self.holder = False
