"""End-to-end evidence: forecast + reactive vs reactive only vs keda-queue on a stitched trace.

Runs `autoscaler.sim.backtest.run_backtest` (the simulator's backtest) on a stitched multi-day
trace (`pd-autoscaler trace stitch`), with forecast refits inline so the run is deterministic,
and adds to the backtest's summary the SLO attainment of requests that arrive *during ramps*:
minutes where the trace's own 10-minute arrival rate rises by at least `--ramp-rise` (15 %)
over the next 15 minutes, the moments a cold start makes a reactive policy late.

    .venv/bin/python benchmarks/forecast_backtest.py --trace stitched-3d.csv

`--capacity` instead measures what a forecast's `capacity_per_replica` for prefill should be:
a fixed fleet of N prefill replicas (decode at max, so only TTFT can miss) under 20 minutes of
Poisson arrivals with the trace's prompt/output mix, at each offered prompt tokens/s per replica,
and prints the TTFT attainment (the first 2 minutes, a cold queue, are not counted).

    .venv/bin/python benchmarks/forecast_backtest.py --trace stitched-3d.csv --capacity 1,2,4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autoscaler.forecast import refit
from autoscaler.policy.load import load_policy_file
from autoscaler.profile import builtin
from autoscaler.sim import backtest
from autoscaler.sim.evaluate import request_outcome
from autoscaler.sim.traces import Trace, load_trace
from autoscaler.types import Role

ROOT = Path(__file__).resolve().parents[1]


def ramp_minutes(arrival_s: np.ndarray, *, rise: float) -> np.ndarray:
    """Boolean per minute: the 10-minute mean arrival rate 15 minutes later is >= (1 + rise) x
    now's (10-minute means smooth Poisson noise; 15 minutes spans a cold start plus ticks)."""
    per_min = np.bincount((arrival_s // 60).astype(int)).astype(float)
    smooth = np.convolve(per_min, np.ones(10) / 10, mode="same")
    ahead = np.roll(smooth, -15)
    ahead[-15:] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(ahead >= (1 + rise) * smooth)


def capacity_sweep(
    trace: Trace, pool_policy: Path, fleets: list[int], per_replica: list[float]
) -> None:
    """TTFT attainment of a fixed prefill fleet per offered prompt tokens/s per replica."""
    profile = builtin("llama-8b-h100")
    _, pool = backtest.single_pool(load_policy_file(pool_policy))
    decode_max = pool.roles[Role.DECODE].max_replicas
    rng = np.random.default_rng(1)
    dur, warm = 1200.0, 120.0
    mean_prompt = float(trace.prompt_tokens.mean())
    print(f"# prompt tokens mean {mean_prompt:.0f}; {dur:.0f} s Poisson per point, seed 1")
    print("| prefill replicas | prompt tok/s per replica | req/s | TTFT met | TTFT p99 s |")
    print("|---|---|---|---|---|")
    for n in fleets:
        for rate in per_replica:
            lam = rate * n / mean_prompt
            k = int(rng.poisson(lam * dur))
            idx = rng.integers(0, len(trace.arrival_s), k)
            sample = Trace(
                np.sort(rng.uniform(0.0, dur, k)),
                trace.prompt_tokens[idx],
                trace.output_tokens[idx],
            )
            with backtest.quiet_logs():
                run = backtest.run_static(
                    "capacity",
                    pool,
                    {Role.PREFILL: n, Role.DECODE: decode_max},
                    sample,
                    profile=profile,
                    config=backtest.ReplayConfig(),
                    horizon_s=dur,
                )
            res = run.sim.pool(run.pool).results()
            out = request_outcome(res, profile)
            w = res.arrival_s >= warm
            p99 = float(np.nanpercentile(out.ttft_s[w], 99))
            print(
                f"| {n} | {rate:,.0f} | {lam:.1f} | {out.ttft_ok[w].mean():.3%} | {p99:.2f} |",
                flush=True,
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", type=Path, required=True)
    ap.add_argument(
        "--policy",
        type=Path,
        action="append",
        default=None,
        help="default: policies/llama-8b-forecast.yaml and policies/llama-8b-disagg.yaml",
    )
    ap.add_argument(
        "--baseline",
        action="append",
        default=None,
        help="default: keda-queue; `none` runs the policies only (quicker iteration)",
    )
    ap.add_argument("--ramp-rise", type=float, default=0.15)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--capacity",
        metavar="N,N,...",
        help="measure prefill capacity on fixed fleets of N replicas instead of a backtest",
    )
    ap.add_argument(
        "--capacity-rates",
        default="16000,20000,24000,28000,32000",
        help="prompt tok/s per replica to offer with --capacity",
    )
    args = ap.parse_args()
    if args.capacity:
        capacity_sweep(
            load_trace(args.trace),
            ROOT / "policies" / "llama-8b-disagg.yaml",
            [int(x) for x in args.capacity.split(",")],
            [float(x) for x in args.capacity_rates.split(",")],
        )
        return 0
    refit.set_default(refit.Inline())  # deterministic: fits run at the tick they fall due
    paths = args.policy or [
        ROOT / "policies" / "llama-8b-forecast.yaml",
        ROOT / "policies" / "llama-8b-disagg.yaml",
    ]
    trace = load_trace(args.trace)
    profile = builtin("llama-8b-h100")
    with backtest.quiet_logs():
        bt = backtest.run_backtest(
            trace,
            trace_name=args.trace.name,
            policies=[(p.stem, load_policy_file(p)) for p in paths],
            baseline_names=[b for b in (args.baseline or ["keda-queue"]) if b != "none"],
            profile=profile,
        )
    summary = backtest.summary_json(bt)
    ramps = ramp_minutes(trace.arrival_s, rise=args.ramp_rise)
    print(
        f"# {args.trace.name}: {len(trace.arrival_s)} requests over "
        f"{trace.duration_s / 3600:.1f} h; ramp minutes (rate +{args.ramp_rise:.0%} within "
        f"15 min): {int(ramps.sum())} of {len(ramps)}; oracle {bt.oracle_gpu_hours:.1f} GPU-h"
    )
    print(
        "| run | SLO overall | SLO in ramps | TTFT p99 s | GPU-h (P+D) | x oracle "
        "| scale events | reversals | missed TTFT / ITL |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, run in bt.runs.items():
        res = run.sim.pool(run.pool).results()
        out = request_outcome(res, bt.profile, bt.config.slo)
        minute = (res.arrival_s // 60).astype(int)
        in_ramp = ramps[np.clip(minute, 0, len(ramps) - 1)]
        ramp_att = float(out.met[in_ramp].mean()) if in_ramp.any() else float("nan")
        s = summary["runs"][name]
        s["slo_attainment_ramps"] = ramp_att
        # Which half of the SLO the misses broke: TTFT is prefill's doing, ITL decode's.
        s["missed_ttft"] = int((~out.ttft_ok).sum())
        s["missed_itl"] = int((out.finished & ~out.itl_ok).sum())
        print(
            f"| {name} | {s['slo_attainment']:.2%} | {ramp_att:.2%} | {s['ttft_p99_s']:.2f} "
            f"| {s['gpu_hours']:.1f} ({s['gpu_hours_prefill']:.1f}+{s['gpu_hours_decode']:.1f}) "
            f"| {s['gpu_hours'] / bt.oracle_gpu_hours:.2f} | {s['scale_events']} "
            f"| {s['reversals']} | {s['missed_ttft']} / {s['missed_itl']} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
