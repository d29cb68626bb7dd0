"""Out-of-sample forecast accuracy on the ServeGen envelope (SIM-MODEL.md section 3.1).

For each language model's 14-day envelope: the 10-minute rates are joined smoothly (the same
PCHIP as `trace stitch`), scaled to a peak of `--peak-rps`, and observed as 1-minute Poisson
counts (seeded), i.e. what the controller's 1-minute history would hold. Each forecaster then
walks forward bin by bin through the test days (after `--train-days` of history), exactly as in
the controller: every bin updates the fitted filter, a refit every `--refit-every-s`. From every
origin it forecasts 5 and 15 minutes ahead; we score

- WAPE   sum |actual - median forecast| / sum actual  (the median: expm1 of the log-scale mean)
- pinball loss at the provisioning quantile (P90), divided by the mean actual (scale-free)
- coverage: share of bins whose actual is <= the P90 forecast (should be ~0.90)

Baselines: last value and seasonal naive (same minute yesterday). Noise floor: the WAPE of the
true (noise-free) rate as a forecast, i.e. what Poisson noise alone costs.

    .venv/bin/python benchmarks/forecast_accuracy.py [--models language/m-large language/m-mid]
"""

from __future__ import annotations

# ruff: noqa: E402  (the BLAS thread setting must precede the numpy import)
import os

# Fits here stand for the controller's refit workers, which run one BLAS thread each
# (autoscaler/controller/refits.py WORKER_ENV); set before numpy loads OpenBLAS.
for _k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from autoscaler.forecast import engine, refit
from autoscaler.sim import stitch

ROOT = Path(__file__).resolve().parents[1]
ENVELOPE = ROOT.parent / "shared" / "traces" / "servegen_aggregate_rate_10min.csv"
BIN_S = 60.0
HORIZONS = (5, 15)  # minutes = bins
MODELS = ("last_value", "seasonal_naive", "holt", "holt_winters", "arima", "sarimax", "auto")


