"""Backtest speed: the full `pd-autoscaler backtest` on the Azure conversation trace.

One backtest = the default policy through the controller Loop, the keda-queue baseline through
the Loop, the oracle and the evaluation: what the command does minus printing and minus the
yardsticks (best-static and hindsight replay the trace once per fixed-fleet level, a cost that
grows with the fleets the trace needs, not with the controller; `--yardsticks` times them
once on the base trace). The budget is 5 s wall for the 1-hour trace (19,366 requests). It
prints the median of `--runs` runs and, to show how the cost scales with load and length, the
same backtest on the trace at 2x and 4x the request rate (`rate_scale`: each request replicated
into the gap to the next one, same hour) and on 2x and 4x the length
(the hour replayed back to back).

    .venv/bin/python benchmarks/backtest_speed.py [--runs 5] [--trace PATH] [--no-scaling]

The trace is read from ../shared/traces (relative to the project root); without it a generated
hour of the built-in azure-conv workload is used (and said so).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from pathlib import Path

import numpy as np

from autoscaler.policy.load import load_policy_file
from autoscaler.profile import builtin
from autoscaler.sim.backtest import default_policy_path, quiet_logs, run_backtest
from autoscaler.sim.baselines import BEST_STATIC, HINDSIGHT, KEDA_QUEUE
from autoscaler.sim.traces import Trace, load_trace, scale_rate
from autoscaler.sim.workload import generate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
BUDGET_S = 5.0


def repeat(trace: Trace, times: int) -> Trace:
    """The trace played `times` times back to back (each copy starts 1 s after the last ends)."""
    span = trace.duration_s + 1.0
    return Trace(
        np.concatenate([trace.arrival_s + k * span for k in range(times)]),
        np.tile(trace.prompt_tokens, times),
        np.tile(trace.output_tokens, times),
    )


# CPU seconds of each `one` call: unlike wall time on a shared machine, they do not depend on
# what else runs (the README quotes these).
CPU_S: list[float] = []


def one(trace: Trace, name: str, baselines: tuple[str, ...] = (KEDA_QUEUE,)) -> float:
    policy = load_policy_file(default_policy_path())
    c0 = time.process_time()
    t0 = time.perf_counter()
    with quiet_logs():
        run_backtest(
            trace,
            trace_name=name,
            policies=[("policy", policy)],
            baseline_names=baselines,
            profile=builtin("llama-8b-h100"),
        )
    wall = time.perf_counter() - t0
    CPU_S.append(time.process_time() - c0)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--no-scaling", action="store_true", help="skip the 2x/4x measurements")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one run")
    ap.add_argument("--yardsticks", action="store_true", help="also time best-static+hindsight")
    args = ap.parse_args()
    if args.trace.exists():
        trace = load_trace(args.trace)
        source = args.trace.name
    else:
        trace = generate(duration_s=3600, seed=0, diurnal=False)
        source = "generated azure-conv hour (trace not found)"
    n = len(trace.arrival_s)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        one(trace, source)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return
    walls = [one(trace, source) for _ in range(args.runs)]
    med = statistics.median(walls)
    verdict = "within" if med <= BUDGET_S else "OVER"
    print(f"trace: {source}, {n:,} requests, {trace.duration_s:.0f} s")
    print(f"backtest (policy + keda-queue + oracle), {args.runs} runs: "
          f"{', '.join(f'{w:.2f}' for w in walls)} s")  # fmt: skip
    print(f"median {med:.2f} s ({verdict} the {BUDGET_S:.0f} s budget), {n / med:,.0f} requests/s")
    cpu = statistics.median(CPU_S)
    print(f"median CPU {cpu:.2f} s (all threads of this process), "
          f"{trace.duration_s / 3600 / cpu:.2f} simulated trace-hours per CPU-second")
    if args.yardsticks:
        full = one(trace, source, (KEDA_QUEUE, BEST_STATIC, HINDSIGHT))
        print(f"with best-static + hindsight (one run): {full:.2f} s")
    if args.no_scaling:
        return
    runs = max(1, args.runs // 2)
    print("scaling (median of", runs, "runs each):")
    print(f"  {'variant':<26}{'requests':>10}{'wall s':>9}{'x base':>8}")
    print(f"  {'1x (base)':<26}{n:>10,}{med:>9.2f}{1.0:>8.2f}")
    for label, tr in (
        ("2x rate (same hour)", scale_rate(trace, 2.0, seed=1)),
        ("4x rate (same hour)", scale_rate(trace, 4.0, seed=1)),
        ("2x length (2 hours)", repeat(trace, 2)),
        ("4x length (4 hours)", repeat(trace, 4)),
    ):
        w = statistics.median(one(tr, label) for _ in range(runs))
        print(f"  {label:<26}{len(tr.arrival_s):>10,}{w:>9.2f}{w / med:>8.2f}")


if __name__ == "__main__":
    main()
