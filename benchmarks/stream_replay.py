"""Long replays: peak memory and CPU of a backtest streamed from disk, per simulated day and per
million requests, and where the CPU goes.

One process per measurement (peak RSS is a process-wide high-water mark): the default policy
through the controller Loop (with `--keda`, the keda-queue baseline too), the oracle and the
evaluation, the trace read with `backtest --stream`'s `TraceStream` (or, with `--in-memory`,
loaded whole as `backtest` without `--stream` does). It prints the requests, simulated days,
CPU seconds (`time.process_time`: all threads of the process, independent of other load on
the machine, unlike wall time), CPU-seconds per simulated day and per million requests, and the
peak RSS. `--profile` adds a cProfile of the run: the functions with the most own time.

    .venv/bin/python benchmarks/stream_replay.py --trace TRACE [--start-s S] [--duration-s D]
        [--keda] [--in-memory] [--profile [N]]

A 14-day trace to measure on (not in the repository; the shared traces are read in place):

    S=../shared/traces
    .venv/bin/pd-autoscaler trace stitch --envelope $S/servegen_aggregate_rate_10min.csv \\
        --model language/m-large --tokens $S/AzureLLMInferenceTrace_conv.csv \\
        --days 14 --peak-rps 4 --out /tmp/s14.csv
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import time
from pathlib import Path

from autoscaler.policy.load import load_policy_file
from autoscaler.profile import builtin
from autoscaler.sim.backtest import default_policy_path, quiet_logs, run_backtest
from autoscaler.sim.baselines import KEDA_QUEUE
from autoscaler.sim.traces import Trace, TraceStream, load_trace

DAY_S = 86_400.0


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, required=True)
    ap.add_argument("--start-s", type=float, default=0.0)
    ap.add_argument("--duration-s", type=float, default=None)
    ap.add_argument("--keda", action="store_true", help="also replay the keda-queue baseline")
    ap.add_argument("--in-memory", action="store_true", help="load the trace whole instead")
    ap.add_argument("--profile", type=int, nargs="?", const=25, default=0,
                    help="print the N functions with the most own time (default 25)")  # fmt: skip
    args = ap.parse_args()
    policy = load_policy_file(default_policy_path())
    c0 = time.process_time()
    w0 = time.perf_counter()
    trace: Trace | TraceStream
    if args.in_memory:
        trace = load_trace(args.trace, start_s=args.start_s, duration_s=args.duration_s)
    else:
        trace = TraceStream(args.trace, start_s=args.start_s, duration_s=args.duration_s)
    prof = cProfile.Profile() if args.profile else None
    if prof is not None:
        prof.enable()
    with quiet_logs():
        bt = run_backtest(
            trace,
            trace_name=args.trace.name,
            policies=[("policy", policy)],
            baseline_names=[KEDA_QUEUE] if args.keda else [],
            profile=builtin("llama-8b-h100"),
        )
    if prof is not None:
        prof.disable()
    cpu = time.process_time() - c0
    wall = time.perf_counter() - w0
    days = bt.horizon_s / DAY_S
    runs = len(bt.runs)
    mode = "in memory" if args.in_memory else "streamed from disk"
    print(f"trace: {args.trace.name} ({mode}), {bt.requests:,} requests over {days:.2f} days")
    for name, run in bt.runs.items():
        ev = run.evaluation
        print(f"  {name}: SLO {ev.slo_attainment:.2%}, {ev.gpu_hours:.1f} GPU-h, "
              f"{ev.scale_events} scale events, {run.wall_s:.0f} s wall")  # fmt: skip
    print(f"  oracle: {bt.oracle_gpu_hours:.1f} GPU-h")
    print(f"replays: {runs} (+ the oracle); CPU {cpu:.1f} s, wall {wall:.1f} s")
    print(f"CPU-seconds per simulated day per replay: {cpu / days / runs:.1f}; "
          f"per million requests per replay: {cpu / (bt.requests / 1e6) / runs:.1f}")  # fmt: skip
    print(f"peak RSS: {peak_rss_mb():.0f} MB")
    if prof is not None:
        print(f"\ncProfile, the {args.profile} functions with the most own time "
              "(profiling slows the run; compare shares, not seconds):")  # fmt: skip
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
