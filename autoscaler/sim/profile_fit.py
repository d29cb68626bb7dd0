"""Fitting a simulator profile to measurements, and checking a profile against them.

The measurements are *experiments* (autoscaler.sim.fidelity.Experiment): a fixed fleet, a request
rate and request lengths, with the metrics the benchmark client printed. They come from the
fidelity benchmark's data file or from `vllm bench serve --save-result` JSON files
(`experiment_from_bench_json`).

`fit_profile` searches the chosen profile fields (in log space, within a factor of
`FIT_RANGE` of the starting value) for the least robust sum of log errors over every point
(soft-L1, `ROBUST_SCALE`: quadratic for small errors, linear for large ones),
simulating each experiment with the candidate profile: the same engine the backtests run, so a
fitted constant absorbs whatever the engine leaves out. Each fitted constant is reported with
its standard error (from the Jacobian at the optimum) and the residual of every point.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from autoscaler import errors
from autoscaler.profile import Profile
from autoscaler.sim import prom_export
from autoscaler.sim.fidelity import DataFile, Experiment, run_experiment

FIT_RANGE = 10.0
"""A fitted constant stays within [start / FIT_RANGE, start x FIT_RANGE]."""

ROBUST_SCALE = 0.10
"""Log error at which the fit's loss turns from quadratic to linear (soft-L1). Why robust: a
measured mean can carry a tail the engine does not produce (the 70B TP4 run at 20 req/s has a
mean TTFT of 121 ms over a median of 68 ms); under squared loss that one point pulls a shared
constant (frontend_ms) until every other TTFT of the fit is 12-20 % high, while under soft-L1
no point pulls harder than one 10 % off does under squared loss (the loss's slope is bounded).
None selects the plain least squares."""

FITTABLE = (
    "prefill_alpha_ms",
    "prefill_beta_ms_per_token",
    "prefill_gamma_ms_per_token2",
    "decode_alpha_ms",
    "decode_beta_ms_per_seq",
    "decode_gamma_ms_per_ctx_token",
    "sched_ms_per_seq",
    "frontend_ms",
)


@dataclass(frozen=True, slots=True)
class PointError:
    """One published (or measured) point against its simulated value."""

    experiment: str
    metric: str
    measured: float
    simulated: float

    @property
    def rel_error(self) -> float:
        return (self.simulated - self.measured) / self.measured


@dataclass(frozen=True, slots=True)
class FittedConstant:
    name: str
    start: float
    value: float
    rel_std_error: float
    """Standard error of the fitted value relative to it (nan if not identifiable)."""


@dataclass(frozen=True, slots=True)
class FitResult:
    profile: Profile
    constants: list[FittedConstant]
    points: list[PointError]
    evaluations: int


def _simplex(x0: np.ndarray) -> np.ndarray:
    """Starting simplex: each constant moved by a factor of 1.5 in turn."""
    pts = [x0]
    for i in range(len(x0)):
        x = x0.copy()
        x[i] += math.log(1.5)
        pts.append(x)
    return np.array(pts)


def check_profile(
    profile: Profile | None, experiments: list[Experiment], data: DataFile
) -> list[PointError]:
    """Simulate every experiment (with `profile`, or each one's own) and compare its points."""
    out: list[PointError] = []
    for exp in experiments:
        prof = profile
        if prof is not None and exp.overrides:
            prof = Profile.model_validate({**prof.model_dump(), **exp.overrides})
        sim = run_experiment(exp, data, prof)
        for metric, value in exp.points.items():
            out.append(PointError(exp.id, metric, value, sim[metric]))
    return out


def fit_profile(
    base: Profile,
    experiments: list[Experiment],
    data: DataFile,
    *,
    params: list[str],
    max_evaluations: int = 200,
    robust_scale: float | None = ROBUST_SCALE,
) -> FitResult:
    """Fit `params` of `base` to the experiments' points: least soft-L1 loss of the log errors
    at `robust_scale` (None: least squares)."""
    bad = [p for p in params if p not in FITTABLE]
    if bad:
        raise errors.ConfigError([f"fit: params: cannot fit {bad}; fittable: {list(FITTABLE)}"])
    if not experiments:
        raise errors.ConfigError(["fit: no experiments to fit to"])
    start = {p: float(getattr(base, p)) for p in params}
    # Zero-valued constants (e.g. sched_ms_per_seq) start from a small positive value.
    x0 = np.array([math.log(start[p] if start[p] > 0 else 1e-3) for p in params])
    lo, hi = x0 - math.log(FIT_RANGE), x0 + math.log(FIT_RANGE)
    count = 0

    def candidate(x: np.ndarray) -> Profile:
        fields: dict[str, Any] = {p: float(math.exp(v)) for p, v in zip(params, x, strict=True)}
        return Profile.model_validate({**base.model_dump(), **fields})

    def residuals(x: np.ndarray) -> np.ndarray:
        nonlocal count
        count += 1
        pts = check_profile(candidate(x), experiments, data)
        return np.array([math.log(max(p.simulated, 1e-9) / p.measured) for p in pts])

    # Queueing makes the loss piecewise smooth at best (a knee moves by whole steps), so a
    # derivative-free simplex search does the fitting; the Jacobian is only for the errors.
    def loss(x: np.ndarray) -> float:
        r = residuals(np.clip(x, lo, hi))
        if robust_scale is None:
            return float(np.sum(r * r))
        z = r / robust_scale
        return float(np.sum(2.0 * (np.sqrt(1.0 + z * z) - 1.0)))

    opt = minimize(
        loss,
        x0,
        method="Nelder-Mead",
        options={
            "maxfev": max_evaluations,
            "xatol": 0.01,
            "fatol": 1e-4,
            "initial_simplex": _simplex(x0),
        },
    )
    x = np.clip(opt.x, lo, hi)
    fitted = candidate(x)
    r0 = residuals(x)
    jac = np.empty((len(r0), len(params)))
    for i in range(len(params)):
        dx = np.zeros(len(params))
        dx[i] = 0.05
        jac[:, i] = (residuals(x + dx) - r0) / 0.05
    dof = max(1, len(r0) - len(params))
    s2 = float(np.sum(r0**2)) / dof
    try:
        cov = np.linalg.inv(jac.T @ jac) * s2
        se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    except np.linalg.LinAlgError:
        se = np.full(len(params), math.nan)
    consts = [
        FittedConstant(p, start[p], float(getattr(fitted, p)), float(se[i]))
        for i, p in enumerate(params)
    ]
    return FitResult(fitted, consts, check_profile(fitted, experiments, data), count)


def experiment_from_bench_json(path: str | Path, *, profile: str) -> Experiment:
    """An experiment from a `vllm bench serve --save-result` file: its rate (or, at rate inf
    with `--max-concurrency`, its closed loop), prompt count and mean lengths, and its
    mean/median TTFT, TPOT, E2E latency and throughputs."""
    p = Path(path)
    raw = prom_export.read_json(p)
    if not isinstance(raw, dict):
        raise errors.ConfigError([f"{p}: (top level): expected an object"])

    def num(key: str) -> float:
        v = raw.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise errors.ConfigError([f"{p}: {key}: expected a number, got {v!r}"])
        return float(v)

    completed = int(num("completed"))
    if completed <= 0:
        raise errors.ConfigError([f"{p}: completed: no request completed"])
    input_len = max(1, round(num("total_input_tokens") / completed))
    output_len = max(1, round(num("total_output_tokens") / completed))
    rate_raw = raw.get("request_rate", "inf")
    rate = math.inf if rate_raw in ("inf", None) else float(rate_raw)
    conc = raw.get("max_concurrency")
    if conc in (None, "None"):
        conc = 0
    elif not isinstance(conc, int) or isinstance(conc, bool) or conc < 1:
        raise errors.ConfigError([f"{p}: max_concurrency: expected an integer >= 1, got {conc!r}"])
    elif not math.isinf(rate):
        # Both limits at once (Poisson sends, held back while the slots are full) are not
        # replayed; either alone is.
        raise errors.ConfigError(
            [f"{p}: max_concurrency: {conc} with request_rate {rate:g} is not replayed; use"
             " --request-rate inf for a closed loop, or drop --max-concurrency"]
        )  # fmt: skip
    keys = {
        "mean_ttft_ms": "mean_ttft_ms",
        "median_ttft_ms": "median_ttft_ms",
        "mean_tpot_ms": "mean_tpot_ms",
        "median_tpot_ms": "median_tpot_ms",
        "mean_e2el_ms": "mean_e2e_ms",
        "median_e2el_ms": "median_e2e_ms",
        "request_throughput": "request_throughput",
        "output_throughput": "output_throughput",
    }
    points = {
        ours: float(raw[k])
        for k, ours in keys.items()
        if isinstance(raw.get(k), (int, float)) and raw[k] > 0
    }
    if not points:
        raise errors.ConfigError([f"{p}: no metric found (mean_ttft_ms, mean_tpot_ms, ...)"])
    return Experiment(
        id=p.stem,
        source=str(p),
        profile=profile,
        model=str(raw.get("model_id", "unknown")),
        gpu="unspecified",
        tp=1,
        vllm_version="unspecified",
        rate=rate,
        num_prompts=completed,
        input_len=input_len,
        output_len=output_len,
        dataset=None,
        replicas=1,
        split="fit",
        points=points,
        concurrency=conc,
    )


# --- `pd-autoscaler profile fit | check` -------------------------------------------------------


def _experiments(
    paths: list[Path],
    profile: Profile,
    settings: list[str],
    *,
    exports: list[Path] | None = None,
    window_s: float = prom_export.DEFAULT_WINDOW_S,
    min_requests: int = prom_export.DEFAULT_MIN_REQUESTS,
) -> list[Experiment]:
    overrides: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or key not in Profile.model_fields:
            raise errors.ConfigError(
                [f"--set: expected FIELD=VALUE with a profile field, got {item!r}"]
            )
        overrides[key] = float(value) if "." in value or "e" in value else int(value)
    if not paths and not exports:
        raise errors.ConfigError(
            ["no measurements: give result files, --prom-export or --prometheus"]
        )
    found = [experiment_from_bench_json(p, profile=profile.name) for p in paths]
    for e in exports or []:
        found += prom_export.experiments_from_export(
            e, profile=profile.name, window_s=window_s, min_requests=min_requests
        )
    return [replace(exp, overrides=overrides) for exp in found]


def _print_points(points: list[PointError]) -> None:
    print(f"{'measurement':28s} {'metric':18s} {'measured':>10s} {'simulated':>10s} {'error':>8s}")
    for p in points:
        print(
            f"{p.experiment:28s} {p.metric:18s} {p.measured:10.1f} {p.simulated:10.1f} "
            f"{100 * p.rel_error:+7.1f}%"
        )
    errs = sorted(abs(p.rel_error) for p in points)
    within = sum(e <= 0.15 for e in errs) / len(errs)
    print(f"{len(errs)} points: {100 * within:.0f} % within +-15 %, median |error| "
          f"{100 * errs[len(errs) // 2]:.1f} %")  # fmt: skip


def _export_args(args: Any) -> dict[str, Any]:
    exports = list(getattr(args, "prom_export", None) or [])
    url = getattr(args, "prometheus", None)
    if url:
        from autoscaler.sim.prom_fetch import fetch_export  # noqa: PLC0415 (only with --prometheus)

        end = args.end if args.end is not None else time.time()
        out = args.save_export or Path(f"prom-export-{end:.0f}.json")
        exports.append(
            fetch_export(
                url,
                out,
                start=end - args.last_s,
                end=end,
                step_s=args.step_s,
                match=args.match,
                bearer_token_file=args.bearer_token_file,
            )
        )
        print(f"fetched {url} [{end - args.last_s:.0f}, {end:.0f}] into {out}")
    return {
        "exports": exports,
        "window_s": getattr(args, "window_s", prom_export.DEFAULT_WINDOW_S),
        "min_requests": getattr(args, "min_requests", prom_export.DEFAULT_MIN_REQUESTS),
    }


def main(args: Any) -> int:
    """CLI entry: `profile fit RESULTS... --out FILE` or `profile check RESULTS...`."""
    from autoscaler.profile import DEFAULT_PROFILE, resolve_profile  # noqa: PLC0415

    data = DataFile(sources={}, datasets={})
    if args.profile_command == "check":
        prof = resolve_profile(args.profile)
        exps = _experiments(args.results, prof, args.set or [], **_export_args(args))
        _print_points(check_profile(prof, exps, data))
        return 0
    base = resolve_profile(args.base)
    exps = _experiments(args.results, base, args.set or [], **_export_args(args))
    params = [p for p in args.params.split(",") if p]
    if "frontend_ms" in params and all(e.vantage == "server" for e in exps):
        raise errors.ConfigError([
            "--params frontend_ms: server-side measurements (--prom-export) do not contain the "
            "front-end delay; fit it from `vllm bench serve` files, or leave it out of --params"
        ])  # fmt: skip
    res = fit_profile(base, exps, data, params=params, max_evaluations=args.max_evaluations)
    print(f"fitted {len(params)} constants of {base.name} on {len(exps)} measurements "
          f"({res.evaluations} simulations):")  # fmt: skip
    for c in res.constants:
        print(f"  {c.name:32s} {c.start:12.5g} -> {c.value:12.5g}   "
              f"standard error {100 * c.rel_std_error:.0f} %")  # fmt: skip
    _print_points(res.points)
    name = args.out.stem
    fields = res.profile.model_dump()
    fields["name"] = name
    lines = [
        f"# Fitted by `pd-autoscaler profile fit` from {len(exps)} measurement(s), starting from",
        f"# {base.name}; fitted: {', '.join(params)}.",
        f"base: {DEFAULT_PROFILE}",
    ]
    lines += [f"{k}: {json.dumps(v)}" for k, v in fields.items()]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0
