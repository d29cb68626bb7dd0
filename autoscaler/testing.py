"""Test doubles and one-line builders, shipped with the package (as structlog does).

`obs(...)` builds a role observation, `pool_policy(...)` a validated single-pool policy, and
`Ticker` drives `decide` on synthetic time so a scenario reads like a table:

    t = Ticker(pool_policy(prefill={"signals": [{"signal": "queue_depth", "target": 5}]}))
    t.tick(0, prefill=obs(2, queue_depth=20))  # -> desired 8
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from autoscaler import errors
from autoscaler.decision.core import PolicyMap, decide
from autoscaler.decision.state import ScaleState
from autoscaler.metrics.source import RoleSamples, RoleTarget
from autoscaler.policy.config import PolicyFile
from autoscaler.types import (
    Decision,
    PoolObservation,
    Role,
    RoleDecision,
    RoleObservation,
    SignalSample,
    Snapshot,
)

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
