"""The objectives, the Optuna study and its workers.

Two objectives (`--objective`), both over the training windows, with attainment = requests
meeting the SLO / all requests, pooled over every training window:

* `target` (the default): the fewest GPU-hours subject to attainment >= the target and scale
  reversals <= a limit. One objective (GPU-hours) with the two limits as Optuna trial
  constraints (TPE samples from the feasible trials' region instead of a penalty that would fold
  the two scales into one number). Where the input policy misses the target, this buys the
  target with GPU-hours, so its winner can never be Pareto-better than a cheaper input.
* `pareto`: the winner must dominate the input policy (trial 0, always enqueued first):
  attainment >= the input's and GPU-hours <= the input's, with reversals <= the limit. Among the
  trials that strictly dominate it, the highest attainment capped at the target (min(att,
  target): a user below their SLO is served first, and above it attainment buys nothing), then
  the fewest GPU-hours; if none does, the input itself. This is two objectives (maximise capped
  attainment, minimise GPU-hours) given to Optuna's multi-objective TPE, with the dominance and
  reversal limits as trial constraints. Multi-objective rather than one scalar: the
  lexicographic winner is always on the Pareto front of (capped attainment, GPU-hours), which
  is exactly what multi-objective TPE models, whereas any single number mixing the two would
  need a weight between a percentage and GPU-hours that no user has stated. The reference (the
  input's training score) must exist before any other trial's constraints can be computed; the
  parent process establishes it before workers start (`establish_reference`).

Each trial's measurements are stored as user attributes, so any process reading the storage
(another machine, a resumed run, the report) sees the same figures without replaying.

Storage: in memory for one process; a journal file in a temporary directory for `--jobs N` on
one machine; an RDB URL (`postgresql://...`, `sqlite:///...`) for several machines and for
resuming: the study name is stable (and names the objective, whose directions a study keeps),
`load_if_exists` continues it, and trials count towards `--trials` in total, whoever ran them.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from autoscaler import errors
from autoscaler.profile import Profile
from autoscaler.sim import backtest
from autoscaler.sim.tune import space
from autoscaler.sim.tune.windows import Window
from autoscaler.spec import PolicyFile

# An RDB worker beats every 30 s; a trial with no beat for 120 s (its worker died) is marked
# failed by the next worker that starts a trial, so a resumed study does not wait on it.
HEARTBEAT_S = 30
GRACE_S = 120
# Opening an RDB storage: tries, 0.5 s more apart each time (5 s in all).
OPEN_ATTEMPTS = 5

# Rounding slack when comparing GPU-hour sums (see `best`): 1e-9 GPU-h is 3.6 GPU-microseconds.
GPU_HOURS_SLACK = 1e-9

Objective = Literal["target", "pareto"]
OBJECTIVES: tuple[Objective, ...] = ("target", "pareto")
# The study attribute naming its objective: a resumed study must not mix them.
OBJECTIVE_ATTR = "objective"


@dataclass(frozen=True, slots=True)
class Score:
    """A policy over a set of windows: pooled attainment, summed GPU-hours and reversals."""

    attainment: float
    gpu_hours: float
    reversals: int
    requests: int
    per_window: tuple[tuple[float, float, int], ...]  # (attainment, GPU-h, reversals)

    def as_attrs(self) -> dict[str, Any]:
        return {
            "attainment": self.attainment,
            "gpu_hours": self.gpu_hours,
            "reversals": self.reversals,
            "requests": self.requests,
            "per_window": [list(w) for w in self.per_window],
        }


def score(
    policy: PolicyFile,
    windows: Sequence[Window],
    *,
    profile: Profile,
    config: backtest.ReplayConfig,
) -> Score:
    """Replay `policy` on each window (the backtest's controller run) and pool the results."""
    met = 0.0
    n = 0
    gpu = 0.0
    rev = 0
    per: list[tuple[float, float, int]] = []
    with backtest.quiet_logs():
        for w in windows:
            run = backtest.run_controller(
                f"window{w.index}",
                policy,
                w.trace,
                profile=profile,
                config=config,
                horizon_s=backtest.horizon_of(w.trace),
            )
            ev = run.evaluation
            met += ev.slo_attainment * ev.requests
            n += ev.requests
            gpu += ev.gpu_hours
            rev += ev.reversals
            per.append((ev.slo_attainment, ev.gpu_hours, ev.reversals))
    return Score(met / n if n else math.nan, gpu, rev, n, tuple(per))


@dataclass(frozen=True, slots=True)
class Problem:
    """Everything a worker process needs (picklable): the policy document and its space, the
    training windows, the replay set-up and the limits."""

    doc: dict[str, Any]
    params: tuple[space.Param, ...]
    train: tuple[Window, ...]
    profile: Profile
    config: backtest.ReplayConfig
    target: float
    max_reversals: int
    source: str
    objective: Objective = "target"
    # `pareto`: the input policy's training (attainment, GPU-hours), as trial 0 measured it (or,
    # when another machine holds trial 0, as this process measured the same replay).
    reference: tuple[float, float] | None = None


def dominates_or_equals(attrs: dict[str, Any], reference: tuple[float, float]) -> bool:
    """At least the reference's attainment for at most its GPU-hours (equal GPU-hours up to the
    rounding of their sums, `GPU_HOURS_SLACK`)."""
    return bool(
        attrs["attainment"] >= reference[0] and attrs["gpu_hours"] <= reference[1] + GPU_HOURS_SLACK
    )


def feasible(attrs: dict[str, Any], problem: Problem) -> bool:
    """The objective's constraints hold (for `pareto`: the trial is at least as good as the
    input policy on both axes, and within the reversal limit)."""
    if attrs["reversals"] > problem.max_reversals:
        return False
    if problem.objective == "pareto":
        assert problem.reference is not None, "pareto needs the input's reference score"
        return dominates_or_equals(attrs, problem.reference)
    return bool(attrs["attainment"] >= problem.target)


def suggest(trial: optuna.Trial, params: Sequence[space.Param]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in params:
        if p.integer:
            out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
        else:
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
    return out


def input_params(problem: Problem) -> dict[str, float]:
    """The input policy as a trial's parameters (trial 0's, enqueued)."""
    return space.inputs(problem.params)


def evaluate(trial: optuna.Trial, problem: Problem) -> float | tuple[float, float]:
    """Replay the trial's candidate, store its measurements and constraints, return its
    objective value(s). `pareto` with no reference yet (`establish_reference`): if the trial is
    the input policy, the reference is its own score; else a replay of the input here."""
    values = suggest(trial, problem.params)
    doc = space.apply(problem.doc, problem.params, values)
    try:
        policy = space.validate(doc, source=problem.source)
    except errors.ConfigError as exc:
        # A combination the schema rejects (e.g. a floor above the ceiling): not a result.
        trial.set_user_attr("invalid", exc.problems)
        raise optuna.TrialPruned(exc.problems[0]) from exc
    s = score(policy, problem.train, profile=problem.profile, config=problem.config)
    for k, v in s.as_attrs().items():
        trial.set_user_attr(k, v)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    # Optuna's constraints (<= 0 is satisfied): TPE then models the feasible trials apart.
    if problem.objective == "target":
        trial.set_constraint("attainment", problem.target - s.attainment)
        trial.set_constraint("reversals", float(s.reversals - problem.max_reversals))
        return s.gpu_hours
    ref_att, ref_gpu = problem.reference or (
        (s.attainment, s.gpu_hours) if values == input_params(problem) else _replay_input(problem)
    )
    # What this trial's dominance constraints were computed against.
    trial.set_user_attr("reference", [ref_att, ref_gpu])
    trial.set_constraint("reversals", float(s.reversals - problem.max_reversals))
    trial.set_constraint("attainment_vs_input", ref_att - s.attainment)
    trial.set_constraint("gpu_hours_vs_input", s.gpu_hours - ref_gpu)
    return min(s.attainment, problem.target), s.gpu_hours


def objective(problem: Problem) -> Any:
    def run(trial: optuna.Trial) -> float | tuple[float, float]:
        return evaluate(trial, problem)

    return run


def enqueue_first(
    st: optuna.Study, params: Sequence[space.Param], seeds: Sequence[dict[str, float]]
) -> bool:
    """A new study's first trials: the user's policy exactly (trial 0: the tuned result can
    only match or beat it on the training windows), then the seeds. False: the study already
    had trials (resumed, or another worker made it)."""
    if st.trials:
        return False
    st.enqueue_trial(space.inputs(params))
    for seed in seeds:
        st.enqueue_trial(seed)
    return True


def input_policy(problem: Problem) -> PolicyFile:
    return space.validate(problem.doc, source=problem.source)


def establish_reference(st: optuna.Study, problem: Problem) -> tuple[float, float]:
    """The input policy's training (attainment, GPU-hours), for `pareto`'s constraints, before
    any worker samples. The input's completed trial when the study holds one (a resumed study);
    else this process runs the input as a trial here: trial 0 if it is waiting, or the input
    enqueued again if trial 0 failed (its worker died). If another machine holds trial 0 (it is
    running, or took it between two reads), this process replays the input policy on the same
    windows, which the deterministic simulator measures as that trial does."""
    complete = st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    inp = input_trial(complete, problem)
    if inp is not None:
        return float(inp.user_attrs["attainment"]), float(inp.user_attrs["gpu_hours"])
    first = next((t for t in st.get_trials(deepcopy=False) if t.number == 0), None)
    if first is None or first.state == TrialState.RUNNING:
        return _replay_input(problem)
    if first.state != TrialState.WAITING:
        st.enqueue_trial(input_params(problem))
    trial = st.ask()
    try:
        told = st.tell(trial, evaluate(trial, problem))
    except optuna.TrialPruned:  # not the input (which is valid): a sampled trial, rejected
        st.tell(trial, state=TrialState.PRUNED)
        return _replay_input(problem)
    ref = told.user_attrs["reference"]
    return float(ref[0]), float(ref[1])


def _replay_input(problem: Problem) -> tuple[float, float]:
    s = score(input_policy(problem), problem.train, profile=problem.profile, config=problem.config)
    return s.attainment, s.gpu_hours


def open_storage(url: str | None, *, journal: str | None = None) -> BaseStorage | str | None:
    """An RDB URL -> RDBStorage with heartbeats (dead workers' trials are failed, not waited
    on); a journal path -> the multi-process file journal; neither -> in memory (None)."""
    if url:
        # Workers starting together on an empty database race to create Optuna's tables (one
        # gets a unique violation on alembic_version); the loser retries and finds them made.
        for attempt in range(OPEN_ATTEMPTS):
            try:
                return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
            except Exception as exc:  # any driver/connection error: name the scheme and why
                if attempt + 1 < OPEN_ATTEMPTS:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                scheme = url.split(":", 1)[0]
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise errors.ConfigError([f"--storage {scheme}://...: cannot open: {why}"]) from exc
    if journal:
        return JournalStorage(JournalFileBackend(journal))
    return None


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def create_study(
    name: str,
    storage: BaseStorage | str | None,
    *,
    seed: int | None,
    objective: Objective = "target",
) -> optuna.Study:
    """Create or continue the study `name`; a study made for the other objective is refused by
    name (its trials' values and constraints mean something else)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # 8 random start-up trials (after the user's policy) before TPE models the results; with
    # two directions the same sampler is Optuna's multi-objective TPE.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)
    directions: list[Literal["minimize", "maximize"]] = (
        ["minimize"] if objective == "target" else ["maximize", "minimize"]
    )
    try:
        st = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            directions=directions,
            load_if_exists=True,
        )
    except ValueError as exc:  # Optuna refusing to load it with other directions
        raise errors.ConfigError([f"study {name}: cannot continue it as --objective "
                                  f"{objective}: {exc}"]) from exc  # fmt: skip
    # A study from before objectives were named was a `target` one (one direction).
    had = st.user_attrs.get(OBJECTIVE_ATTR, "target" if len(st.directions) == 1 else "pareto")
    if had != objective or len(st.directions) != len(directions):
        raise errors.ConfigError(
            [f"study {name} was made with --objective {had}; it cannot continue as --objective "
             f"{objective} (give another --study, or the same objective)"]
        )  # fmt: skip
    if OBJECTIVE_ATTR not in st.user_attrs:
        st.set_user_attr(OBJECTIVE_ATTR, objective)
    return st


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    problem: Problem
    study: str
    storage: str | None
    journal: str | None
    trials: int
    seed: int | None
    progress: bool
    # A progress bar instead of per-trial lines (one process, stderr a terminal).
    bar: bool = False
    # Trials run first, after the user's policy (e.g. the training windows' best fixed fleet
    # as a policy: tune.fleet_seeds).
    seeds: tuple[dict[str, float], ...] = ()


def work(args: WorkerArgs, study: optuna.Study | None = None) -> int:
    """Run trials until the study holds `trials` completed ones (counted across every worker,
    past runs included). Returns how many this worker completed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if study is None:
        storage = open_storage(args.storage, journal=args.journal)
        study = create_study(args.study, storage, seed=args.seed, objective=args.problem.objective)
    enqueue_first(study, args.problem.params, args.seeds)
    done = len(completed(study))
    if done >= args.trials:
        return 0
    mine = [0]
    start = time.monotonic()
    label = f"{socket.gethostname()}:{os.getpid()}"
    bar = _Bar(args.trials, done) if args.progress and args.bar else None

    def stop_when_full(st: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            mine[0] += 1
        total = len(completed(st))
        if bar is not None:
            bar.update(total, trial)
        elif args.progress and trial.state == TrialState.COMPLETE:
            a = trial.user_attrs
            print(
                f"tune: [{label}] trial {trial.number}: {100 * a['attainment']:.2f} % "
                f"{a['gpu_hours']:.2f} GPU-h {a['reversals']} reversals; "
                f"{min(total, args.trials)}/{args.trials} done, {time.monotonic() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        if total >= args.trials:
            st.stop()

    # The bound on this worker's own attempts keeps a study whose every trial is invalid from
    # looping forever.
    try:
        study.optimize(
            objective(args.problem),
            n_trials=3 * args.trials,
            callbacks=[stop_when_full],
            gc_after_trial=False,
        )
    finally:
        if bar is not None:
            bar.close()
    return mine[0]


class _Bar:
    """A rich progress bar of completed trials (one process on a terminal); worker processes
    print lines instead, since several bars on one terminal overwrite each other."""

    def __init__(self, total: int, done: int) -> None:
        from rich.console import Console  # noqa: PLC0415 - rich only when a bar is shown
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        self.total = total
        self.progress = Progress(
            TextColumn("tune"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} trials {task.fields[best]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("tune", total=total, completed=done, best="")
        self.best = math.inf

    def update(self, total: int, trial: FrozenTrial) -> None:
        a = trial.user_attrs
        if (
            trial.state == TrialState.COMPLETE
            and trial.constraints
            and all(v <= 0 for v in trial.constraints.values())
        ):
            self.best = min(self.best, float(a["gpu_hours"]))
        best = f"(best feasible {self.best:.2f} GPU-h)" if math.isfinite(self.best) else ""
        self.progress.update(self.task, completed=min(total, self.total), best=best)

    def close(self) -> None:
        self.progress.__exit__(None, None, None)


def _work_in_process(args: WorkerArgs) -> int:
    return work(args)


def run_workers(args: WorkerArgs, jobs: int) -> None:
    """`jobs` processes (spawned: no state inherited from this one) on the same study."""
    if jobs <= 1:
        work(args)
        return
    ctx = multiprocessing.get_context("spawn")
    seeds = [None if args.seed is None else args.seed + i for i in range(jobs)]
    # The first trial is enqueued once, here, before any worker samples.
    study = create_study(
        args.study,
        open_storage(args.storage, journal=args.journal),
        seed=args.seed,
        objective=args.problem.objective,
    )
    enqueue_first(study, args.problem.params, args.seeds)
    with ctx.Pool(jobs) as pool:
        pool.map(
            _work_in_process,
            [
                WorkerArgs(
                    args.problem,
                    args.study,
                    args.storage,
                    args.journal,
                    args.trials,
                    s,
                    args.progress,
                )
                for s in seeds
            ],
        )


def input_trial(
    trials: Sequence[FrozenTrial], problem: Problem | None = None
) -> FrozenTrial | None:
    """Among `trials`: trial 0 (the input, enqueued first), else (it failed and the input was
    run again) the earliest with the input's parameters."""
    ordered = sorted(trials, key=lambda t: t.number)
    first = next((t for t in ordered if t.number == 0), None)
    if first is not None or problem is None:
        return first
    inp = input_params(problem)
    return next((t for t in ordered if t.params == inp), None)


def pareto_key(attrs: dict[str, Any], target: float) -> tuple[float, float]:
    """`pareto`'s order among the trials dominating the input (larger is better): attainment
    capped at the target first, then fewer GPU-hours."""
    return min(float(attrs["attainment"]), target), -float(attrs["gpu_hours"])


def best(trials: Sequence[FrozenTrial], problem: Problem) -> tuple[FrozenTrial, bool]:
    """The chosen trial, and whether it meets the objective.

    `target`: the cheapest feasible trial, else (none feasible) the highest attainment.
    `pareto`: among the trials strictly dominating the input (>= its attainment, <= its
    GPU-hours, one of them strictly: more attainment, or at least one GPU-tick fewer GPU-hours;
    reversals within the limit), the highest capped
    attainment, then the fewest GPU-hours, then the earliest; else (none dominates) the input,
    trial 0. The reference is trial 0's measurement when the study holds it."""
    if problem.objective == "pareto":
        first = input_trial(trials, problem)
        ref = (
            (float(first.user_attrs["attainment"]), float(first.user_attrs["gpu_hours"]))
            if first is not None
            else problem.reference
        )
        if ref is None:
            raise errors.ConfigError(["--objective pareto: the input's trial 0 has no result"])
        problem = replace(problem, reference=ref)
        # Cheaper only counts by at least one GPU for one controller tick, the least a decision
        # can change: below that the difference is when a replay's pods happened to start (a
        # code-day trial 0.00004 GPU-h cheaper on training with equal attainment was chosen and
        # then lost on both axes held out). More attainment is at least one request.
        # GPU-hours are sums of replicas x tick / 3600 in floating point: exactly one tick fewer
        # can land a few 1e-16 above `ref - tick` (31 and 30 ticks of 15 s do) and would then not
        # count. The slack is far below a tick and far above the rounding of any sum replayed.
        less = problem.config.tick_s / 3600.0 - GPU_HOURS_SLACK
        better = [
            t
            for t in trials
            if feasible(t.user_attrs, problem)
            and (t.user_attrs["attainment"] > ref[0] or t.user_attrs["gpu_hours"] <= ref[1] - less)
        ]
        if better:
            return max(
                better, key=lambda t: (*pareto_key(t.user_attrs, problem.target), -t.number)
            ), True
        if first is None:
            raise errors.ConfigError(
                ["--objective pareto: no trial dominated the input policy, and no trial of the "
                 "input has completed (another worker may still run it): run again to resume"]
            )  # fmt: skip
        return first, False
    ok = [t for t in trials if feasible(t.user_attrs, problem)]
    if ok:
        return min(ok, key=lambda t: (t.user_attrs["gpu_hours"], t.number)), True
    return max(
        trials, key=lambda t: (t.user_attrs["attainment"], -t.user_attrs["gpu_hours"])
    ), False
