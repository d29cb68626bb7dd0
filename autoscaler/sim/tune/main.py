"""`pd-autoscaler tune`: the command. Loads, splits, searches, then measures the chosen policy
beside the user's policy, keda-queue and best-static on the training and the held-out windows,
and writes the tuned YAML (with the measurements as its header), a table and a plot."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoscaler import errors
from autoscaler.policy.load import parse_policy
from autoscaler.profile import Profile
from autoscaler.sim import backtest, baselines, yardsticks
from autoscaler.sim.evaluate import judged_mask, oracle, warmup_spans
from autoscaler.sim.traces import Trace, load_trace
from autoscaler.sim.tune import space, study
from autoscaler.sim.tune.options import REVERSALS_PER_HOUR
from autoscaler.sim.tune.windows import Split, Window, joined, split
from autoscaler.spec import PolicyFile
from autoscaler.types import Role
from autoscaler.yamlsafe import load_yaml

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_INVALID = 2

# "Worse on held-out" (said plainly): attainment more than half a point below training's, or
# the target met on training and missed held out.
WORSE_ATTAINMENT = 0.005


@dataclass(frozen=True, slots=True)
class Row:
    """One policy's result on training and on held-out windows."""

    name: str
    train: study.Score | None
    held_out: study.Score | None
    note: str = ""


@dataclass(slots=True)
class Result:
    tuned_doc: dict[str, Any]
    values: dict[str, float]
    params: list[space.Param]
    unsearched: list[str]
    feasible: bool
    rows: list[Row]
    trials: list[dict[str, Any]]
    split: Split
    study_name: str
    target: float
    max_reversals: int
    train_frontier: list[yardsticks.FleetPoint] = field(default_factory=list)
    tune_wall_s: float = 0.0
    held_out_frontier: list[yardsticks.FleetPoint] = field(default_factory=list)
    objective: study.Objective = "target"
    # `pareto`: the input policy's training (attainment, GPU-hours) the winner had to dominate.
    reference: tuple[float, float] | None = None

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    @property
    def worse_held_out(self) -> str | None:
        """Why the tuned policy's held-out result is worse than its training one, or None."""
        r = self.row("tuned")
        if r.train is None or r.held_out is None:
            return None
        tr, ho = r.train, r.held_out
        reasons = []
        if tr.attainment >= self.target > ho.attainment:
            reasons.append(
                f"attainment {100 * ho.attainment:.2f} % held out misses the {100 * self.target:g}"
                f" % target it met on training ({100 * tr.attainment:.2f} %)"
            )
        elif ho.attainment < tr.attainment - WORSE_ATTAINMENT:
            reasons.append(
                f"attainment {100 * ho.attainment:.2f} % held out vs {100 * tr.attainment:.2f} % "
                "on training"
            )
        return "; ".join(reasons) or None


def _best_fleet(frontier: list[yardsticks.FleetPoint], target: float) -> dict[Role, int] | None:
    """The cheapest verified fixed fleet reaching `target` (best-static), or None."""
    ok = [p for p in frontier if p.verified and p.attainment >= target]
    return dict(min(ok, key=lambda p: p.gpu_hours).replicas) if ok else None


def _fleet_within(
    frontier: list[yardsticks.FleetPoint], gpu_hours: float
) -> dict[Role, int] | None:
    """The most attaining verified fixed fleet costing no more than `gpu_hours` (the input
    policy's, for `pareto`: the one fixed fleet that can dominate it), or None."""
    ok = [p for p in frontier if p.verified and p.gpu_hours <= gpu_hours]
    return dict(max(ok, key=lambda p: (p.attainment, -p.gpu_hours)).replicas) if ok else None


