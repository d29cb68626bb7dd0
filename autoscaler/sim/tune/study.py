"""The objective, the Optuna study and its workers.

Objective: the fewest GPU-hours over the training windows, subject to SLO attainment (requests
meeting the SLO / all requests, over every training window) >= the target and scale reversals
<= a limit. Constraints go through Optuna's trial constraints (TPE samples from the feasible
trials' region instead of a penalty that would fold the two scales into one number). Each
trial's measurements are stored as user attributes, so any process reading the storage (another
machine, a resumed run, the report) sees the same figures without replaying.

Storage: in memory for one process; a journal file in a temporary directory for `--jobs N` on
one machine; an RDB URL (`postgresql://...`, `sqlite:///...`) for several machines and for
resuming: the study name is stable, `load_if_exists` continues it, and trials count towards
`--trials` in total, whoever ran them.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def feasible(attrs: dict[str, Any], problem: Problem) -> bool:
    return bool(
        attrs["attainment"] >= problem.target and attrs["reversals"] <= problem.max_reversals
    )


def suggest(trial: optuna.Trial, params: Sequence[space.Param]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in params:
        if p.integer:
            out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
        else:
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
    return out


def objective(problem: Problem) -> Any:
    def run(trial: optuna.Trial) -> float:
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
        trial.set_constraint("attainment", problem.target - s.attainment)
        trial.set_constraint("reversals", float(s.reversals - problem.max_reversals))
        return s.gpu_hours

    return run


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


def create_study(name: str, storage: BaseStorage | str | None, *, seed: int | None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # 8 random start-up trials (after the user's policy) before TPE models the results.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        direction="minimize",
        load_if_exists=True,
    )


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
        study = create_study(args.study, storage, seed=args.seed)
    if not study.trials:
        # The user's policy is the first trial: the tuned result can only match or beat it on
        # the training windows.
        study.enqueue_trial({p.name: p.clamp(p.default) for p in args.problem.params})
        for seed in args.seeds:
            study.enqueue_trial(seed)
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
        args.study, open_storage(args.storage, journal=args.journal), seed=args.seed
    )
    if not study.trials:
        study.enqueue_trial({p.name: p.clamp(p.default) for p in args.problem.params})
        for seed in args.seeds:
            study.enqueue_trial(seed)
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


def best(trials: Sequence[FrozenTrial], problem: Problem) -> tuple[FrozenTrial, bool]:
    """The cheapest feasible trial, else (no trial feasible) the highest attainment; and
    whether it is feasible."""
    ok = [t for t in trials if feasible(t.user_attrs, problem)]
    if ok:
        return min(ok, key=lambda t: (t.user_attrs["gpu_hours"], t.number)), True
    return max(
        trials, key=lambda t: (t.user_attrs["attainment"], -t.user_attrs["gpu_hours"])
    ), False
