"""CPU cost of forecast policies: per tick for 1,000 pools, and per refit.

Per tick (the controller's critical path): 1,000 pools x 2 roles, each with a forecast policy
holding 3 days of 1-minute history and a fitted model (holt, holt_winters, arima, sarimax in
rotation). Each tick records the sample, feeds closed bins to the filter and predicts; refits
are handed to a refitter that never runs them here (in the controller they run off the tick).
Reported: median over repetitions of process CPU per pool per tick, (a) for the policies alone
and (b) as the extra cost of the whole decision core with forecasts vs without.

Per refit (off the critical path): median process CPU of one fit per model on 8 days of
history, and what that amortises to per pool per tick at the default refit period. Then the
same fits through the controller's `ProcessRefitter`: the CPU they cost in the worker
processes, and what stays in the controller's own process per fit (submit, poll, unpickle).

    .venv/bin/python benchmarks/forecast_cost.py [--pools 1000] [--ticks 40] [--reps 5]
        [--fit-samples 5] [--refit-workers 1]
        [--steady-pools 500] [--steady-days 2] [--steady-sample 4]

Steady state (issue 16): a few auto forecasters walk days of synthetic time on the default
refit schedule; reported as refit CPU-s per fit, fits per 15-s tick and amortised refit CPU-s
per tick at 500 forecasting pools, plus the per-tick prediction cost.
"""

from __future__ import annotations

# ruff: noqa: E402  (the BLAS thread setting must precede the numpy import)
import os

# Fits here stand for the controller's refit workers, which run one BLAS thread each
# (autoscaler/controller/refits.py WORKER_ENV); set before numpy loads OpenBLAS.
for _k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from autoscaler.decision.core import PolicyMap, decide
from autoscaler.decision.state import ScaleState
from autoscaler.forecast import engine, models, refit
from autoscaler.policy.base import Policy
from autoscaler.policy.forecast import ForecastConfig, ForecastPolicy
from autoscaler.spec import PolicyFile
from autoscaler.types import PoolObservation, Role, RoleObservation, SignalSample, Snapshot

BIN_S = 60.0
TICK_S = 15.0
KINDS = ("holt", "holt_winters", "arima", "sarimax")


class Never:
    """A refitter that accepts jobs and never finishes them: fits stay off this measurement."""

    def __init__(self) -> None:
        self.jobs = 0

    def submit(self, fn: Any, job: models.FitJob) -> refit.Handle:
        self.jobs += 1
        return self

    def done(self) -> bool:
        return False

    def result(self) -> models.FitResult:
        raise AssertionError


def synthetic(days: float, seed: int) -> np.ndarray:
    """Prompt tokens/s with a 3x daily swing and 3 % noise."""
    t = np.arange(int(days * 86400 / BIN_S)) * BIN_S
    rng = np.random.default_rng(seed)
    base = 20000 * (1 + 0.5 * np.sin(2 * np.pi * t / 86400))
    return base * (1 + 0.03 * rng.standard_normal(len(t)))


def role_dict(name: str, signal: str, target: float, kind: str) -> dict[str, Any]:
    return {
        "deployment": {"namespace": "bench", "name": name},
        "max_replicas": 64,
        "cold_start_s": 90,
        "signals": [{"signal": signal, "target": target}],
        "policies": [{"kind": "forecast", "model": kind, "capacity_per_replica": 5000.0}],
    }


def build(pools: int, *, forecasts: bool) -> PolicyFile:
    doc = {
        "pools": [
            {
                "name": f"p{i}",
                "roles": {
                    "prefill": role_dict(f"p{i}-prefill", "batched_tokens", 0.5, KINDS[i % 4]),
                    "decode": role_dict(f"p{i}-decode", "kv_cache", 0.7, KINDS[i % 4]),
                },
            }
            for i in range(pools)
        ]
    }
    if not forecasts:
        for p in doc["pools"]:
            for r in p["roles"].values():  # type: ignore[attr-defined]
                r["policies"] = []
    return PolicyFile.model_validate(doc)


def fitted(history: np.ndarray) -> dict[str, models.FitResult]:
    out = {}
    for kind in KINDS:
        f = engine.Forecaster(engine.Settings(model=kind, horizon_s=105), key=kind)
        f.history.load(0, history)
        res = models.fit(f.job())
        assert res.ok, (kind, res.error)
        out[kind] = res
    return out


def make_policies(
    pf: PolicyFile, history: np.ndarray, fits: dict[str, models.FitResult], never: Never
) -> PolicyMap:
    pm: dict[tuple[str, Role], list[Policy]] = {}
    for i, pool in enumerate(pf.pools):
        for role, spec in pool.roles.items():
            cfg = ForecastConfig.model_validate(
                {"model": KINDS[i % 4], "capacity_per_replica": 5000.0}
            )
            p = ForecastPolicy(cfg, pool=pool.name, role=role, spec=spec, refitter=never)
            p.forecaster.history.load(0, history)
            p.forecaster.install(copy.deepcopy(fits[KINDS[i % 4]]))
            pm[(pool.name, role)] = [p]
    return pm


