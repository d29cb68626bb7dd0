"""Tune speed: the wall time of `pd-autoscaler tune`'s search with 1 and with 2 worker processes.

Same trace, policy, folds and trial count for each worker count; a fresh study each time (in
memory for one process, a journal file for several). Prints, per worker count, the search's wall
time, the completed trials and the seconds per trial, then the whole tune (final replays and
best-static included). On a shared machine the figures move with the load: run it on an idle one
for numbers to compare.

    .venv/bin/python benchmarks/tune_speed.py [--trace PATH] [--policy FILE] [--trials 30]
        [--folds 2] [--jobs 1 2]

The trace defaults to the Azure 2023 coding hour in ../shared/traces.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from autoscaler.profile import builtin
from autoscaler.sim import backtest
from autoscaler.sim.traces import load_trace
from autoscaler.sim.tune.main import table_lines, tune

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_code.csv"
DEFAULT_POLICY = ROOT / "policies" / "llama-8b-disagg.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    trace = load_trace(args.trace)
    text = args.policy.read_text()
    print(f"trace {args.trace.name}: {len(trace.arrival_s)} requests, "
          f"{trace.duration_s / 60:.1f} min; {args.trials} trials, {args.folds} folds")  # fmt: skip
    for jobs in args.jobs:
        t0 = time.perf_counter()
        res = tune(
            trace, text, source=str(args.policy), profile=builtin("llama-8b-h100"),
            config=backtest.ReplayConfig(), folds=args.folds, trials=args.trials, jobs=jobs,
            study_name=f"speed-{jobs}", yardsticks_on=True,
        )  # fmt: skip
        total = time.perf_counter() - t0
        n = len(res.trials)
        print(f"jobs {jobs}: search {res.tune_wall_s:.1f} s wall for {n} trials "
              f"({res.tune_wall_s / n:.2f} s/trial), whole tune {total:.1f} s")  # fmt: skip
        if jobs == args.jobs[-1]:
            print("\n".join(table_lines(res)))


if __name__ == "__main__":
    main()
