"""The pure decision core: `decide(snapshot, state, policy, now) -> (decision, new_state)`.

No I/O, no clock reads: time and observations go in, replica counts with their reasons come out.
The pipeline, per role, then per pool, then per file:

 1. needs       one Need per signal (decision/signals.py) and per extra policy (forecast, plug-ins)
 2. pending     while replicas are pending, stock signals (queue, latency) cannot ask for more:
                the queue that builds up during a GPU cold start is load the pending replicas will
                absorb, and scaling for it again is the cascade KEDA users see
 3. combine     scale-up: the largest want; otherwise scale-down to the largest `keep` (every
                source must agree, consolidation); missing data holds, partial data never lowers
 4. panic       a burst of `threshold` x ready replicas enters panic: up at once, never down
 5. stabilize   HPA windows: up = min over the up window, down = max over the down window
 6. rate limit  HPA Pods/Percent per period rules (lifted for scale-up in panic)
 7. bounds      min/max replicas
 8. coupling    ratio mode: prefill:decode = a:b exactly, the larger need wins, both bounds hold
 9. budget      GPU budget per pool, then across the file: only increases are trimmed; pools
                not decided this tick (paused, unobservable) count at their current size
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from autoscaler.decision import limiter, signals, stabilizer
from autoscaler.decision.state import RoleState, ScaleState
from autoscaler.policy.base import Policy, RoleContext
from autoscaler.spec import PolicyFile, PoolSpec, RoleSpec, ratio_unit_bounds
from autoscaler.types import (
    Clip,
    Clipped,
    Decision,
    Driver,
    DriverKind,
    Need,
    PoolDecision,
    PoolObservation,
    Role,
    RoleDecision,
    RoleObservation,
    Snapshot,
)

PolicyMap = Mapping[tuple[str, Role], Sequence[Policy]]


_time = operator.itemgetter(0)


@dataclass(slots=True)
class _Work:
    """Scratch for one role within one tick (mutable here, frozen in the result)."""

    pool: str
    role: Role
    spec: RoleSpec
    obs: RoleObservation
    prev: RoleState
    now: float
    needs: tuple[Need, ...] = ()
    raw: int = 0
    cause: Driver = field(default_factory=lambda: Driver(DriverKind.HOLD))
    desired: int = 0
    panic_until: float | None = None
    missing_since: float | None = None
    clips: list[Clipped] = field(default_factory=list)

    @property
    def current(self) -> int:
        return self.obs.replicas

    @property
    def ready_rose_at(self) -> float | None:
        """When the ready replicas last rose (this tick if they rose since the last one)."""
        prev = self.prev
        if prev.last_ready is not None and self.obs.ready > prev.last_ready:
            return self.now
        return prev.ready_rose_at

    @property
    def events(self) -> tuple[tuple[float, int], ...]:
        """Remembered scale events plus the change observed since the last tick (see RoleState)."""
        prev = self.prev
        if prev.last_replicas is None or prev.last_replicas == self.obs.replicas:
            return prev.events
        ours = prev.last_desired == self.obs.replicas and prev.last_at is not None
        at = prev.last_at if ours and prev.last_at is not None else self.now
        return (*prev.events, (at, self.obs.replicas - prev.last_replicas))

    @property
    def history(self) -> tuple[tuple[float, int], ...]:
        """The remembered recommendations; an empty state (first start, a new pool, a lost
        state object, taking over from an HPA) is seeded with the current replicas, as the HPA
        seeds its own: otherwise the first tick could drop straight past the down window."""
        if self.prev.last_at is None and not self.prev.recommendations:
            return ((self.now, self.obs.replicas),)
        return self.prev.recommendations

    def clip(self, value: int, why: Clip | None, detail: str = "") -> None:
        if why is not None and value != self.desired:
            self.clips.append(Clipped(why, detail))
        self.desired = value


def _cap_stock(
    needs: list[Need], obs: RoleObservation, why: str, *, windowed_only: bool
) -> tuple[list[Need], bool]:
    """Stock needs (or only the windowed ones) cannot push above the replicas requested."""
    capped = False
    out = []
    for n in needs:
        if n.stock and (n.windowed or not windowed_only) and n.want > obs.replicas:
            out.append(replace(n, want=obs.replicas, note=f"{n.note} capped: {why}".strip()))
            capped = True
        else:
            out.append(n)
    return out, capped


def _sane(n: Need) -> Need:
    """A policy kind's need within [0, MAX_WANT] replicas: a plug-in (or a forecast on absurd
    history) asking for 10**400 replicas must not overflow the arithmetic that follows."""
    if 0 <= n.want <= signals.MAX_WANT and 0 <= n.keep <= signals.MAX_WANT:
        return n
    want = min(max(n.want, 0), signals.MAX_WANT)
    keep = min(max(n.keep, 0), signals.MAX_WANT)
    note = f"{n.note} clamped: asked want {n.want} keep {n.keep}".strip()
    return replace(n, want=want, keep=keep, note=note)


def _combine(w: _Work, needs: list[Need], *, now: float) -> None:
    current = w.current
    present = [n for n in needs if n.value is not None]
    if not present:
        # Nothing to go by: hold (knative's invalid-scale, the HPA's missing metrics), and after
        # the configured time raise to the floor - never lower.
        w.missing_since = w.prev.missing_since if w.prev.missing_since is not None else now
        w.raw = current
        w.cause = Driver(DriverKind.MISSING_DATA)
        md = w.spec.missing_data
        if (
            md.floor_after_s is not None
            and md.floor_replicas is not None
            and now - w.missing_since >= md.floor_after_s
            and md.floor_replicas > current
        ):
            w.raw = md.floor_replicas
            w.cause = Driver(DriverKind.MISSING_DATA_FLOOR, missing_for_s=now - w.missing_since,
                             floor=md.floor_replicas)
        return
    w.missing_since = None
    ups = [n for n in needs if n.want > current]
    if ups:
        top = max(ups, key=lambda n: n.want)
        w.raw = top.want
        w.cause = Driver(DriverKind.SCALE_UP, top)
        return

    # Scale-down (or hold): every source must agree; the one allowing the fewest removals wins.
    # A source without trustworthy data (missing, partial) allows none.
    def allowed(n: Need) -> int:
        return current if n.blocks_down else min(n.keep, current)

    top = max(needs, key=allowed)
    w.raw = allowed(top)
    if w.raw == current:
        w.cause = Driver(DriverKind.HOLD, top)
    else:
        w.cause = Driver(DriverKind.SCALE_DOWN, top)


def _role_step(w: _Work, extra: Sequence[Policy], *, now: float) -> None:
    spec, obs = w.spec, w.obs
    needs: list[Need] = signals.signal_needs(spec, obs)
    silent: list[Need] = []
    if extra:
        ctx = RoleContext(pool=w.pool, role=w.role, spec=spec, obs=obs, now=now)
        for p in extra:
            got = [_sane(n) for n in p.needs(ctx)]
            needs.extend(got)
            # A policy kind that fell back (a forecast with short history, a failed fit) has
            # no value; say why in the decision reason, not only in the needs.
            silent.extend(n for n in got if n.value is None and n.note)
    capped = False
    cap_why = ""
    if spec.behavior.count_pending:
        settling = (
            w.ready_rose_at is not None and now - w.ready_rose_at < spec.behavior.stock_settle_s
        )
        if obs.pending > 0:
            cap_why = f"replicas pending ({obs.pending} will absorb it)"
            needs, capped = _cap_stock(needs, obs, cap_why, windowed_only=False)
        elif settling and w.ready_rose_at is not None:
            # A queue drains within seconds of new capacity; a latency quantile keeps the
            # burst's requests for its whole window: only the windowed needs wait.
            cap_why = f"replicas ready {now - w.ready_rose_at:.0f}s ago, latency window settling"
            needs, capped = _cap_stock(needs, obs, cap_why, windowed_only=True)
    w.needs = tuple(needs)
    _combine(w, needs, now=now)
    if capped and w.raw <= w.current:
        w.cause = w.cause.noted(cap_why)
    for n in silent:
        w.cause = w.cause.noted(f"{n.source}: {n.note}")
    w.desired = w.raw

    # Panic answers a surge of *flow* (work arriving faster than the ready replicas process
    # it). A queue or latency spike is a stock: a 10 s burst can queue hundreds of requests that
    # the ready replicas drain in seconds, long before any new replica could serve.
    panic_raw = w.raw
    if spec.behavior.stock_max_step is not None:
        flow = max((n.want for n in needs if not n.stock), default=w.current)
        panic_raw = min(w.raw, max(flow, w.current))
    w.panic_until = stabilizer.panic_until(
        raw=panic_raw,
        ready=obs.ready,
        behavior=spec.behavior,
        previous_until=w.prev.panic_until,
        now=now,
    )
    in_panic = w.panic_until is not None and w.panic_until > now
    value, why = stabilizer.stabilize(
        raw=w.raw,
        current=w.current,
        history=w.history,
        behavior=spec.behavior,
        in_panic=in_panic,
        now=now,
    )
    w.clip(value, why)
    value, why = limiter.rate_limit(
        w.desired, current=w.current, spec=spec, events=w.events, in_panic=in_panic, now=now
    )
    w.clip(value, why)
    value, why = limiter.bound(w.desired, spec)
    w.clip(value, why)


def _couple(pool: PoolSpec, works: Mapping[Role, _Work]) -> None:
    """Ratio mode: k units of (a prefill, b decode); the larger need wins; bounds hold."""
    if pool.coupling.mode != "ratio":
        return
    a, b = pool.coupling.prefill, pool.coupling.decode
    p, d = works[Role.PREFILL], works[Role.DECODE]
    lo, hi = ratio_unit_bounds(pool)
    k = min(max(math.ceil(p.desired / a), math.ceil(d.desired / b), lo), hi)
    p.clip(a * k, Clip.RATIO, f"{a}:{b}")
    d.clip(b * k, Clip.RATIO, f"{a}:{b}")


@dataclass(slots=True)
class _Mover:
    """A unit that a GPU budget can trim: a role (unit = 1 replica) or a ratio pair (unit = k)."""

    works: tuple[tuple[_Work, int], ...]  # (role work, replicas per unit)
    units: int
    floor: int
    gpus_per_unit: int

    def gpus(self) -> int:
        return self.units * self.gpus_per_unit

    def apply(self, why: Clip) -> None:
        for w, per in self.works:
            w.clip(self.units * per, why)


def _movers(pool: PoolSpec, works: Mapping[Role, _Work]) -> list[_Mover]:
    if pool.coupling.mode == "ratio":
        a, b = pool.coupling.prefill, pool.coupling.decode
        p, d = works[Role.PREFILL], works[Role.DECODE]
        lo, hi = ratio_unit_bounds(pool)
        k = p.desired // a
        # The smallest exact-ratio point that lowers neither role: a budget never scales down.
        k_hold = min(max(math.ceil(p.current / a), math.ceil(d.current / b), lo), hi)
        return [_Mover(((p, a), (d, b)), k, min(k, k_hold), pool.unit_gpus())]
    out = []
    for w in works.values():
        floor = max(min(w.current, w.desired), w.spec.min_replicas)
        out.append(_Mover(((w, 1),), w.desired, min(floor, w.desired), w.spec.gpus_per_replica))
    return out


def _trim(movers: list[_Mover], budget: int | None, why: Clip) -> None:
    """Remove granted increases, largest relative increase first, until the budget holds."""
    if budget is None:
        return
    total = sum(m.gpus() for m in movers)
    changed: set[int] = set()
    while total > budget:
        cands = [i for i, m in enumerate(movers) if m.units > m.floor]
        if not cands:
            break  # only current replicas exceed the budget; a budget never forces a scale-down
        i = max(cands, key=lambda j: (movers[j].units - movers[j].floor) / max(movers[j].floor, 1))
        movers[i].units -= 1
        total -= movers[i].gpus_per_unit
        changed.add(i)
    for i in changed:
        movers[i].apply(why)


def _prev(state: ScaleState, pool: str, role: Role, spec: RoleSpec, now: float) -> RoleState:
    """The role's memory with nothing dated in the future (a skewed clock; see
    RoleState.clamped), so no window outlasts its length after a restore."""
    return state.role(pool, role).clamped(now, panic_window_s=spec.behavior.panic.window_s)


def _held_gpus(pool: PoolSpec, snapshot: Snapshot, state: ScaleState) -> int:
    """GPUs a pool that is not decided this tick still holds: a paused pool's observed replicas
    (`snapshot.held`), a pool whose decision failed at its observed replicas, else an
    unobservable pool's replicas at its last observation, else its min_replicas (never
    observed: the least it can hold once the policy applies)."""
    held = snapshot.held.get(pool.name, {})
    observed = snapshot.pools.get(pool.name)
    total = 0
    for role, spec in pool.roles.items():
        replicas = held.get(role)
        if replicas is None and observed is not None and role in observed.roles:
            replicas = observed.roles[role].replicas  # observed, but its decision failed
        if replicas is None:
            replicas = state.role(pool.name, role).last_replicas
        if replicas is None:
            replicas = spec.min_replicas
        total += replicas * spec.gpus_per_replica
    return total


def _state(w: _Work, *, now: float) -> RoleState:
    b = w.spec.behavior
    keep_recs = max(b.scale_up.stabilization_window_s, b.scale_down.stabilization_window_s)
    periods = [r.period_s for r in (*b.scale_up.rules, *b.scale_down.rules)]
    keep_events = max(periods, default=0.0)
    # Time-ordered (RoleState): what is still inside its window is a suffix.
    recs = w.history[bisect.bisect_right(w.history, now - keep_recs, key=_time):]
    events = w.events[bisect.bisect_right(w.events, now - keep_events, key=_time):]
    return RoleState(
        recommendations=(*recs, (now, w.raw)) if keep_recs > 0 else (),
        events=events,
        panic_until=w.panic_until,
        missing_since=w.missing_since,
        last_replicas=w.current,
        last_desired=w.desired,
        last_at=now,
        last_ready=w.obs.ready,
        ready_rose_at=w.ready_rose_at,
    )


def decide(
    snapshot: Snapshot,
    state: ScaleState,
    policy: PolicyFile,
    *,
    now: float,
    policies: PolicyMap | None = None,
) -> tuple[Decision, ScaleState]:
    """One tick of decisions for every pool of `policy` observed in `snapshot`.

    A pool absent from the snapshot (or missing one of its roles) is left out of the decision
    and keeps its state: the caller could not observe it, so nothing is decided for it.
    """
    extra = policies or {}
    pool_works: list[tuple[PoolSpec, dict[Role, _Work]]] = []
    failed: dict[str, str] = {}
    for pool in policy.pools:
        pobs: PoolObservation | None = snapshot.pools.get(pool.name)
        if pobs is None or any(r not in pobs.roles for r in pool.roles):
            continue
        works = {
            role: _Work(pool.name, role, spec, pobs.roles[role], _prev(state, pool.name, role,
                                                                      spec, now), now)
            for role, spec in pool.roles.items()
        }
        try:
            for role, w in works.items():
                _role_step(w, extra.get((pool.name, role), ()), now=now)
            _couple(pool, works)
            pool_movers = _movers(pool, works)
            _trim(pool_movers, pool.gpu_budget, Clip.POOL_GPU_BUDGET)
        except Exception as exc:  # one pool's failure must not stop the others
            # Left undecided (no write, state kept), like an unobservable pool; the caller
            # reports it. Containment, not a cure: the cause still needs fixing.
            failed[pool.name] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        pool_works.append((pool, works))

    all_movers = [m for pool, works in pool_works for m in _movers(pool, works)]
    budget = policy.gpu_budget
    if budget is not None:
        decided = {pool.name for pool, _ in pool_works}
        budget -= sum(
            _held_gpus(pool, snapshot, state) for pool in policy.pools if pool.name not in decided
        )
    _trim(all_movers, budget, Clip.GPU_BUDGET)

    decisions: dict[str, PoolDecision] = {}
    new_pools: dict[str, dict[Role, RoleState]] = {p: dict(r) for p, r in state.pools.items()}
    for pool, works in pool_works:
        roles = {
            role: RoleDecision(
                role=role,
                current=w.current,
                ready=w.obs.ready,
                pending=w.obs.pending,
                recommended=w.raw,
                desired=w.desired,
                cause=w.cause,
                clips=tuple(dict.fromkeys(w.clips)),
                needs=w.needs,
                panic=w.panic_until is not None and w.panic_until > now,
            )
            for role, w in works.items()
        }
        decisions[pool.name] = PoolDecision(pool=pool.name, roles=roles, dry_run=policy.dry_run)
        new_pools[pool.name] = {role: _state(w, now=now) for role, w in works.items()}
    return Decision(at=now, pools=decisions, failed=failed), ScaleState(pools=new_pools)