def _static_score(
    windows: tuple[Window, ...],
    width_s: float,
    pool: PolicyFile,
    profile: Profile,
    config: backtest.ReplayConfig,
    *,
    with_hindsight: bool,
) -> tuple[Row | None, Row | None, list[yardsticks.FleetPoint]]:
    """best-static (and hindsight) on the windows joined back to back: a fixed fleet carries no
    state across a window boundary."""
    tr = joined(windows, width_s)
    _, spec = backtest.single_pool(pool)
    horizon = len(windows) * width_s
    horizon = max(horizon, backtest.horizon_of(tr))
    orc = oracle(
        tr.arrival_s,
        tr.prompt_tokens,
        tr.output_tokens,
        profile,
        disaggregated=Role.AGGREGATED not in spec.roles,
        slo=config.slo,
        bin_s=backtest.BIN_S,
        attainment=config.target,
    )
    # Each window is judged from its warm-up on, as the policy's own replays of it are.
    skip = warmup_spans([k * width_s for k in range(len(windows))], config.warmup_s)
    ys = yardsticks.compute(
        tr,
        spec,
        profile,
        slo=config.slo,
        horizon_s=horizon,
        orc=orc,
        target=config.target,
        with_hindsight=with_hindsight,
        skip=skip,
    )
    n = int(judged_mask(tr.arrival_s, skip).sum())
    bs = None
    if ys.best_static is not None:
        p = ys.best_static
        bs = Row("best-static", None, study.Score(p.attainment, p.gpu_hours, 0, n, ()), p.label())
    hs = None
    if ys.hindsight is not None:
        ev = ys.hindsight.evaluation
        hs = Row(
            "hindsight", None, study.Score(ev.slo_attainment, ev.gpu_hours, ev.reversals, n, ())
        )
    return bs, hs, ys.frontier


def fleet_seeds(
    params: list[space.Param], policy: PolicyFile, fleet: dict[Role, int]
) -> tuple[list[space.Param], tuple[dict[str, float], ...]]:
    """The fixed fleet `fleet` as trials of the search: every role's floor (`min_replicas`) at
    the fleet's count, once with the policy's own targets and once with every target at the top
    of its range (the policy then rarely scales above the floor: about the fixed fleet, with
    the controller's protection against bursts beyond it). A floor's range widens to the fleet
    where the role's ceiling allows. Without these trials a search of a few dozen trials can end
    costlier than a fixed fleet on its own training windows (issue 15's table: code-2x, long-1h)."""
    _, spec = backtest.single_pool(policy)
    want: dict[str, float] = {}
    out: list[space.Param] = []
    for p in params:
        role = next((r for r in fleet if p.name == f"{r.value}.min_replicas"), None)
        if role is None:
            out.append(p)
            continue
        n = min(fleet[role], spec.roles[role].max_replicas)
        out.append(dataclasses.replace(p, high=max(p.high, n)))
        want[p.name] = n
    if not want:
        return params, ()
    base = space.inputs(out)
    at_floor = {**base, **want}
    targets_high = {
        **at_floor,
        **{p.name: p.high for p in out if p.name.endswith(".target")},
    }
    return out, (at_floor, targets_high)


# Parameters at whose low end a policy scales above its floor least: the slo kind's sizing quantile
# and burst headroom. (A reactive signal target's "least" end is its high one: fleet_seeds.)
_LEAN_LOW = (".attainment", ".burst_memory_s", ".burst_shape_memory_s")


def _lean(params: list[space.Param], seed: dict[str, float]) -> dict[str, float]:
    """`seed` (a fixed fleet as the floor) with the controller as lean as the space allows:
    reactive targets at the top, the slo kind's quantile and burst memories at the bottom. About
    the fixed fleet itself, with the controller left for what exceeds it."""
    out = dict(seed)
    for p in params:
        if p.name.endswith(".target"):
            out[p.name] = p.high
        elif p.name.endswith(_LEAN_LOW):
            out[p.name] = p.low
    return out


def _pareto_seeds(
    params: list[space.Param], policy: PolicyFile, fleet: dict[Role, int]
) -> tuple[dict[str, float], ...]:
    """`fleet` as floors (fleet_seeds' two trials) and the same at the leanest controller;
    within the search's ranges, distinct ones only (a kind without `.target` parameters, e.g.
    slo, makes fleet_seeds' two the same)."""
    seeds = _clamped(params, fleet_seeds(params, policy, fleet)[1])
    if not seeds:
        return ()
    every = (*seeds, _lean(params, seeds[0]))
    return tuple(dict(t) for t in dict.fromkeys(tuple(sorted(x.items())) for x in every))


