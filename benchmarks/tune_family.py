"""Does `pd-autoscaler tune` help? The tuned policy against the untuned default on each workload
of the decision family (benchmarks/decision_family.py), on held-out windows.

For each member: `tune` (autoscaler.sim.tune.main.tune) with the default policy, `--folds`
windows (even ones train, odd ones are held out), `--trials` trials and `--jobs` workers; then,
on the held-out windows only, one row: the default's and the tuned policy's SLO attainment and
GPU-hours, the static frontier's attainment at the tuned policy's GPU-hours (the best fixed
fleet costing no more, replayed on the same held-out windows), and two verdicts:

* **Pareto-better than the default**: attainment >= and GPU-hours <= the default's, one of
  them strictly (by more than 0.01 point / 0.005 GPU-h, below which the difference is noise of
  the rounding);
* **not below the frontier**: attainment >= the frontier's at the same GPU-hours.

`--objective` is `tune`'s: `target` (fewest GPU-hours at the target attainment on the training
windows) or `pareto` (a policy dominating the default on the training windows; see
autoscaler/sim/tune/study.py). It also prints the search's and the whole tune's wall time.
Members and sets are decision_family.py's; day-long members take many minutes per trial on a
shared machine.

    .venv/bin/python benchmarks/tune_family.py [--set dev|day|held-out|all] [--only NAME ...]
        [--trials 20] [--folds 2] [--jobs 1] [--objective target|pareto] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from autoscaler.profile import builtin
from autoscaler.sim import backtest
from autoscaler.sim.tune.main import Result, tune
from autoscaler.sim.yardsticks import FleetPoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decision_family import MEMBERS

ROOT = Path(__file__).resolve().parents[1]
POLICY = backtest.default_policy_path()
ATT_EPS = 1e-4
GPU_EPS = 0.005


def frontier_at(points: list[FleetPoint], gpu_hours: float) -> float:
    best = math.nan
    for p in points:
        if p.gpu_hours <= gpu_hours + 1e-9 and (math.isnan(best) or p.attainment > best):
            best = p.attainment
    return best


def verdicts(res: Result) -> dict[str, Any]:
    tuned = res.row("tuned").held_out
    default = res.row("input policy").held_out
    t_tr, d_tr = res.row("tuned").train, res.row("input policy").train
    assert tuned is not None
    assert default is not None
    d_att = tuned.attainment - default.attainment
    d_gpu = tuned.gpu_hours - default.gpu_hours
    pareto = d_att >= -ATT_EPS and d_gpu <= GPU_EPS and (d_att > ATT_EPS or d_gpu < -GPU_EPS)
    front = frontier_at(res.held_out_frontier, tuned.gpu_hours)
    return {
        "default": [default.attainment, default.gpu_hours, default.reversals],
        "tuned": [tuned.attainment, tuned.gpu_hours, tuned.reversals],
        "frontier_at_tuned_gpu_hours": front,
        "pareto_better": pareto,
        "not_below_frontier": math.isnan(front) or tuned.attainment >= front - ATT_EPS,
        "tuned_values": res.values,
        "feasible": res.feasible,
        "search_wall_s": round(res.tune_wall_s, 1),
        "objective": res.objective,
        # Training windows: what the search saw (pareto: the input's score is the reference).
        "train_default": [d_tr.attainment, d_tr.gpu_hours] if d_tr else None,
        "train_tuned": [t_tr.attainment, t_tr.gpu_hours] if t_tr else None,
        "trials": len(res.trials),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="dev", choices=("dev", "day", "held-out", "all"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--objective", default="target", choices=("target", "pareto"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--warmup-s",
        type=float,
        default=0.0,
        help="judge each window from this second on (tune --warmup-s; 0 as in docs/tune.md's "
        "tables, 180 as the decision family)",
    )
    args = ap.parse_args()
    members = [
        m
        for m in MEMBERS
        if (args.only and m.name in args.only) or (not args.only and (args.set in ("all", m.set)))
    ]
    text = POLICY.read_text(encoding="utf-8")
    out: dict[str, Any] = {}
    print(f"objective {args.objective}, {args.trials} trials, {args.folds} folds, "
          f"{args.jobs} worker(s), each window judged from {args.warmup_s:g} s; held-out "
          "windows:")  # fmt: skip
    print(f"{'member':<16}{'default att / GPU-h':>22}{'tuned att / GPU-h':>22}"
          f"{'frontier@tuned':>16}{'Pareto':>8}{'>=front':>9}{'search s':>10}"
          f"{'tune s':>8}")  # fmt: skip
    for m in members:
        trace = m.build()
        t0 = time.perf_counter()
        with backtest.quiet_logs():
            res = tune(
                trace, text, source=str(POLICY), profile=builtin("llama-8b-h100"),
                config=backtest.ReplayConfig(warmup_s=args.warmup_s), folds=args.folds,
                trials=args.trials,
                jobs=args.jobs, study_name=f"family-{m.name}-{args.objective}",
                yardsticks_on=True, objective=args.objective,
            )  # fmt: skip
        v = verdicts(res)
        v["whole_tune_wall_s"] = round(time.perf_counter() - t0, 1)
        out[m.name] = v
        d, t = v["default"], v["tuned"]
        print(f"{m.name:<16}{100 * d[0]:>10.2f} % {d[1]:>7.2f}{100 * t[0]:>12.2f} % {t[1]:>7.2f}"
              f"{100 * v['frontier_at_tuned_gpu_hours']:>14.2f} %"
              f"{'yes' if v['pareto_better'] else 'no':>8}"
              f"{'yes' if v['not_below_frontier'] else 'no':>9}{v['search_wall_s']:>10.1f}"
              f"{v['whole_tune_wall_s']:>8.1f}",
              flush=True)  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
