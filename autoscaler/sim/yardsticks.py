"""Honest yardsticks for a backtest: what a fixed fleet and a clairvoyant schedule achieve.

The fluid oracle (`evaluate.oracle`) is a loose lower bound: no cold start, EDF order, work split
across replicas. These yardsticks are *achievable* on the same simulator, so a policy can be
judged against things that could really be run:

* **Static frontier**: for fixed fleets (P prefill, D decode replicas, or A aggregated), SLO
  attainment against GPU-hours. Each role is scanned alone, with the other role at a level big
  enough not to matter, one replay per level: `met_p[P]`, `met_d[D]` (per-request SLO verdicts).
  A fleet (P, D) is *estimated* as `met_p[P] & met_d[D]` (a request meets the SLO only if
  neither role made it miss); the estimate is optimistic where decode is short of KV and delays
  first tokens, so the fleets that matter are replayed jointly (`verified`).
* **best-static**: the cheapest fixed fleet whose joint replay reaches the attainment target
  (what a platform team without an autoscaler would run, sized with perfect knowledge of the
  trace).
* **hindsight**: a clairvoyant schedule that knows every future arrival but pays the real cold
  start. Per-bin miss tables come from the same fixed-fleet replays (`misses[m, n]`: requests
  arriving in bin m that miss at level n, above the both-roles-big baseline); a dynamic
  programme over bins picks a level per bin and role minimising GPU-hours + lambda x misses, where
  every added replica is billed its cold start (it is requested one cold start before its bin),
  and lambda is bisected until the misses fit the budget (1 - target) x requests. A verifying
  replay then runs the schedule on the simulator; if it falls short the budget is tightened by
  the shortfall, if it meets the goal with requests to spare it is loosened by the surplus, and
  the programme re-run (a few rounds, bisecting between a budget that met the goal and one that
  did not). The cheapest verified replay meeting the goal is what is reported.
  Misses the starting fleet cannot avoid before a replica requested at 0 is ready (estimated from
  the tables) are added to the budget: every run has them, and no schedule can buy them back.

Assumptions, stated: hindsight starts as the controller runs do, at min_replicas ready at 0, so
the minutes before a replica requested at 0 could serve stay at that floor (fixed fleets are warm
at their size from 0: that is what a fixed fleet is); a replica leaving drains its requests
(billed by the simulator); the per-bin tables come
from steady fixed fleets, so a schedule's transitions can differ (the verifying replay measures
the truth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from autoscaler.sim.engine import Simulation
from autoscaler.sim.evaluate import (
    SLO,
    Evaluation,
    Oracle,
    evaluate,
    judged_mask,
    request_outcome,
)
from autoscaler.types import Role

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from autoscaler.profile import Profile
    from autoscaler.sim.traces import Trace
    from autoscaler.spec import PoolSpec

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

BIN_S = 60.0
DRAIN_LIMIT_S = 3600.0
DEFAULT_TARGET = 0.99
# A role's scan stops once its misses above the both-big baseline are under this share of the
# miss budget: more replicas could save at most that many requests. A cut-off for computation,
# not a fitted constant: the schedule can use a level only where it saves requests.
SCAN_STOP_SHARE_OF_BUDGET = 0.1
# Hard cap on a role's scan (replicas), so a trace no fleet can serve still ends.
MAX_SCAN_LEVEL = 64
# Rounds of (programme, verifying replay) for hindsight.
HINDSIGHT_ROUNDS = 6
# A verified schedule meeting its goal by more than this share of the requests (and at least
# one request) is re-planned with the surplus added to its budget: the tables overstate the
# misses of a level entered from a higher one (they come from fleets at that level throughout,
# with the backlog that builds), so a plan can land well above its goal (a schedule for 94 %
# met 98.75 % on a bursty hour), and the yardstick is the cheapest schedule meeting it.
HINDSIGHT_SURPLUS_SHARE = 0.0005


@dataclass(frozen=True, slots=True)
class FleetPoint:
    """One fixed fleet: its replicas per role, GPU-hours over the horizon and attainment."""

    replicas: dict[Role, int]
    gpu_hours: float
    attainment: float
    verified: bool  # a joint replay, not the per-role estimate

    def label(self) -> str:
        short = {Role.PREFILL: "P", Role.DECODE: "D", Role.AGGREGATED: "A"}
        return "+".join(f"{n}{short[r]}" for r, n in self.replicas.items())


@dataclass(slots=True)
class Hindsight:
    """The clairvoyant schedule (per bin and role) and its verifying replay."""

    levels: dict[Role, IntArray]
    planned_misses: int
    budget: int
    sim: Simulation
    evaluation: Evaluation
    rounds: int
    forced_misses: int = 0  # in the first minutes, at the starting fleet (any run has them)


@dataclass(slots=True)
class HindsightPlan:
    """What hindsight is planned from, kept so that it can be re-planned for another
    attainment (`hindsight_at`) without replaying the fixed fleets again."""

    tables: dict[Role, tuple[list[int], IntArray]]
    per_bin: float
    cold: float
    fixed_bins: int
    forced: int
    base_misses: int
    n: int
    bin_s: float
    slo: SLO
    skip: tuple[tuple[float, float], ...] = ()  # spans not judged (`compute`)


@dataclass(slots=True)
class Yardsticks:
    """Static frontier, best-static and hindsight for one trace and pool."""

    target: float
    horizon_s: float
    levels: dict[Role, list[int]]
    frontier: list[FleetPoint]
    best_static: FleetPoint | None
    best_static_sim: Simulation | None
    hindsight: Hindsight | None
    replays: int
    trace: Trace
    pool: PoolSpec
    profile: Profile
    notes: list[str] = field(default_factory=list)
    routing: str = "least-loaded"
    plan: HindsightPlan | None = None

    def frontier_attainment_at(self, gpu_hours: float) -> float:
        """The best attainment of a frontier fleet costing at most `gpu_hours` (NaN if none)."""
        best = math.nan
        for p in self.frontier:
            if p.gpu_hours <= gpu_hours + 1e-9 and (math.isnan(best) or p.attainment > best):
                best = p.attainment
        return best


def static_simulation(
    trace: Trace,
    pool: PoolSpec,
    profile: Profile,
    replicas: dict[Role, int],
    *,
    routing: str = "least-loaded",
) -> Simulation:
    """A simulation of `trace` on a fixed fleet of `replicas` (no controller), not yet run. The
    trace's block hashes turn the replicas' prefix caches on, as in a controller run of the
    same trace (a yardstick without them would be judged on more prefill work than the policy
    it is compared with)."""
    sim = Simulation()
    sim.add_pool(
        pool.name,
        profile=profile,
        deployments={r: (s.deployment.namespace, s.deployment.name) for r, s in pool.roles.items()},
        arrival_s=trace.arrival_s,
        prompt_tokens=trace.prompt_tokens,
        output_tokens=trace.output_tokens,
        initial_replicas=replicas,
        block_hashes=trace.block_hashes,
        block_tokens=trace.block_tokens,
        routing=routing,
    )
    return sim


def replay_fixed(
    trace: Trace,
    pool: PoolSpec,
    profile: Profile,
    replicas: dict[Role, int],
    *,
    slo: SLO,
    horizon_s: float,
    routing: str = "least-loaded",
) -> tuple[Simulation, BoolArray]:
    """Replay `trace` on a fixed fleet (warm at 0) to the end; the simulation and each request's
    SLO verdict."""
    sim = static_simulation(trace, pool, profile, replicas, routing=routing)
    sim.advance_to(horizon_s)
    sim.run_until_idle(limit_s=DRAIN_LIMIT_S)
    met = request_outcome(sim.pool(pool.name).results(), profile, slo).met
    return sim, met


def replay_schedule(
    trace: Trace,
    pool: PoolSpec,
    profile: Profile,
    levels: dict[Role, IntArray],
    *,
    bin_s: float,
    horizon_s: float,
    routing: str = "least-loaded",
) -> Simulation:
    """Replay a per-bin schedule: each role serves `levels[role][m]` replicas in bin m; a replica
    is requested one cold start before the bin that needs it, so the spec count at t is the most
    any bin overlapping [t, t + cold start] needs; decreases happen at bin edges."""
    cs = profile.cold_start_s
    first = {r: int(v[0]) for r, v in levels.items()}
    sim = static_simulation(trace, pool, profile, first, routing=routing)
    nb = len(next(iter(levels.values())))
    # Change points: bin edges, and bin edges minus the cold start.
    edges = np.arange(nb + 1) * bin_s
    points = np.unique(np.clip(np.concatenate([edges, edges - cs]), 0.0, nb * bin_s))
    points = points[points < nb * bin_s]
    refs = {r: (s.deployment.namespace, s.deployment.name) for r, s in pool.roles.items()}
    for t in points.tolist():
        sim.advance_to(t)
        # A replica requested at t serves from t + cs: it must be there for every bin from
        # t's to the one t + cs falls in (a bin starting exactly at t + cs included).
        lo = int(t // bin_s)
        hi = max(lo, min(nb - 1, int((t + cs + 1e-9) // bin_s)))
        for role, v in levels.items():
            sim.scale(refs[role], int(v[lo : hi + 1].max()), reason="hindsight schedule")
    sim.advance_to(max(horizon_s, sim.now))
    sim.run_until_idle(limit_s=DRAIN_LIMIT_S)
    return sim


def _bin_misses(miss: BoolArray, bins: IntArray, nbins: int) -> IntArray:
    out: IntArray = np.bincount(bins[miss], minlength=nbins).astype(np.int64)
    return out


def schedule_dp(
    cost_per_bin: float,
    cold_start_cost: float,
    levels: list[int],
    misses: IntArray,
    lam: float,
    *,
    fixed_bins: int = 0,
    widths: FloatArray | None = None,
) -> tuple[IntArray, int]:
    """One role's levels per bin minimising sum(n x cost_per_bin + lam x misses[m, n]) + every
    increase x cold_start_cost. `misses[m, j]` is bin m's misses at levels[j]; the first
    `fixed_bins` bins stay at levels[0] (the fleet at time 0, before any replica requested at 0
    can be ready). With `widths`, step m stands for widths[m] bins (a block whose level is
    held throughout, `plan_hindsight`) and is billed as many. Returns the level per step and
    the misses planned."""
    nb, nl = misses.shape
    lv = np.asarray(levels, dtype=np.float64)
    w = np.ones(nb) if widths is None else widths
    unit = lv * cost_per_bin
    up = np.maximum(lv[None, :] - lv[:, None], 0.0) * cold_start_cost  # [from, to]
    barred = np.full(nl, np.inf)
    barred[0] = 0.0
    best = unit * w[0] + lam * misses[0] + (barred if fixed_bins > 0 else 0.0)
    arg = np.zeros((nb, nl), dtype=np.int64)
    for m in range(1, nb):
        trans = best[:, None] + up  # from j to k
        arg[m] = np.argmin(trans, axis=0)
        best = trans[arg[m], np.arange(nl)] + unit * w[m] + lam * misses[m]
        if m < fixed_bins:
            best = best + barred
    pick = np.zeros(nb, dtype=np.int64)
    pick[-1] = int(np.argmin(best))
    for m in range(nb - 1, 0, -1):
        pick[m - 1] = arg[m, pick[m]]
    planned = int(misses[np.arange(nb), pick].sum())
    out: IntArray = np.asarray(levels, dtype=np.int64)[pick]
    return out, planned


def plan_hindsight(
    tables: dict[Role, tuple[list[int], IntArray]],
    *,
    budget: int,
    cost_per_bin: float,
    cold_start_cost: float,
    fixed_bins: int = 0,
    block_bins: int = 1,
) -> tuple[dict[Role, IntArray], int]:
    """The cheapest per-bin schedule over all roles whose planned misses fit `budget`: bisect
    the price of a miss (lambda) in the joint programme (roles separate given lambda).

    `block_bins` > 1 lets the fleet change only every that many bins after the fixed start:
    each block's misses are summed and one level is held through it. That is a schedule that
    knows each block's load but not when inside it the bursts come (a 15-minute block is
    about what a forecast of the next quarter-hour knows). Its misses are summed per block, so
    the price bisection moves in coarser steps and can stop further below the budget; `_trim`
    then lowers blocks while the misses fit. Still a heuristic: an upper bound on the cheapest
    such schedule."""
    nb = next(iter(tables.values()))[1].shape[0]
    if block_bins > 1:
        starts = sorted({*range(min(fixed_bins, nb)), *range(min(fixed_bins, nb), nb, block_bins)})
        widths = np.diff(np.append(starts, nb)).astype(np.float64)
        steps = {
            r: (lv, np.add.reduceat(m, starts, axis=0).astype(np.int64))
            for r, (lv, m) in tables.items()
        }
    else:
        widths = None
        steps = tables

    def solve(lam: float) -> tuple[dict[Role, IntArray], int]:
        out: dict[Role, IntArray] = {}
        total = 0
        for role, (levels, misses) in steps.items():
            out[role], k = schedule_dp(
                cost_per_bin,
                cold_start_cost,
                levels,
                misses,
                lam,
                fixed_bins=fixed_bins,
                widths=widths,
            )
            total += k
        return out, total

    lo, hi = 0.0, 1.0
    sched, k = solve(hi)
    while k > budget and hi < 1e9:
        lo, hi = hi, hi * 4.0
        sched, k = solve(hi)
    if k <= budget:
        best = (sched, k)
        for _ in range(40):
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 2.0
            s, km = solve(mid)
            if km <= budget:
                hi, best = mid, (s, km)
            else:
                lo = mid
            if hi - lo <= 1e-4 * hi:
                break
        sched, k = best
    # else: even the biggest levels miss more: the best there is.
    if widths is None:
        return sched, k
    sched, k = _trim(
        steps, sched, budget=budget, used=k, cost_per_bin=cost_per_bin,
        cold_start_cost=cold_start_cost, widths=widths, fixed_bins=fixed_bins,
    )  # fmt: skip
    reps = widths.astype(np.int64)
    return {r: np.repeat(v, reps) for r, v in sched.items()}, k


def _trim(
    steps: dict[Role, tuple[list[int], IntArray]],
    sched: dict[Role, IntArray],
    *,
    budget: int,
    used: int,
    cost_per_bin: float,
    cold_start_cost: float,
    widths: FloatArray,
    fixed_bins: int,
) -> tuple[dict[Role, IntArray], int]:
    """Lower one block by one level at a time while the misses still fit the budget, the
    largest saving per added miss first. A blocked schedule's misses move in block-sized steps,
    so the price bisection can stop well below the budget: two equal blocks reach the same price
    together and drop together, past the budget, so both stay up; or, on code-2x, a 5-minute
    schedule cost more than the 15-minute one it could have copied. This spends what is left."""
    idx = {r: [steps[r][0].index(int(v)) for v in sched[r]] for r in steps}
    while True:
        best: tuple[float, Role, int, int] | None = None
        for role, (levels, misses) in steps.items():
            pk = idx[role]
            for m in range(min(fixed_bins, len(pk)), len(pk)):
                j = pk[m]
                if j == 0:
                    continue
                added = int(misses[m, j - 1] - misses[m, j])
                if used + added > budget:
                    continue
                a, b = levels[j], levels[j - 1]
                saving = (a - b) * cost_per_bin * float(widths[m])
                if m > 0:  # the cold starts billed into this block
                    prev = levels[pk[m - 1]]
                    saving += (max(a - prev, 0) - max(b - prev, 0)) * cold_start_cost
                if m + 1 < len(pk):  # and out of it
                    nxt = levels[pk[m + 1]]
                    saving += (max(nxt - a, 0) - max(nxt - b, 0)) * cold_start_cost
                if saving <= 1e-12:
                    continue
                score = saving / (added + 1e-9)
                if best is None or score > best[0]:
                    best = (score, role, m, added)
        if best is None:
            break
        _, role, m, added = best
        idx[role][m] -= 1
        used += added
    out = {r: np.asarray([steps[r][0][j] for j in pk], dtype=np.int64) for r, pk in idx.items()}
    return out, used


def compute(
    trace: Trace,
    pool: PoolSpec,
    profile: Profile,
    *,
    slo: SLO,
    horizon_s: float,
    orc: Oracle,
    target: float = DEFAULT_TARGET,
    bin_s: float = BIN_S,
    verify_frontier: int = 3,
    with_hindsight: bool = True,
    on_replay: Callable[[str], None] | None = None,
    routing: str = "least-loaded",
    skip: Sequence[tuple[float, float]] = (),
) -> Yardsticks:
    """Scan each role's fixed-fleet levels, build the static frontier, find best-static, plan and
    verify hindsight. `verify_frontier`: how many frontier fleets around best-static are
    replayed jointly (the rest stay per-role estimates). `skip`: spans [a, b) not judged (the
    backtest's warm-up, one per window of windows joined back to back): requests arriving in
    them neither count nor miss, GPU-time in them is not billed."""
    skip = tuple((float(a), float(b)) for a, b in skip)
    judged = judged_mask(trace.arrival_s, skip)
    n = int(judged.sum())
    nb = max(1, round(horizon_s / bin_s))
    bins = np.minimum((trace.arrival_s // bin_s).astype(np.int64), nb - 1)
    roles = list(pool.roles)
    floor = {r: max(1, pool.roles[r].min_replicas) for r in roles}
    budget_all = math.floor((1.0 - target) * n + 1e-9)
    # "Big": twice what the fluid bound's no-miss fleet asks for at its busiest minute, plus 2,
    # so the other role is not what makes requests miss while one role is scanned.
    big = {r: max(floor[r], 2 * int(orc.replicas[r].max()) + 2) for r in roles}
    strict = orc.all_requests_gpu_hours  # only for a note
    replays = 0

    def replay(reps: dict[Role, int]) -> tuple[Simulation, BoolArray]:
        nonlocal replays
        replays += 1
        if on_replay is not None:
            on_replay("+".join(f"{v}{r.value[0].upper()}" for r, v in reps.items()))
        sim, m = replay_fixed(
            trace, pool, profile, reps, slo=slo, horizon_s=horizon_s, routing=routing
        )
        # Warm-up requests count as met: they neither miss nor spend the budget (the
        # attainments below are taken over the judged ones, `att`).
        return sim, m | ~judged

    def att(m: BoolArray) -> float:
        return float(m[judged].mean()) if n else math.nan

    _, base_met = replay(big)
    base_miss = ~base_met
    base_misses = int(base_miss.sum())
    budget = max(0, budget_all - base_misses)
    met: dict[Role, dict[int, BoolArray]] = {r: {} for r in roles}
    for role in roles:
        lvl = floor[role]
        while True:
            reps = dict(big)
            reps[role] = lvl
            _, m = replay(reps) if lvl != big[role] else (None, base_met)
            met[role][lvl] = m
            extra = int((~m & base_met).sum())
            if extra <= SCAN_STOP_SHARE_OF_BUDGET * max(budget, 1) or lvl >= MAX_SCAN_LEVEL:
                break
            lvl += 1
    levels = {r: sorted(met[r]) for r in roles}
    gpu = profile.gpus_per_replica
    skipped_s = sum(max(0.0, min(b, horizon_s) - max(a, 0.0)) for a, b in skip)
    hours = max(horizon_s - skipped_s, 0.0) / 3600.0

    def cost(reps: dict[Role, int]) -> float:
        return sum(reps.values()) * gpu * hours

    # Estimated static frontier: every combination of scanned levels.
    cands: list[FleetPoint] = []
    if len(roles) == 1:
        r0 = roles[0]
        for lv in levels[r0]:
            reps = {r0: lv}
            a = att(met[r0][lv])
            cands.append(FleetPoint(reps, cost(reps), a, verified=False))
    else:
        ra, rb = roles
        for la in levels[ra]:
            for lb in levels[rb]:
                reps = {ra: la, rb: lb}
                a = att(met[ra][la] & met[rb][lb])
                cands.append(FleetPoint(reps, cost(reps), a, verified=False))
    cands.sort(key=lambda p: (p.gpu_hours, -p.attainment))
    frontier: list[FleetPoint] = []
    for p in cands:
        if not frontier or p.attainment > frontier[-1].attainment + 1e-12:
            if frontier and abs(frontier[-1].gpu_hours - p.gpu_hours) < 1e-12:
                continue
            frontier.append(p)
    # Verify: walk up the frontier from the first estimate reaching the target until a joint
    # replay reaches it (best-static), then verify up to `verify_frontier` fleets below it.
    best: FleetPoint | None = None
    best_sim: Simulation | None = None
    start = next((i for i, p in enumerate(frontier) if p.attainment >= target), None)
    if start is not None:
        for i in range(start, len(frontier)):
            sim, m = replay(frontier[i].replicas)
            a = att(m)
            frontier[i] = FleetPoint(frontier[i].replicas, frontier[i].gpu_hours, a, True)
            if a >= target:
                best, best_sim = frontier[i], sim
                lo_i = max(0, i - verify_frontier)
                for j in range(lo_i, i):
                    _, mj = replay(frontier[j].replicas)
                    p = frontier[j]
                    frontier[j] = FleetPoint(p.replicas, p.gpu_hours, att(mj), True)
                break
    # A verified point may now sit below an estimated one of lower cost: keep the frontier
    # monotone by dropping points dominated after verification.
    frontier.sort(key=lambda p: p.gpu_hours)
    mono: list[FleetPoint] = []
    for p in frontier:
        while mono and mono[-1].attainment <= p.attainment and mono[-1].gpu_hours == p.gpu_hours:
            mono.pop()
        if not mono or p.attainment > mono[-1].attainment:
            mono.append(p)
    notes = [
        f"per-role scans: {', '.join(f'{r.value} {levels[r][0]}..{levels[r][-1]}' for r in roles)}"
        f" with the other role at {', '.join(f'{r.value} {big[r]}' for r in roles)}; "
        f"{base_misses} requests miss even then (fluid no-miss bound {strict:.2f} GPU-h)"
    ]
    hs: Hindsight | None = None
    plan: HindsightPlan | None = None
    if with_hindsight:
        tables: dict[Role, tuple[list[int], IntArray]] = {}
        base_bins = _bin_misses(base_miss, bins, nb)
        for role in roles:
            cols = [
                np.maximum(_bin_misses(~met[role][lv], bins, nb) - base_bins, 0)
                for lv in levels[role]
            ]
            tables[role] = (levels[role], np.stack(cols, axis=1))
        # The schedule starts where every controller run starts, at min_replicas (ready at 0):
        # a replica requested at 0 serves from the cold start on, so the bins before that stay
        # at the floor (the scans start at the floor, so levels[0] is it).
        fixed_bins = math.ceil(profile.cold_start_s / bin_s - 1e-9)
        plan = HindsightPlan(
            tables=tables,
            per_bin=gpu * bin_s / 3600.0,
            cold=gpu * profile.cold_start_s / 3600.0,
            fixed_bins=fixed_bins,
            # Misses in those first bins are forced on every run that starts at the floor: they
            # do not spend the budget (else an infeasible start would push every later bin to
            # the top).
            forced=sum(int(t[1][:fixed_bins, 0].sum()) for t in tables.values()),
            base_misses=base_misses,
            n=n,
            bin_s=bin_s,
            slo=slo,
            skip=skip,
        )
        hs, k = _plan_and_verify(
            plan, trace, pool, profile, target=target, horizon_s=horizon_s, routing=routing,
            on_replay=on_replay,
        )  # fmt: skip
        replays += k
    return Yardsticks(
        target=target,
        horizon_s=horizon_s,
        levels=levels,
        frontier=mono,
        best_static=best,
        best_static_sim=best_sim,
        hindsight=hs,
        replays=replays,
        trace=trace,
        pool=pool,
        profile=profile,
        notes=notes,
        routing=routing,
        plan=plan,
    )


def _plan_and_verify(
    plan: HindsightPlan,
    trace: Trace,
    pool: PoolSpec,
    profile: Profile,
    *,
    target: float,
    horizon_s: float,
    routing: str,
    on_replay: Callable[[str], None] | None = None,
    block_bins: int = 1,
) -> tuple[Hindsight, int]:
    """Plan the cheapest schedule whose misses fit (1 - target) x requests and verify it by
    replay (up to HINDSIGHT_ROUNDS rounds): a shortfall tightens the budget by the requests
    short, a surplus of more than HINDSIGHT_SURPLUS_SHARE loosens it by the requests to spare,
    and once one budget met the goal and another did not the next is their midpoint. Returns
    the cheapest verified schedule meeting the goal (the last one if none did) and the replays
    it took. `block_bins`: as `plan_hindsight`."""
    budget = max(0, math.floor((1.0 - target) * plan.n + 1e-9) - plan.base_misses)
    b = budget + plan.forced
    goal = target - plan.forced / max(plan.n, 1)
    slack = max(1, math.floor(HINDSIGHT_SURPLUS_SHARE * plan.n))
    best: Hindsight | None = None
    last: Hindsight | None = None
    met_b: int | None = None  # the largest budget whose schedule met the goal
    short_b: int | None = None  # the smallest budget whose schedule fell short
    tried: set[int] = set()
    replays = 0
    for rnd in range(1, HINDSIGHT_ROUNDS + 1):
        tried.add(b)
        sched, planned = plan_hindsight(
            plan.tables,
            budget=b,
            cost_per_bin=plan.per_bin,
            cold_start_cost=plan.cold,
            fixed_bins=plan.fixed_bins,
            block_bins=block_bins,
        )
        # A loosened budget often plans the levels already verified (lumpy tables: no level
        # frees that many requests); the simulator is deterministic, so that replay is reused.
        same = next((h for h in (last, best) if h is not None and _same(h.levels, sched)), None)
        if same is not None:
            sim, ev = same.sim, same.evaluation
        else:
            if on_replay is not None:
                on_replay("hindsight")
            sim = replay_schedule(
                trace, pool, profile, sched, bin_s=plan.bin_s, horizon_s=horizon_s,
                routing=routing,
            )  # fmt: skip
            ev = evaluate(
                sim, pool.name, slo=plan.slo, end_s=horizon_s, with_oracle=False, skip=plan.skip
            )
            replays += 1
        last = Hindsight(sched, planned, b, sim, ev, rnd, plan.forced)
        if ev.slo_attainment >= goal:
            if best is None or ev.gpu_hours < best.evaluation.gpu_hours - 1e-12:
                best = last
            met_b = b if met_b is None else max(met_b, b)
            spare = math.floor((ev.slo_attainment - goal) * plan.n + 1e-9)
            if spare < slack:
                break
            nxt = b + spare if short_b is None else (b + short_b) // 2
        else:
            if b == 0:
                break
            short_b = b if short_b is None else min(short_b, b)
            short = math.ceil((goal - ev.slo_attainment) * plan.n - 1e-9)
            nxt = max(0, b - short) if met_b is None else (met_b + b) // 2
        if nxt in tried:
            break
        b = nxt
    chosen = best or last
    assert chosen is not None
    return chosen, replays


def _same(a: dict[Role, IntArray], b: dict[Role, IntArray]) -> bool:
    """Whether two schedules hold the same levels in every bin of every role."""
    return a.keys() == b.keys() and all(np.array_equal(a[r], b[r]) for r in a)


def hindsight_at(
    ys: Yardsticks, attainment: float, *, block_s: float | None = None
) -> Hindsight | None:
    """The hindsight schedule re-planned for another measured attainment (a policy's own, to
    compare GPU-hours at equal attainment), from the miss tables `compute` kept: no fixed fleet
    is replayed again, only the schedule's verifying replays. None without hindsight.

    `block_s`: the fleet may change only every block_s seconds (whole bins) after the start
    (`plan_hindsight`): what the clairvoyant schedule costs when it knows each block's load
    but not the timing of the bursts inside it."""
    if ys.plan is None or not 0.0 < attainment <= 1.0:
        return None
    block_bins = 1 if block_s is None else max(1, round(block_s / ys.plan.bin_s))
    # The attainment asked for is a measured one, forced misses included (every run has them);
    # the planner's target leaves them out of its budget, so they are added back.
    target = min(attainment + ys.plan.forced / max(ys.plan.n, 1), 1.0 - 1e-9)
    hs, _ = _plan_and_verify(
        ys.plan, ys.trace, ys.pool, ys.profile, target=target, horizon_s=ys.horizon_s,
        routing=ys.routing, block_bins=block_bins,
    )  # fmt: skip
    return hs