def _clamped(
    params: list[space.Param], seeds: tuple[dict[str, float], ...]
) -> tuple[dict[str, float], ...]:
    """Seeds within the search's ranges (fixed before trial 0 ran, so a seed chosen after it
    cannot widen them)."""
    by = {p.name: p for p in params}
    return tuple({k: by[k].clamp(v) for k, v in s.items()} for s in seeds)


def study_name_for(
    trace: Path, policy_text: str, folds: int, target: float, objective: study.Objective
) -> str:
    """Stable for the same inputs (a rerun resumes), different for another objective (a study
    keeps its directions and constraints; the two must not mix)."""
    key = f"{trace.resolve()}|{policy_text}|{folds}|{target}|{objective}"
    h = hashlib.sha256(key.encode()).hexdigest()
    return f"tune-{trace.stem}-{objective}-{h[:10]}"


def tune(
    trace: Trace,
    policy_text: str,
    *,
    source: str,
    profile: Profile,
    config: backtest.ReplayConfig,
    folds: int = 2,
    trials: int = 40,
    jobs: int = 1,
    storage: str | None = None,
    study_name: str = "tune",
    max_reversals: int | None = None,
    seed: int | None = 0,
    yardsticks_on: bool = True,
    hindsight: bool = False,
    progress: bool = False,
    objective: study.Objective = "target",
) -> Result:
    """Search, choose, and measure (the command without its I/O)."""
    policy = parse_policy(policy_text, source=source)
    doc = space.materialise(load_yaml(policy_text, source=source), policy)
    parts = split(trace, folds)
    if config.warmup_s >= parts.window_s:
        msg = (
            f"{source}: --warmup-s {config.warmup_s:g} leaves nothing of each "
            f"{parts.window_s:g} s window to judge (use fewer --folds or a shorter warm-up)"
        )
        raise errors.ConfigError([msg])
    params, unsearched = space.search_space(policy)
    frontier: list[yardsticks.FleetPoint] = []
    bs_tr: Row | None = None
    seeds: tuple[dict[str, float], ...] = ()
    if yardsticks_on:
        # The training windows' best fixed fleet, first: it seeds the search (fleet_seeds).
        bs_tr, _, frontier = _static_score(
            parts.train, parts.window_s, policy, profile, config, with_hindsight=False
        )
        best_fleet = _best_fleet(frontier, config.target)
        if best_fleet is not None:
            params, seeds = fleet_seeds(params, policy, best_fleet)
    hours = len(parts.train) * parts.window_s / 3600.0
    limit = max_reversals if max_reversals is not None else math.ceil(REVERSALS_PER_HOUR * hours)
    problem = study.Problem(
        doc=doc,
        params=tuple(params),
        train=parts.train,
        profile=profile,
        config=config,
        target=config.target,
        max_reversals=limit,
        source=source,
        objective=objective,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pd-tune-") as tmp:
        journal = None if storage or jobs <= 1 else str(Path(tmp) / "journal.log")
        st = study.create_study(
            study_name, study.open_storage(storage, journal=journal), seed=seed,
            objective=objective,
        )  # fmt: skip
        if objective == "target":
            study.enqueue_first(st, params, seeds)
        else:
            new = study.enqueue_first(st, params, ())
            # Before any worker samples: every other trial's constraints are relative to it.
            ref = study.establish_reference(st, problem)
            problem = dataclasses.replace(problem, reference=ref)
            # best-static costs more than an input below the target, so it cannot dominate it;
            # the fixed fleet that can is the most attaining one within the input's GPU-hours.
            fleet = _fleet_within(frontier, ref[1]) if yardsticks_on else None
            seeds = () if fleet is None else _pareto_seeds(params, policy, fleet)
            if new:
                for s in seeds:
                    st.enqueue_trial(s)
        args = study.WorkerArgs(
            problem, study_name, storage, journal, trials, seed, progress,
            bar=progress and jobs <= 1 and sys.stderr.isatty(), seeds=seeds,
        )  # fmt: skip
        if jobs <= 1:
            study.work(args, st)
        else:
            study.run_workers(args, jobs)
            st = study.create_study(
                study_name, study.open_storage(storage, journal=journal), seed=seed,
                objective=objective,
            )  # fmt: skip
        done = study.completed(st)
    wall = time.perf_counter() - t0
    if not done:
        raise errors.ConfigError([f"{source}: no trial completed (every candidate was invalid)"])
    chosen, ok = study.best(done, problem)
    first = study.input_trial(done, problem)
    if objective == "pareto" and first is not None:
        # The reference the choice was made against: trial 0's own measurement.
        problem = dataclasses.replace(
            problem,
            reference=(float(first.user_attrs["attainment"]), float(first.user_attrs["gpu_hours"])),
        )
    tuned_doc = space.apply(doc, params, dict(chosen.params))
    # As written (rounded), for the header's "changed" line.
    values = {
        p.name: space.written(p, chosen.params[p.name]) for p in params if p.name in chosen.params
    }
    tuned = space.validate(tuned_doc, source="tuned policy")
    _, spec = backtest.single_pool(policy)
    keda = baselines.keda_queue_policy(policy, spec.name)
    a = chosen.user_attrs
    tuned_train = study.Score(
        a["attainment"],
        a["gpu_hours"],
        a["reversals"],
        a["requests"],
        tuple(tuple(w) for w in a["per_window"]),
    )

    def both(pol: PolicyFile) -> tuple[study.Score, study.Score]:
        return (
            study.score(pol, parts.train, profile=profile, config=config),
            study.score(pol, parts.held_out, profile=profile, config=config),
        )

    d_tr, d_ho = both(policy)
    k_tr, k_ho = both(keda)
    rows = [
        Row(
            "tuned", tuned_train, study.score(tuned, parts.held_out, profile=profile, config=config)
        ),
        Row("input policy", d_tr, d_ho, source),
        Row("keda-queue", k_tr, k_ho),
    ]
    ho_frontier: list[yardsticks.FleetPoint] = []
    if yardsticks_on:
        bs_ho, hs_ho, ho_frontier = _static_score(
            parts.held_out, parts.window_s, policy, profile, config, with_hindsight=hindsight
        )
        rows.append(
            Row(
                "best-static",
                bs_tr.held_out if bs_tr else None,
                bs_ho.held_out if bs_ho else None,
                f"train {bs_tr.note if bs_tr else 'none reached the target'}; "
                f"held-out {bs_ho.note if bs_ho else 'none reached the target'}",
            )
        )
        if hs_ho is not None:
            rows.append(Row("hindsight", None, hs_ho.held_out, "held-out windows only"))
    table = [
        {
            "number": t.number,
            "worker": t.user_attrs.get("worker", ""),
            **{k: t.user_attrs[k] for k in ("attainment", "gpu_hours", "reversals")},
            "feasible": study.feasible(t.user_attrs, problem),
            "chosen": t.number == chosen.number,
            "params": dict(t.params),
        }
        for t in done
    ]
    return Result(
        tuned_doc=tuned_doc,
        values=values,
        params=params,
        unsearched=unsearched,
        feasible=ok,
        rows=rows,
        trials=table,
        split=parts,
        study_name=study_name,
        target=config.target,
        max_reversals=limit,
        train_frontier=frontier,
        tune_wall_s=wall,
        held_out_frontier=ho_frontier,
        objective=objective,
        reference=problem.reference,
    )


def _cell(s: study.Score | None) -> str:
    if s is None:
        return "-"
    return f"{100 * s.attainment:6.2f} % {s.gpu_hours:7.2f} GPU-h {s.reversals:3d} rev"


def table_lines(res: Result) -> list[str]:
    w = res.split.window_s / 60
    lines = [
        f"windows: {len(res.split.train)} training, {len(res.split.held_out)} held-out, "
        f"{w:.0f} min each (training {', '.join(x.label for x in res.split.train)}; held-out "
        f"{', '.join(x.label for x in res.split.held_out)})",
        f"{'policy':<14} {'training':<32} {'held-out':<32}",
    ]
    for r in res.rows:
        lines.append(f"{r.name:<14} {_cell(r.train):<32} {_cell(r.held_out):<32} {r.note}")
    return lines


def objective_line(res: Result) -> str:
    if res.objective == "pareto":
        ref = res.reference
        at = f" ({100 * ref[0]:.2f} %, {ref[1]:.2f} GPU-h)" if ref is not None else ""
        return (
            "objective: pareto: dominate the input policy on the training windows"
            f"{at}: attainment >= and GPU-h <= its own; among those, the highest attainment "
            f"capped at {100 * res.target:g} %, then the fewest GPU-h"
        )
    return (
        f"objective: target: the fewest GPU-h with attainment >= {100 * res.target:g} % on the "
        "training windows"
    )


def _verdict(res: Result) -> str:
    if res.feasible:
        return ""
    if res.objective == "pareto":
        return " (no trial dominated the input policy: the input is kept)"
    return " (NO trial met the constraints: the most attaining shown)"


def header(res: Result, *, trace: str, config: backtest.ReplayConfig) -> str:
    slo = config.slo
    out = [
        "Tuned by `pd-autoscaler tune` (docs/tune.md). Measured on the simulator:",
        f"  trace: {trace}",
        f"  SLO: TTFT <= max({slo.ttft_floor_s:g} s, {slo.ttft_slowdown:g} x idle prefill), mean"
        f" ITL <= {slo.itl_mean_s * 1000:g} ms; target attainment {100 * res.target:g} %, "
        f"reversals <= {res.max_reversals} on the training windows",
        *(
            [f"  each window judged from {config.warmup_s:g} s on (--warmup-s)"]
            if config.warmup_s > 0
            else []
        ),
        "  " + objective_line(res),
        f"  study {res.study_name}: {len(res.trials)} trials, chosen trial "
        + str(next(t["number"] for t in res.trials if t["chosen"]))
        + _verdict(res),
        *("  " + line for line in table_lines(res)),
    ]
    worse = res.worse_held_out
    out.append(
        f"  HELD-OUT WORSE THAN TRAINING: {worse}"
        if worse
        else "  held-out result not worse than training"
    )
    if res.unsearched:
        out.append("  not searched (no search space for the kind): " + ", ".join(res.unsearched))
    changed = [
        f"{p.name} {p.default:g} -> {res.values[p.name]:g}"
        for p in res.params
        if p.name in res.values and not math.isclose(res.values[p.name], p.default)
    ]
    out.append(
        "  changed: " + ", ".join(changed)
        if changed
        else "  changed: nothing (the input policy was the best trial)"
    )
    return "".join(f"# {line}\n" for line in out)


def plot(res: Result, path: Path) -> Path | None:
    """Trials' training attainment vs GPU-h, the static frontier, the input policy and
    keda-queue; None when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: PLC0415 - the sim extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    ok = [t for t in res.trials if t["feasible"]]
    bad = [t for t in res.trials if not t["feasible"]]
    ax.scatter(
        [t["gpu_hours"] for t in bad],
        [100 * t["attainment"] for t in bad],
        s=14,
        c="0.6",
        label="trials (constraints not met)",
    )
    ax.scatter(
        [t["gpu_hours"] for t in ok],
        [100 * t["attainment"] for t in ok],
        s=14,
        c="tab:blue",
        label="trials (constraints met)",
    )
    if res.train_frontier:
        fr = res.train_frontier
        ax.step(
            [p.gpu_hours for p in fr],
            [100 * p.attainment for p in fr],
            where="post",
            c="tab:green",
            label="static frontier (fixed fleets)",
        )
    for name, marker, colour in (
        ("tuned", "*", "tab:red"),
        ("input policy", "D", "black"),
        ("keda-queue", "s", "tab:orange"),
    ):
        s = res.row(name).train
        if s is not None:
            ax.scatter(
                [s.gpu_hours],
                [100 * s.attainment],
                marker=marker,
                s=90,
                c=colour,
                label=name,
                zorder=5,
            )
    ax.axhline(100 * res.target, ls="--", c="0.4", lw=0.8)
    if res.objective == "pareto" and res.reference is not None:
        # The quadrant up-left of the input policy: trials there dominate it.
        ref_att, ref_gpu = 100 * res.reference[0], res.reference[1]
        xs = [t["gpu_hours"] for t in res.trials] + [ref_gpu]
        ax.fill_between(
            [min(xs) * 0.95, ref_gpu],
            ref_att,
            100.2,
            color="tab:blue",
            alpha=0.08,
            label="dominates the input policy",
        )
        ax.axvline(ref_gpu, c="black", lw=0.6, ls=":")
        ax.axhline(ref_att, c="black", lw=0.6, ls=":")
    shown = [r.train for r in res.rows if r.name in ("tuned", "input policy", "keda-queue")]
    lows = [100 * t["attainment"] for t in res.trials] + [100 * res.target - 1]
    lows += [100 * s.attainment for s in shown if s is not None]
    ax.set_ylim(max(0.0, min(lows) - 1), 100.2)
    ax.set_xlabel("GPU-hours (training windows)")
    ax.set_ylabel("SLO attainment, % (training windows)")
    ax.set_title(
        f"pd-autoscaler tune ({res.objective}): {len(res.trials)} trials, study {res.study_name}"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args: argparse.Namespace) -> int:
    try:
        import optuna  # noqa: F401, PLC0415 - only to fail early with the install hint
    except ImportError:
        print(
            "tune: needs optuna: install the simulator extra, pip install 'pd-autoscaler[sim]'",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        profile = backtest.resolve_profile_arg(args.profile)
        config = backtest._config(args)  # the backtest's flags, the backtest's meaning
        backtest.check_output(args.out, "--out")
        plot_out = args.plot if args.plot is not None else args.out.with_suffix(".png")
        backtest.check_output(plot_out, "--plot")
        if args.trials < 1 or args.jobs < 1:
            raise errors.ConfigError(
                [f"--trials {args.trials} and --jobs {args.jobs} must be >= 1"]
            )
        try:
            text = Path(args.policy).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.ConfigError([f"{args.policy}: cannot read: {exc}"]) from exc
        policy = parse_policy(text, source=str(args.policy))
        backtest.check_profile([(str(args.policy), policy)], profile)
        trace = load_trace(args.trace)
        name = args.study or study_name_for(
            Path(args.trace), text, args.folds, config.target, args.objective
        )
        print(
            f"tune: study {name} (objective {args.objective}, {args.trials} trials, "
            f"{args.jobs} process(es)" + (", storage given" if args.storage else "") + ")",
            file=sys.stderr,
        )
        res = tune(
            trace,
            text,
            source=str(args.policy),
            profile=profile,
            config=config,
            folds=args.folds,
            trials=args.trials,
            jobs=args.jobs,
            storage=args.storage,
            study_name=name,
            max_reversals=args.max_reversals,
            seed=args.seed,
            yardsticks_on=not args.no_yardsticks,
            hindsight=args.hindsight,
            progress=not args.no_progress,
            objective=args.objective,
        )
    except errors.ConfigError as exc:
        for line in exc.problems:
            print(f"tune: {line}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:  # e.g. a request longer than the profile's KV capacity
        print(f"tune: {exc}", file=sys.stderr)
        return EXIT_INVALID
    head = header(res, trace=str(args.trace), config=config)
    body = yaml.safe_dump(res.tuned_doc, sort_keys=False, default_flow_style=None, width=100)
    # The written file must load as it will be used.
    parse_policy(head + body, source=str(args.out))
    try:
        Path(args.out).write_text(head + body, encoding="utf-8")
        drawn = plot(res, Path(plot_out))
    except OSError as exc:
        print(f"tune: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAIL
    print(head, end="")
    print(
        f"tune: search {res.tune_wall_s:.1f} s wall; tuned policy: {args.out}"
        + (f"; plot: {drawn}" if drawn else "; no plot (matplotlib not installed)")
    )
    worse = res.worse_held_out
    if worse:
        print(
            f"tune: WARNING: the held-out result is worse than the training one: {worse}",
            file=sys.stderr,
        )
    return EXIT_OK
