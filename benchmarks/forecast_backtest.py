"""End-to-end evidence: forecast + reactive vs reactive only vs keda-queue on a stitched trace.

Runs `autoscaler.sim.backtest.run_backtest` (the simulator's backtest) on a stitched multi-day
trace (`pd-autoscaler trace stitch`), with forecast refits inline so the run is deterministic,
and adds to the backtest's summary the SLO attainment of requests that arrive *during ramps*:
minutes where the trace's own 10-minute arrival rate rises by at least `--ramp-rise` (15 %)
over the next 15 minutes, the moments a cold start makes a reactive policy late.

    .venv/bin/python benchmarks/forecast_backtest.py --trace stitched-3d.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autoscaler.forecast import refit
from autoscaler.policy.config import load_policy_file
from autoscaler.sim import backtest
from autoscaler.sim.evaluate import request_outcome
from autoscaler.sim.profile import builtin
from autoscaler.sim.traces import load_trace

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
    args = ap.parse_args()
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
