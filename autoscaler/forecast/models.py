"""Forecast models as cheap online filters whose parameters statsmodels estimates now and then.

Every model works on z = log1p(rate) per bin: arrival rates are Poisson-like (variance grows with
the level) and swing 3-4x per day, and on the log scale both the noise and the daily swing are
roughly additive, which is what Holt-Winters' additive season and ARIMA assume.

A *fit* (seconds of CPU, run off the tick's path) estimates parameters with statsmodels and
returns a `Model`: a small filter that, between fits, consumes one closed bin in O(1)
(`update`) and predicts a few steps ahead in O(steps) (`forecast`). So a tick never runs
statsmodels; it runs a handful of float operations with the last fitted parameters, and the
state (level, trend, season, ARIMA lags) stays current even when the parameters are an hour old.

Models (all on z):
- last_value      z_{t+k} = z_t                                  (reference)
- local           damped local level + trend with fixed smoothing constants: nothing to
                  estimate, so it is usable from ~30 minutes of history (see `LOCAL_*`) and
                  stands in until the fitted models have the bins they need
- seasonal_naive  z_{t+k} = z_{t+k-m}, m bins per season          (reference: same time yesterday)
- holt            additive level + trend (statsmodels ExponentialSmoothing, trend="add")
- holt_winters    Holt + additive season of m bins (needs 2 seasons to initialise)
- arima           ARIMA(p,d,q) (statsmodels SARIMAX state-space MLE), SageServe's family
- sarimax         regression on K daily Fourier terms + ARIMA errors: SARIMAX with Fourier exog,
                  the cheap way to a 1,440-bin season (a seasonal AR lag of 1,440 would make the
                  state vector 1,440 long and a fit take minutes)

Upper quantiles come from rolling-origin validation, not from model theory: each fit holds out
the newest bins, walks the filter through them forecasting `steps` ahead from every origin, and
keeps the per-step empirical quantile of the log errors. That calibrates the P90 on the data
the model is about to forecast, whatever the model's misspecification.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

ModelName = Literal[
    "auto", "local", "holt", "holt_winters", "sarimax", "arima", "last_value", "seasonal_naive"
]
CONCRETE: tuple[str, ...] = (
    "last_value",
    "local",
    "seasonal_naive",
    "holt",
    "holt_winters",
    "arima",
    "sarimax",
)
SEASONAL: frozenset[str] = frozenset({"seasonal_naive", "holt_winters", "sarimax"})

# Fewer validation errors than this and an empirical P90 is mostly noise (10 errors put the
# P90 between the 9th and 10th largest); the fit is then refused rather than mis-calibrated.
MIN_ERRORS = 20

# The short-history model's constants, fixed rather than fitted so that every bin after a short
# warm-up is an honest out-of-sample forecast and 30 one-minute bins are enough to calibrate it.
# alpha 0.3: the level averages ~6 bins (2 / alpha - 1 = 5.7), so one minute's Poisson noise moves
# it by 0.3 of its size; beta 0.1: the slope averages ~20 bins, a ramp of tens of minutes;
# phi 0.9: the slope's pull fades within ~10 bins, so a slope read from noise cannot carry the
# forecast far (4 steps ahead it adds 3.1 slopes, not 4).
LOCAL_ALPHA = 0.3
LOCAL_BETA = 0.1
LOCAL_PHI = 0.9
LOCAL_WARMUP = 5  # bins the level and slope settle over before their errors count
# Models a configured model falls back to while its history is short, in order of preference.
BRIDGES: tuple[str, ...] = ("holt", "local")


class Model(Protocol):
    """A fitted model as an online filter on z = log1p(rate)."""

    name: str

    def update(self, z: float) -> None:
        """Consume the next bin (NaN = no data: advance on the model's own prediction)."""
        ...

    def forecast(self, steps: int) -> FloatArray:
        """Mean of z for the next `steps` bins."""
        ...


# --- the filters ---------------------------------------------------------------------------


class LastValue:
    name = "last_value"

    def __init__(self) -> None:
        self.z = math.nan

    def update(self, z: float) -> None:
        if not math.isnan(z):
            self.z = z

    def forecast(self, steps: int) -> FloatArray:
        return np.full(steps, self.z)


class SeasonalNaive:
    """Same bin one season ago; a gap keeps last season's value (its own forecast)."""

    name = "seasonal_naive"

    def __init__(self, m: int) -> None:
        self.m = m
        self.ring = np.full(m, np.nan)
        self.pos = 0  # where the next bin goes; ring[pos] is the value one season before it
        self.last = LastValue()

    def update(self, z: float) -> None:
        if not math.isnan(z):
            self.ring[self.pos] = z
        self.last.update(z)
        self.pos = (self.pos + 1) % self.m

    def forecast(self, steps: int) -> FloatArray:
        idx = (self.pos + np.arange(steps)) % self.m
        out = self.ring[idx]
        return np.where(np.isnan(out), self.last.z, out)


class ETS:
    """Additive Holt / Holt-Winters in statsmodels' component form (the same recursion as
    `ExponentialSmoothing._predict`, so fitted parameters carry over exactly), with an optional
    damped trend (phi < 1; phi = 1 is the plain additive trend):
        l_t = a (y_t - s_{t-m}) + (1-a)(l_{t-1} + phi b_{t-1})
        b_t = b* (l_t - l_{t-1}) + (1-b*) phi b_{t-1}
        s_t = g (y_t - l_{t-1} - phi b_{t-1}) + (1-g) s_{t-m}
        forecast k steps: l_t + (phi + ... + phi^k) b_t + s_{t+k-m}
    """

    def __init__(
        self,
        *,
        name: str,
        alpha: float,
        beta: float,
        gamma: float,
        level: float,
        trend: float,
        seasons: FloatArray | None,
        phi: float = 1.0,
    ) -> None:
        self.name = name
        self.phi = phi
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.level, self.trend = level, trend
        self.seasons = None if seasons is None else np.array(seasons, dtype=np.float64)
        self.pos = 0

    def update(self, z: float) -> None:
        s_old = 0.0 if self.seasons is None else float(self.seasons[self.pos])
        lvl, b = self.level, self.phi * self.trend
        if math.isnan(z):
            z = lvl + b + s_old  # no data: advance on the one-step forecast (zero error)
        a = self.alpha
        new_l = a * (z - s_old) + (1 - a) * (lvl + b)
        self.trend = self.beta * (new_l - lvl) + (1 - self.beta) * b
        self.level = new_l
        if self.seasons is not None:
            self.seasons[self.pos] = self.gamma * (z - lvl - b) + (1 - self.gamma) * s_old
            self.pos = (self.pos + 1) % len(self.seasons)

    def forecast(self, steps: int) -> FloatArray:
        k = np.arange(1, steps + 1, dtype=np.float64)
        damp = k if self.phi == 1.0 else np.cumsum(self.phi**k)
        out = self.level + damp * self.trend
        if self.seasons is not None:
            out = out + self.seasons[(self.pos + np.arange(steps)) % len(self.seasons)]
        return out


class ARIMAFilter:
    """ARIMA errors around a mean: u_t = z_t - mean(bin_t);  A(L) u_t = B(L) e_t, where A holds
    the AR and differencing polynomial (ascending powers, A[0] = 1) and B the MA one.
    One-step prediction: u^_t = -sum_k A[k] u_{t-k} + sum_k B[k] e_{t-k}."""

    def __init__(
        self,
        *,
        name: str,
        ar: FloatArray,
        ma: FloatArray,
        mean: Callable[[int], float],
        next_bin: int,
    ) -> None:
        self.name = name
        self.ar = [float(x) for x in ar[1:]]
        self.ma = [float(x) for x in ma[1:]]
        self.mean = mean
        self.next_bin = next_bin
        self.us = [0.0] * len(self.ar)  # most recent first
        self.es = [0.0] * len(self.ma)
        self.primed = False

    def _predict(self, us: list[float], es: list[float]) -> float:
        acc = 0.0
        for a, u in zip(self.ar, us, strict=True):
            acc -= a * u
        for b, e in zip(self.ma, es, strict=True):
            acc += b * e
        return acc

    def update(self, z: float) -> None:
        u = z - self.mean(self.next_bin)
        if not self.primed and not math.isnan(u):
            # Start the lags at the first value, not 0: differencing would read a jump from 0.
            self.us = [u] * len(self.us)
            self.primed = True
        pred = self._predict(self.us, self.es)
        e = 0.0 if math.isnan(u) else u - pred
        u = pred if math.isnan(u) else u
        if self.us:
            self.us = [u, *self.us[:-1]]
        if self.es:
            self.es = [e, *self.es[:-1]]
        self.next_bin += 1

    def forecast(self, steps: int) -> FloatArray:
        us, es = list(self.us), list(self.es)
        out = np.empty(steps)
        for k in range(steps):
            u = self._predict(us, es)
            if us:
                us = [u, *us[:-1]]
            if es:
                es = [0.0, *es[:-1]]
            out[k] = u + self.mean(self.next_bin + k)
        return out


# --- fitting -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FitJob:
    """Everything a fit needs, copied out of the history so it can run in another thread."""

    model: str
    z: FloatArray  # log1p of complete bins, oldest first; NaN = no data
    end_bin: int  # absolute index one past z[-1]
    bin_s: float
    season_bins: int
    steps: int  # bins ahead the provisioning horizon can reach
    quantile: float
    validation_bins: int
    seasonal_window_bins: int
    holt_window_bins: int
    arima_window_bins: int
    arima_order: tuple[int, int, int]
    fourier_terms: int
    damped_trend: bool = True
    # "rate": the quantile band covers the uncertainty of the rate itself, with one bin's
    # sampling noise taken out (`sampling_noise_var`); "sample": it covers one bin's sample.
    band: str = "rate"
    key: str = ""  # whose fit this is ("pool/role"): refit cost is reported per pool


@dataclass(frozen=True, slots=True, kw_only=True)
class FitResult:
    """A fitted model with its calibration, or why there is none."""

    ok: bool
    end_bin: int
    model: Model | None = None
    name: str = ""
    offsets: FloatArray = field(default_factory=lambda: np.empty(0))  # per-step z quantile
    score: float = math.nan  # validation WAPE at the horizon step
    # Mean |one-step log error| on the held-out bins: the yardstick a forecaster compares its
    # live one-step errors with to tell whether the fitted parameters have drifted.
    err1: float = math.nan
    scores: dict[str, float | str] = field(default_factory=dict)
    error: str = ""
    note: str = ""
    cpu_s: float = 0.0


def _fill(z: FloatArray) -> FloatArray:
    """Linear interpolation across NaN gaps (statsmodels cannot take NaN); edges held."""
    ok = ~np.isnan(z)
    if ok.all():
        return z
    if not ok.any():
        msg = "no data in the fit window"
        raise ValueError(msg)
    idx = np.arange(len(z))
    return np.interp(idx, idx[ok], z[ok])


def _replay(model: Model, z: FloatArray) -> Model:
    for v in z:
        model.update(float(v))
    return model


def _fit_ets(job: FitJob, train: FloatArray, *, seasonal: bool) -> Model:
    damped = job.damped_trend
    from statsmodels.tsa.holtwinters import ExponentialSmoothing  # noqa: PLC0415

    m = job.season_bins
    window = job.seasonal_window_bins if seasonal else job.holt_window_bins
    data = train[-window:]
    # Heuristic initialisation for the season: estimating 1,440 initial seasonal states by
    # MLE would take minutes; the heuristic (a decomposition of the first 2 seasons) is
    # statsmodels' documented alternative and leaves 3 parameters to optimise.
    es = ExponentialSmoothing(
        _fill(data),
        trend="add",
        seasonal="add" if seasonal else None,
        seasonal_periods=m if seasonal else None,
        initialization_method="heuristic" if seasonal else "estimated",
        damped_trend=damped,
    )
    res = es.fit()
    p = res.params
    seasons = np.asarray(p["initial_seasons"], dtype=np.float64) if seasonal else None
    model = ETS(
        name="holt_winters" if seasonal else "holt",
        alpha=float(p["smoothing_level"]),
        beta=float(p["smoothing_trend"]),
        gamma=float(p["smoothing_seasonal"]) if seasonal else 0.0,
        level=float(p["initial_level"]),
        trend=float(p["initial_trend"]),
        seasons=seasons,
        phi=float(p["damping_trend"]) if damped else 1.0,
    )
    return _replay(model, data)


def _fourier(bins: npt.NDArray[np.int64], *, bin_s: float, m: int, k: int) -> FloatArray:
    phase = 2 * np.pi * (np.mod(bins, m) / m)
    cols = [np.ones(len(bins))]
    for j in range(1, k + 1):
        cols += [np.sin(j * phase), np.cos(j * phase)]
    return np.column_stack(cols)


class _FourierMean:
    """The seasonal mean of a fitted SARIMAX: an object, not a closure, so that the fitted
    model pickles (refits run in worker processes and send their model back)."""

    __slots__ = ("beta", "bin_s", "k", "m")

    def __init__(self, bin_s: float, m: int, k: int, beta: FloatArray) -> None:
        self.bin_s, self.m, self.k, self.beta = bin_s, m, k, beta

    def __call__(self, b: int) -> float:
        return float(_fourier(np.array([b]), bin_s=self.bin_s, m=self.m, k=self.k)[0] @ self.beta)


def _zero_mean(b: int) -> float:  # same signature as the seasonal mean
    return 0.0


def _fit_arima(job: FitJob, train: FloatArray, *, seasonal: bool) -> Model:
    from statsmodels.tsa.statespace.sarimax import SARIMAX  # noqa: PLC0415

    start_bin = job.end_bin - len(job.z)
    m, k = job.season_bins, job.fourier_terms
    if seasonal:
        # Daily shape: OLS of z on K harmonics over the whole seasonal window (milliseconds,
        # and the season is then fixed between fits: days differ in level, not in shape).
        w = min(len(train), job.seasonal_window_bins)
        bins = np.arange(start_bin + len(train) - w, start_bin + len(train))
        seg = train[-w:]
        ok = ~np.isnan(seg)
        x = _fourier(bins[ok], bin_s=job.bin_s, m=m, k=k)
        beta, *_ = np.linalg.lstsq(x, seg[ok], rcond=None)
        mean: Callable[[int], float] = _FourierMean(job.bin_s, m, k,
                                                   np.asarray(beta, dtype=np.float64))
    else:
        mean = _zero_mean

    nw = min(len(train), job.arima_window_bins)
    seg_bins = np.arange(start_bin + len(train) - nw, start_bin + len(train))
    seg = _fill(train[-nw:])
    u = seg - (np.array([mean(int(b)) for b in seg_bins]) if seasonal else 0.0)
    p, d, q = job.arima_order
    res = SARIMAX(u, order=(p, d, q), trend="n", concentrate_scale=True).fit(disp=False, maxiter=50)
    ar = np.convolve(np.asarray(res.polynomial_ar, dtype=np.float64), _diff_poly(d))
    ma = np.asarray(res.polynomial_ma, dtype=np.float64)
    if not (np.isfinite(ar).all() and np.isfinite(ma).all()):
        msg = "non-finite ARIMA parameters"
        raise ValueError(msg)
    model = ARIMAFilter(
        name="sarimax" if seasonal else "arima",
        ar=ar,
        ma=ma,
        mean=mean,
        next_bin=int(seg_bins[0]),
    )
    return _replay(model, train[-nw:])


def _diff_poly(d: int) -> FloatArray:
    out = np.array([1.0])
    for _ in range(d):
        out = np.convolve(out, [1.0, -1.0])
    return out


def local_model() -> ETS:
    """The short-history model: a damped local linear trend with the fixed `LOCAL_*` constants,
    its level started at the first bin it consumes."""
    return _LocalETS(
        name="local", alpha=LOCAL_ALPHA, beta=LOCAL_BETA, gamma=0.0, level=math.nan, trend=0.0,
        seasons=None, phi=LOCAL_PHI,
    )


class _LocalETS(ETS):
    """ETS whose level starts at the first observed bin (no fitted initial state)."""

    def update(self, z: float) -> None:
        if math.isnan(self.level):
            if not math.isnan(z):
                self.level = z
            return
        super().update(z)


def _fit_one(name: str, job: FitJob, train: FloatArray) -> Model:
    m = job.season_bins
    if name == "local":
        return _replay(local_model(), train)
    if name == "last_value":
        return _replay(LastValue(), train[-1:] if len(train) else train)
    if name == "seasonal_naive":
        model = SeasonalNaive(m)
        return _replay(model, train[-m:]) if len(train) >= m else _replay(model, train)
    if name in ("holt", "holt_winters"):
        return _fit_ets(job, train, seasonal=name == "holt_winters")
    if name in ("arima", "sarimax"):
        return _fit_arima(job, train, seasonal=name == "sarimax")
    msg = f"unknown model {name!r}"
    raise ValueError(msg)


def min_bins(name: str, job: FitJob) -> int:
    """Complete bins a model needs to be fitted and validated."""
    # Seasonal models need 2 seasons to train (Holt-Winters' heuristic start decomposes two;
    # a 1-season Fourier fit cannot tell the daily shape from a trend) plus the held-out bins.
    if name == "local":
        # Walked from its first bin (nothing is fitted): a warm-up, then enough forecasts that
        # the farthest step still has MIN_ERRORS errors.
        return LOCAL_WARMUP + job.steps - 1 + MIN_ERRORS
    base = 2 * job.season_bins if name in SEASONAL else 4 * job.steps + 10
    return base + job.validation_bins


# Bins this far apart carry independent sampling noise: a rate the source averages over a window
# (60 s in the simulator, 120 s by default in the cluster) makes neighbouring bins share arrivals.
NOISE_LAG_S = 120.0


def sampling_noise_var(z: FloatArray, *, bin_s: float) -> float:
    """Variance of one bin's sampling noise around the underlying rate (log scale).

    Half the squared difference of two bins `NOISE_LAG_S` apart is the noise variance plus what
    the rate itself moved in that time; its median (over the chi-square's median, 0.455) keeps
    bursts and ramps, which move a minority of pairs, from passing for noise. At a steady rate
    of n arrivals per bin this reads ~1/n; the rate's own moves over minutes are what is left
    of a forecast's error once this is taken out."""
    lag = max(1, math.ceil(NOISE_LAG_S / bin_s))
    if len(z) <= lag:
        return 0.0
    d = z[lag:] - z[:-lag]
    d = d[~np.isnan(d)]
    if len(d) < MIN_ERRORS:
        return 0.0
    return float(np.median(d * d) / 2.0 / 0.4549)


def _validate(
    model: Model, z_val: FloatArray, steps: int, quantile: float, noise_var: float = 0.0
) -> tuple[FloatArray, float, float]:
    """Walk the filter through held-out bins; per-step error quantiles, WAPE at `steps` and
    the mean absolute one-step error (log scale).

    With `noise_var` > 0 each step's quantile is pulled towards the errors' median by the share
    of their variance that is one bin's sampling noise: the band then covers how far the rate
    itself may move, not the Poisson scatter of a single bin around it. Capacity per replica is
    a mean rate at which the queue already absorbs that scatter; counting it again is what made
    short bins ask for replicas no load needed."""
    n = len(z_val)
    fc = np.full((n, steps), np.nan)
    for i in range(n):
        fc[i] = model.forecast(steps)
        model.update(float(z_val[i]))
    actual = np.full((n, steps), np.nan)
    for k in range(steps):
        actual[: n - k, k] = z_val[k:]
    err = actual - fc
    counts = np.count_nonzero(~np.isnan(err), axis=0)
    if counts.min() < MIN_ERRORS:
        msg = f"only {int(counts.min())} validation errors (< {MIN_ERRORS})"
        raise ValueError(msg)
    offsets = np.nanquantile(err, quantile, axis=0)
    if noise_var > 0:
        mid = np.nanmedian(err, axis=0)
        var = np.nanvar(err, axis=0)
        keep = np.sqrt(np.clip(1.0 - noise_var / np.maximum(var, 1e-300), 0.0, 1.0))
        offsets = mid + (offsets - mid) * keep
    last = ~np.isnan(err[:, -1])
    a = np.expm1(actual[last, -1])
    f = np.expm1(fc[last, -1])
    wape = float(np.abs(a - f).sum() / max(a.sum(), 1e-12))
    if not (np.isfinite(offsets).all() and math.isfinite(wape)):
        msg = "non-finite validation errors"
        raise ValueError(msg)
    err1 = float(np.nanmean(np.abs(err[:, 0])))
    return offsets, wape, err1


def candidates(job: FitJob) -> tuple[list[str], str]:
    """The models `job` can fit with its history, and a note when that is fewer than asked."""
    n = len(job.z)
    if job.model != "auto":
        if n >= min_bins(job.model, job):
            return [job.model], ""
        need = min_bins(job.model, job)
        if job.model in SEASONAL or job.model in ("holt", "arima"):
            # Until 2 days exist a daily season cannot be estimated, and until a few hours
            # exist Holt's or ARIMA's parameters cannot: Holt, then the local model, bridge.
            for bridge in BRIDGES:
                if bridge != job.model and n >= min_bins(bridge, job):
                    have = f"{need * job.bin_s / 3600:.2f} h" if need * job.bin_s < 86400 else (
                        f"{need * job.bin_s / 86400:.2f} d"
                    )
                    return [bridge], f"{job.model} needs {have} of history"
        return [], f"{job.model} needs {need} bins, have {n}"
    names = [c for c in CONCRETE if n >= min_bins(c, job)]
    return names, "" if names else f"needs {min_bins('local', job)} bins, have {n}"


def fit(job: FitJob) -> FitResult:
    """Fit (and for `auto`, select by validation WAPE) a model; never raises; any thread."""
    t0 = time.process_time()
    names, note = candidates(job)
    if not names:
        return FitResult(ok=False, end_bin=job.end_bin, error=note, cpu_s=0.0)
    v = job.validation_bins
    train, val = job.z[:-v], job.z[-v:]
    noise = sampling_noise_var(job.z, bin_s=job.bin_s) if job.band == "rate" else 0.0
    best: tuple[float, str, Model, FloatArray, float] | None = None
    scores: dict[str, float | str] = {}
    for name in names:
        tr, va = train, val
        if name == "local" and v - job.steps + 1 < MIN_ERRORS:
            # Nothing of the local model is fitted, so every forecast from its first bins on is
            # out of sample: with a short history it is validated on all but the warm-up.
            tr, va = job.z[:LOCAL_WARMUP], job.z[LOCAL_WARMUP:]
        try:
            with warnings.catch_warnings():
                # statsmodels warns on every hard optimisation (convergence, starting values);
                # the validation score below is the judge of whether the fit is usable.
                warnings.simplefilter("ignore")
                model = _fit_one(name, job, tr)
                offsets, wape, err1 = _validate(model, va, job.steps, job.quantile, noise)
        except Exception as exc:  # a model failing must not stop the others
            scores[name] = f"failed: {type(exc).__name__}: {exc}"[:200]
            continue
        scores[name] = wape
        if best is None or wape < best[0]:
            best = (wape, name, model, offsets, err1)
    cpu = time.process_time() - t0
    if best is None:
        errs = "; ".join(f"{k} {v}" for k, v in scores.items())
        return FitResult(ok=False, end_bin=job.end_bin, error=errs, scores=scores, cpu_s=cpu)
    wape, name, model, offsets, err1 = best
    return FitResult(
        ok=True,
        end_bin=job.end_bin,
        model=model,
        name=name,
        offsets=offsets,
        score=wape,
        err1=err1,
        scores=scores,
        note=note,
        cpu_s=cpu,
    )