def series(model: str, *, days: int, peak: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    starts, rates = stitch.read_envelope(ENVELOPE, model)
    env = stitch.Envelope(starts, rates, days=days, peak=peak)
    t = (np.arange(int(days * 86400 / BIN_S)) + 0.5) * BIN_S
    true = env.rate(t)
    rng = np.random.default_rng(seed)
    return rng.poisson(true * BIN_S) / BIN_S, true


def evaluate(
    name: str,
    y: np.ndarray,
    *,
    start: int,
    refit_every_s: float,
    quantile: float,
    drift_ratio: float | None = 1.5,
    select_every_s: float = 86400.0,
    max_fit_age_s: float = 86400.0,
) -> dict[str, float]:
    # "holt:undamped" = the plain additive trend, to show what damping buys.
    model, _, variant = name.partition(":")
    settings = engine.Settings(
        model=model,
        damped_trend=variant != "undamped",
        # Coverage and pinball loss here are scored against each bin's value, so the band is
        # the bin's (noise included), not the policies' default band of the rate.
        band="sample",
        bin_s=BIN_S,
        horizon_s=max(HORIZONS) * BIN_S,
        quantile=quantile,
        refit_every_s=refit_every_s,
        drift_ratio=drift_ratio,
        select_every_s=select_every_s,
        max_fit_age_s=max_fit_age_s,
    )
    f = engine.Forecaster(settings, key=name)
    # Load the training days as a restart's backfill would, then walk forward.
    f.history.load(0, y[:start])
    inline = refit.Inline()
    hmax = max(HORIZONS)
    n = len(y)
    med = {h: np.full(n, np.nan) for h in HORIZONS}
    up = {h: np.full(n, np.nan) for h in HORIZONS}
    cpu0 = time.process_time()
    fit_cpu = 0.0
    for k in range(start, n - hmax + 1):
        t = k * BIN_S
        before = f.fit
        f.maybe_refit(t, inline)
        if f.fit is not before and f.fit is not None:
            fit_cpu += f.fit.cpu_s
        p = f.paths(hmax)
        if not isinstance(p, engine.Fallback):
            m, u = p
            for h in HORIZONS:
                med[h][k + h - 1] = m[h - 1]  # bin k is step 1
                up[h][k + h - 1] = u[h - 1]
        f.observe(t, float(y[k]))  # opens bin k
        f.observe(t + BIN_S, None)  # closes bin k (the next tick's sample arrives next loop)
    out: dict[str, float] = {
        "cpu_s": time.process_time() - cpu0,
        "fit_cpu_s": fit_cpu,
        "fits": float(f.fits),
        "skipped": float(f.skipped),
        "failures": float(f.failures),
    }
    for h in HORIZONS:
        ok = ~np.isnan(med[h])
        a, m, u = y[ok], med[h][ok], up[h][ok]
        out[f"wape{h}"] = float(np.abs(a - m).sum() / a.sum())
        diff = a - u
        pin = np.where(diff >= 0, quantile * diff, (quantile - 1) * diff)
        out[f"pinball{h}"] = float(pin.mean() / a.mean())
        out[f"cover{h}"] = float((a <= u).mean())
        out[f"n{h}"] = float(ok.sum())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["language/m-large", "language/m-mid"])
    ap.add_argument("--forecasters", nargs="+", default=list(MODELS))
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--train-days", type=int, default=7)
    ap.add_argument("--peak-rps", type=float, default=100.0)
    ap.add_argument("--refit-every-s", type=float, default=3 * 3600.0)
    ap.add_argument("--quantile", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--drift-ratio", default="1.5", help="skip refits while not drifted; 'none' = every period"
    )
    ap.add_argument("--select-every-s", type=float, default=86400.0)
    ap.add_argument("--max-fit-age-s", type=float, default=86400.0)
    args = ap.parse_args()
    if not ENVELOPE.exists():
        print(f"missing {ENVELOPE}", file=sys.stderr)
        return 2
    print(
        f"# {args.days} d per model, test = last {args.days - args.train_days} d, 1-min bins, "
        f"peak {args.peak_rps:g} req/s, refit every {args.refit_every_s:g} s, "
        f"P{round(args.quantile * 100)}, drift ratio {args.drift_ratio}, auto compares every "
        f"{args.select_every_s:g} s, max fit age {args.max_fit_age_s:g} s",
        flush=True,
    )
    drift = None if args.drift_ratio.lower() == "none" else float(args.drift_ratio)
    test_days = args.days - args.train_days
    for model in args.models:
        y, true = series(model, days=args.days, peak=args.peak_rps, seed=args.seed)
        start = int(args.train_days * 86400 / BIN_S)
        floor = float(np.abs(y[start:] - true[start:]).sum() / y[start:].sum())
        print(f"\n## {model}  (noise floor WAPE {floor:.2%}: the true rate as forecast)")
        print(
            "| forecaster | WAPE 5m | WAPE 15m | pinball P90 5m | pinball P90 15m "
            "| cover 5m | cover 15m | fits (skipped) | fit CPU s per day "
            "| amortised CPU-s per 15-s tick at 500 pools |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in args.forecasters:
            r = evaluate(
                name,
                y,
                start=start,
                refit_every_s=args.refit_every_s,
                quantile=args.quantile,
                drift_ratio=drift,
                select_every_s=args.select_every_s,
                max_fit_age_s=args.max_fit_age_s,
            )
            per_day = r["fit_cpu_s"] / test_days
            per_tick = per_day * 500 / (86400 / 15)
            print(
                f"| {name} | {r['wape5']:.2%} | {r['wape15']:.2%} | {r['pinball5']:.2%} "
                f"| {r['pinball15']:.2%} | {r['cover5']:.2f} | {r['cover15']:.2f} "
                f"| {r['fits']:.0f} ({r['skipped']:.0f}, {r['failures']:.0f} failed) "
                f"| {per_day:.2f} | {per_tick:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