def snapshot(pf: PolicyFile, now: float, rate: float) -> Snapshot:
    sig = {
        "batched_tokens": SignalSample(0.45, 4),
        "kv_cache": SignalSample(0.6, 4),
        "request_rate": SignalSample(rate / 1000, 4),
        "prompt_tokens_rate": SignalSample(rate, 4),
        "generation_tokens_rate": SignalSample(rate / 10, 4),
    }
    ro = RoleObservation(replicas=4, ready=4, signals=sig)
    return Snapshot(
        taken_at=now,
        pools={p.name: PoolObservation(roles=dict.fromkeys(p.roles, ro)) for p in pf.pools},
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pools", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=40)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--fit-samples", type=int, default=5)
    ap.add_argument("--refit-workers", type=int, default=1)
    ap.add_argument("--steady-pools", type=int, default=500)
    ap.add_argument("--steady-days", type=float, default=2.0)
    ap.add_argument("--steady-sample", type=int, default=4)
    args = ap.parse_args()

    history = synthetic(3, seed=0)
    start = len(history) * BIN_S
    fits = fitted(history)
    pf_on = build(args.pools, forecasts=True)
    pf_off = build(args.pools, forecasts=False)
    never = Never()
    pm = make_policies(pf_on, history, fits, never)

    # (a) the policies alone, every role of every pool, tick after tick.
    per_pool_policy: list[float] = []
    now = start
    rng = np.random.default_rng(1)
    ctxs = []
    from autoscaler.policy.base import RoleContext  # noqa: PLC0415

    for rep in range(args.reps + 1):
        t0 = time.process_time()
        for _ in range(args.ticks):
            snap = snapshot(pf_on, now, 20000 * (1 + 0.03 * rng.standard_normal()))
            for pool in pf_on.pools:
                pobs = snap.pools[pool.name]
                for role, spec in pool.roles.items():
                    c = RoleContext(pool.name, role, spec, pobs.roles[role], now)
                    for p in pm[(pool.name, role)]:
                        ctxs.append(p.needs(c))
            ctxs.clear()
            now += TICK_S
        dt = time.process_time() - t0
        if rep > 0:  # the first repetition submits every pool's first refit job: warm-up
            per_pool_policy.append(dt / (args.ticks * args.pools))

    # (b) the whole decision core with and without the forecast policies.
    core: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(args.reps):
        for on in (True, False):
            pf = pf_on if on else pf_off
            state = ScaleState()
            t0 = time.process_time()
            for _ in range(args.ticks):
                _, state = decide(
                    snapshot(pf, now, 20000.0), state, pf, now=now, policies=pm if on else None
                )
                now += TICK_S
            core[on].append((time.process_time() - t0) / (args.ticks * args.pools))
        del rep

    print(
        f"# {args.pools} pools x 2 roles, forecasts on both roles ({', '.join(KINDS)} in "
        f"rotation), {args.ticks} ticks x {args.reps} reps, tick {TICK_S:g} s, bins {BIN_S:g} s"
    )
    pol = statistics.median(per_pool_policy) * 1e3
    on = statistics.median(core[True]) * 1e3
    off = statistics.median(core[False]) * 1e3
    print(
        f"forecast policies alone: median {pol:.4f} ms CPU per pool per tick "
        f"(min {min(per_pool_policy) * 1e3:.4f}, max {max(per_pool_policy) * 1e3:.4f})"
    )
    print(
        f"decision core per pool per tick: with forecasts {on:.4f} ms, without {off:.4f} ms, "
        f"forecast adds {on - off:.4f} ms"
    )
    hist_kib = next(iter(pm.values()))[0].forecaster.history.nbytes / 1024  # type: ignore[attr-defined]
    print(
        f"history memory: {hist_kib:.1f} KiB per role (8 days of 1-min float32 bins), "
        f"{hist_kib * 2 * args.pools / 1024:.0f} MiB for all pools"
    )

    # Refit cost per model on 8 days of history (what a long-running controller holds).
    long = synthetic(8, seed=2)
    print(
        "\n| model | fit CPU s (median) | min | max | amortised ms per pool per tick "
        f"(2 roles, refit every 3600 s) | CPU cores for {args.pools} pools |"
    )
    print("|---|---|---|---|---|---|")
    medians: dict[str, float] = {}
    for kind in (*KINDS, "auto"):
        cpu = []
        for j in range(args.fit_samples):
            f = engine.Forecaster(engine.Settings(model=kind, horizon_s=105), key=kind)
            # Different 8-day windows: shift the series so each fit sees other data.
            f.history.load(0, np.roll(long, j * 997))
            res = models.fit(f.job())
            assert res.ok, (kind, res.error)
            cpu.append(res.cpu_s)
        med = medians[kind] = statistics.median(cpu)
        amort = med * 2 / (3600 / TICK_S) * 1e3
        cores = med * 2 * args.pools / 3600
        print(
            f"| {kind} | {med:.3f} | {min(cpu):.3f} | {max(cpu):.3f} | {amort:.3f} | {cores:.2f} |"
        )
    # auto in steady state: one full comparison per select_every_s (6 h), the winner's refit
    # in the other 5 hours; the winner is one of KINDS (cheapest and dearest shown).
    for label, w in (
        ("cheapest", min(KINDS, key=medians.get)),
        ("dearest", max(KINDS, key=medians.get)),
    ):
        per_h = (medians["auto"] + 5 * medians[w]) / 6
        print(
            f"| auto, steady state ({label} winner {w}) | {per_h:.3f} per hour | | "
            f"| {per_h * 2 / (3600 / TICK_S) * 1e3:.3f} | {per_h * 2 * args.pools / 3600:.2f} |"
        )
    process_refits(long, args.fit_samples, args.refit_workers)
    # (a) measured both roles of each pool; a forecasting pool here forecasts one series.
    steady_state(args.steady_pools, args.steady_days, args.steady_sample, pol / 2 / 1e3)
    return 0


