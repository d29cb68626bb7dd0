"""One control-loop tick, shared by the in-cluster controller, the simulator backtest and the demo.

collect (actuator.status + source.fetch) -> decide (pure core) -> actuate (actuator.scale).
There is no arithmetic here: every number comes from the core with its reason. A failure in one
pool (its Deployment unreadable, a scale refused) never stops the others, and a metric source
that cannot answer at all becomes "every signal missing", which the core turns into a hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from autoscaler import errors
from autoscaler.actuator.base import Actuator, WorkloadStatus
from autoscaler.decision.core import decide
from autoscaler.decision.state import ScaleState
from autoscaler.metrics.source import MetricsSource, RoleTarget, rate_window_of
from autoscaler.policy import registry
from autoscaler.policy.base import Policy, extra_keys
from autoscaler.spec import PolicyFile, PolicyRef
from autoscaler.types import (
    Decision,
    PoolDecision,
    PoolObservation,
    Role,
    RoleObservation,
    SignalSample,
    Snapshot,
)

log = structlog.get_logger(__name__)

DecisionHook = Callable[[Decision, PolicyFile], None]


@dataclass(slots=True)
class TickReport:
    """What a tick did beyond the decision: for metrics, status and tests."""

    decision: Decision
    applied: dict[tuple[str, Role], int] = field(default_factory=dict)
    failed: dict[tuple[str, Role], str] = field(default_factory=dict)
    paused: list[str] = field(default_factory=list)
    unobserved: dict[str, str] = field(default_factory=dict)
    metrics_error: str | None = None
    crashed: dict[str, str] = field(default_factory=dict)
    """Pools whose decision raised this tick (Decision.failed): undecided, nothing written."""
    # What the core was given (replicas and signal samples per pool), for in-process servers
    # (external metrics, KEDA) that re-publish it; None only before the first tick.
    snapshot: Snapshot | None = None


def _ref_key(pool: str, role: Role, ref: PolicyRef, index: int) -> tuple[str, str, int, str]:
    return (pool, role.value, index, json.dumps(ref.model_dump(mode="json"), sort_keys=True))


BuiltPolicies = dict[tuple[str, str, int, str], Policy]


def build_policies(
    policy: PolicyFile, cache: BuiltPolicies | None = None
) -> tuple[BuiltPolicies, dict[tuple[str, Role], list[Policy]]]:
    """Instantiate every `policies:` entry of every role, reusing instances from `cache` whose
    pool, role, position and config are unchanged."""
    cache = cache or {}
    built: BuiltPolicies = {}
    per_role: dict[tuple[str, Role], list[Policy]] = {}
    for pool in policy.pools:
        for role, spec in pool.roles.items():
            for i, ref in enumerate(spec.policies):
                key = _ref_key(pool.name, role, ref, i)
                inst = cache.get(key) or registry.build(
                    ref,
                    pool=pool.name,
                    role=role,
                    spec=spec,
                    where=f"pools.{pool.name}.roles.{role.value}.policies.{i}",
                )
                built[key] = inst
                per_role.setdefault((pool.name, role), []).append(inst)
    return built, per_role


class Loop:
    """Holds the policy, the built policy kinds and the core's state between ticks."""

    def __init__(
        self,
        policy: PolicyFile,
        source: MetricsSource,
        actuator: Actuator,
        *,
        state: ScaleState | None = None,
        hooks: Sequence[DecisionHook] = (),
        fetch_deadline_s: float | None = None,
    ) -> None:
        self.source = source
        # The tick's own bound on collecting metrics, on top of the source's per-query
        # deadlines (retries and queueing behind max_concurrency add up): a fetch that misses it
        # is "every signal missing", a hold. None: no bound beyond the source's own.
        self.fetch_deadline_s = fetch_deadline_s
        self.actuator = actuator
        self.state = state or ScaleState()
        self.hooks = list(hooks)
        self._built: BuiltPolicies = {}
        self._crashed: dict[str, str] = {}
        # What the last info-level `decision` line of each role said (see _apply).
        self._last_logged: dict[tuple[str, Role], tuple[object, ...]] = {}
        self.policy = policy
        self.policies: dict[tuple[str, Role], list[Policy]] = {}
        self.set_policy(policy)

    def set_policy(self, policy: PolicyFile) -> None:
        """Swap in a validated policy; policy kinds whose config is unchanged keep their state
        (a forecast keeps its history across a hot reload)."""
        self._built, self.policies = build_policies(policy, self._built)
        self.policy = policy
        # Policy kinds that read the source's rates over time (the slo kind) need its window:
        # told once, at build (duck-typed like extra_keys; a third-party kind may ignore it).
        window = rate_window_of(self.source)
        if window is not None:
            for pols in self.policies.values():
                for pol in pols:
                    bind = getattr(pol, "bind_rate_window", None)
                    if callable(bind):
                        bind(window)
        # Roles a reload removed: forget what their last decision line said.
        self._last_logged = {k: v for k, v in self._last_logged.items() if k in self.policies}

    def targets(self) -> list[RoleTarget]:
        return [
            RoleTarget(pool=p.name, role=r, spec=s, extra=self._extra_keys(p.name, r))
            for p in self.policy.pools
            for r, s in p.roles.items()
        ]

    def _extra_keys(self, pool: str, role: Role) -> tuple[str, ...]:
        """The optional keys the role's policies declared (`extra_keys`, see policy/base.py)."""
        keys = {k for pol in self.policies.get((pool, role), []) for k in extra_keys(pol)}
        return tuple(sorted(keys))

    async def _statuses(
        self, report: TickReport, held: dict[str, dict[Role, int]]
    ) -> dict[str, dict[Role, WorkloadStatus]]:
        """Observed pools to decide; paused pools' replicas go to `held` (budgets count them)."""
        out: dict[str, dict[Role, WorkloadStatus]] = {}
        for pool in self.policy.pools:
            roles: dict[Role, WorkloadStatus] = {}
            try:
                for role, spec in pool.roles.items():
                    roles[role] = await self.actuator.status(spec.deployment)
            except errors.ActuationError as exc:
                report.unobserved[pool.name] = str(exc)
                log.warning("pool_unobserved", pool=pool.name, error=str(exc))
                continue
            if any(s.paused for s in roles.values()):
                report.paused.append(pool.name)
                held[pool.name] = {role: st.replicas for role, st in roles.items()}
                continue
            out[pool.name] = roles
        return out

    async def tick(self, now: float) -> TickReport:
        """Collect, decide, actuate; returns what happened. Never raises for one pool's trouble."""
        report = TickReport(decision=Decision(at=now, pools={}))
        held: dict[str, dict[Role, int]] = {}
        statuses = await self._statuses(report, held)
        targets = [t for t in self.targets() if t.pool in statuses]
        samples: Mapping[tuple[str, Role], Mapping[str, SignalSample]] = {}
        if targets:
            try:
                async with asyncio.timeout(self.fetch_deadline_s):
                    samples = await self.source.fetch(targets, now=now)
            except errors.MetricsUnavailable as exc:
                report.metrics_error = str(exc)
                log.warning("metrics_unavailable", error=str(exc))
            except TimeoutError:
                report.metrics_error = (
                    f"metrics fetch missed the tick's {self.fetch_deadline_s:g}s deadline"
                )
                log.warning("metrics_deadline_missed", deadline_s=self.fetch_deadline_s)
        pools = {
            name: PoolObservation(
                roles={
                    role: RoleObservation(
                        replicas=st.replicas,
                        ready=st.ready,
                        pending=st.pending,
                        signals=samples.get((name, role), {}),
                    )
                    for role, st in roles.items()
                }
            )
            for name, roles in statuses.items()
        }
        report.snapshot = Snapshot(taken_at=now, pools=pools, held=held)
        decision, self.state = decide(
            report.snapshot,
            self.state,
            self.policy,
            now=now,
            policies=self.policies,
        )
        report.decision = decision
        report.crashed = dict(decision.failed)
        self._log_crashes(decision.failed)
        debug = log.is_enabled_for(logging.DEBUG)  # once per tick, not per pool
        for pd in decision.pools.values():
            await self._apply(pd, report, debug=debug)
        for hook in self.hooks:
            hook(decision, self.policy)
        return report

    def _log_crashes(self, failed: Mapping[str, str]) -> None:
        """A pool whose decision raises is logged when that starts or its error changes, and
        when it decides again: not once per tick."""
        for pool, error in failed.items():
            if self._crashed.get(pool) != error:
                log.error("pool_decision_failed", pool=pool, error=error)
        for pool in set(self._crashed) - set(failed):
            log.info("pool_decision_recovered", pool=pool, was=self._crashed[pool])
        self._crashed = dict(failed)

    async def _apply(self, pd: PoolDecision, report: TickReport, *, debug: bool) -> None:
        pool = self.policy.pool(pd.pool)
        for role, rd in pd.roles.items():
            # At info when the role's numbers change (replicas, recommendation, clips, panic,
            # dry run), at debug every tick: a steady fleet of 1,000 pools would otherwise write
            # 2,000 identical lines per tick, which cost a quarter of the tick's CPU (issue 16).
            # The numbers of every tick stay in /metrics and the state ConfigMap.
            seen = (rd.current, rd.ready, rd.pending, rd.recommended, rd.desired,
                    rd.clips, rd.panic, pd.dry_run)  # fmt: skip
            changed = self._last_logged.get((pd.pool, role)) != seen
            self._last_logged[(pd.pool, role)] = seen
            # An unchanged role's debug line is not even built (rendering its driver text costs
            # more than the rest of this loop) unless debug logging is on.
            if changed or debug:
                (log.info if changed else log.debug)(
                    "decision",
                    pool=pd.pool,
                    role=role.value,
                    current=rd.current,
                    ready=rd.ready,
                    pending=rd.pending,
                    recommended=rd.recommended,
                    desired=rd.desired,
                    driver=rd.driver,
                    clipped_by=list(rd.clipped_by),
                    panic=rd.panic,
                    dry_run=pd.dry_run,
                )
            if not rd.changed or pd.dry_run:
                continue
            ref = pool.roles[role].deployment
            try:
                await self.actuator.scale(ref, rd.desired, reason=rd.reason)
            except errors.ActuationError as exc:
                report.failed[(pd.pool, role)] = str(exc)
                log.warning("scale_failed", pool=pd.pool, role=role.value, error=str(exc))
            else:
                report.applied[(pd.pool, role)] = rd.desired