def steady_state(pools: int, days: float, sample: int, predict_s: float) -> None:
    """What refits cost a long-running controller with the default schedule: `sample` auto
    forecasters (prompt_tokens_rate as in controller_scale.py) holding 8 days of history walk
    `days` more days bin by bin with every refit check due on the defaults (hourly checks,
    skipped while not drifted, daily comparison); every fit runs inline and its CPU (what a
    worker process would spend) is summed. Scaled to `pools` forecasting pools per 15-s tick,
    plus the per-tick prediction cost measured above."""
    fit_cpu = 0.0
    fits = skipped = 0
    for j in range(sample):
        series = synthetic(8 + days, seed=10 + j)
        f = engine.Forecaster(engine.Settings(model="auto", horizon_s=105), key=f"p{j}/prefill")
        start = 8 * 1440
        f.history.load(0, series[:start])
        inline = refit.Inline()
        for k in range(start, len(series)):
            t = k * BIN_S
            before = f.fit
            f.maybe_refit(t, inline)
            if f.fit is not before and f.fit is not None:
                fit_cpu += f.fit.cpu_s
            f.observe(t, float(series[k]))
        fits += f.fits
        skipped += f.skipped
    ticks = days * 86400 / TICK_S
    per_tick_fits = fits / sample * pools / ticks
    per_tick_cpu = fit_cpu / sample * pools / ticks
    print(
        f"\nsteady state, auto on the defaults ({sample} pools x {days:g} d, 8 d of history): "
        f"{fits} fits, {skipped} due refits skipped (not drifted), "
        f"{fit_cpu / max(fits, 1):.3f} CPU-s per fit"
    )
    print(
        f"at {pools} forecasting pools: {per_tick_fits:.4f} fits per 15-s tick, refits "
        f"{per_tick_cpu:.3f} CPU-s per tick amortised (worker processes), predictions "
        f"{predict_s * pools:.3f} CPU-s per tick, total {per_tick_cpu + predict_s * pools:.3f}"
    )


def _peak_rss_mb(pid: int) -> float:
    """A live process' peak resident set (VmHWM, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_refits(long: np.ndarray, samples: int, workers: int) -> None:
    """The controller's refitter (controller/refits.py): fits in worker processes. What stays
    in the controller's process (and GIL) is submitting the job and unpickling the result."""
    from autoscaler.controller.refits import ProcessRefitter  # noqa: PLC0415

    r = ProcessRefitter(max_workers=workers)
    jobs = []
    for j in range(samples):
        for kind in KINDS:
            f = engine.Forecaster(engine.Settings(model=kind, horizon_s=105), key=f"{kind}/{j}")
            f.history.load(0, np.roll(long, j * 997))
            jobs.append(f.job())
    try:
        warm = r.submit(models.fit, jobs[0])  # start the workers (imports) outside the figure
        while not warm.done():
            time.sleep(0.05)
        parent = 0.0
        t0 = time.perf_counter()
        c0 = time.process_time()
        handles = [r.submit(models.fit, job) for job in jobs]
        parent += time.process_time() - c0
        pending = list(handles)
        while pending:
            time.sleep(0.25)  # a tick would poll every 15 s; this is the worst case
            c0 = time.process_time()
            pending = [h for h in pending if not h.done()]
            results = [h.result() for h in handles if h.done()]
            parent += time.process_time() - c0
        wall = time.perf_counter() - t0
        pool = r._pool
        assert pool is not None  # submitted above
        worker_mb = max(_peak_rss_mb(pid) for pid in (pool._processes or {}))
    finally:
        r.shutdown()
    assert all(x.ok for x in results), [x.error for x in results if not x.ok]
    worker = sum(x.cpu_s for x in results)
    print(
        f"\nrefits in {workers} worker process(es) ({len(jobs)} fits, {', '.join(KINDS)}): "
        f"worker CPU {worker / len(jobs):.3f} s per fit; controller process CPU "
        f"{parent / len(jobs) * 1e3:.1f} ms per fit (submit, poll, unpickle); wall {wall:.1f} s"
    )
    # Part of the controller Pod's memory beside the controller process' own.
    print(f"largest refit worker's peak RSS: {worker_mb:.0f} MB")


if __name__ == "__main__":
    raise SystemExit(main())
