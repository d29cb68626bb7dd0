"""One forecast series end to end: history -> periodic fit -> per-tick upper-quantile forecast.

Per tick (`observe` + `predict`) the cost is a few microseconds: the sample goes into the open
bin; when a bin closes the fitted filter consumes it (O(1)); the forecast path is recomputed
only when a bin closed or a new fit was installed, and cached otherwise. Fits are started by
`maybe_refit` through a `Refitter` and installed when done; a fit that fails keeps the previous
fitted model (its parameters get older, its state stays current) and is retried at the next
period.

Refits are what a forecast costs (issue 16: ~0.3-1 CPU-s per fit, ~3 s per `auto` comparison,
against a budget of 0.25 CPU-s per 15-s tick for 500 forecasting pools). So a due refit is
*skipped* while the fitted parameters demonstrably still fit: every closed bin's one-step error
is recorded, and while the mean absolute one-step error since the fit stays within
`drift_ratio` times the one measured on the fit's own held-out bins (`FitResult.err1`), a new
fit would mostly re-estimate the same parameters. A drifted error, a fit older than
`max_fit_age_s`, an `auto` comparison that is due, a failed or bridging fit (`note`) or a fit
made on less history than its window all refit as scheduled. `drift_ratio=None` refits every
period (the behaviour before issue 16).

`predict` returns either a `Forecast` or a `Fallback` naming why there is none (too little
history, no fit yet, the fit failed, no recent data, NaN or negative values), which the policy
turns into a Need that leaves the decision to the reactive signals.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import numpy as np

from autoscaler.forecast import history, models, refit


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How one series is binned, fitted and forecast (validated by the policy's config)."""

    model: str = "auto"
    bin_s: float = 60.0
    season_s: float = 86400.0
    history_s: float = 8 * 86400.0
    horizon_s: float = 135.0
    quantile: float = 0.9
    min_history_s: float = 1800.0
    refit_every_s: float = 3600.0
    select_every_s: float = 24 * 3600.0
    drift_ratio: float | None = 1.5
    max_fit_age_s: float = 86400.0
    validation_s: float = 6 * 3600.0
    seasonal_window_s: float = 3 * 86400.0
    holt_window_s: float = 6 * 3600.0
    arima_window_s: float = 6 * 3600.0
    arima_order: tuple[int, int, int] = (2, 1, 1)
    fourier_terms: int = 6
    damped_trend: bool = True
    band: str = "rate"
    stale_after_s: float = 600.0

    @property
    def season_bins(self) -> int:
        return round(self.season_s / self.bin_s)

    @property
    def steps(self) -> int:
        # The newest complete bin ends up to one bin before `now`, so the horizon can reach
        # one bin further than horizon_s / bin_s.
        return max(1, math.ceil(self.horizon_s / self.bin_s) + 1)


@dataclass(frozen=True, slots=True)
class Forecast:
    """The provisioning forecast: the largest upper quantile over the horizon."""

    upper: float  # series units (e.g. prompt tokens/s)
    median: float  # the central path's value at the same step (log-scale mean -> median)
    model: str
    steps: int


@dataclass(frozen=True, slots=True)
class Fallback:
    reason: str


class Forecaster:
    """History, fitted model and refit schedule of one series of one role."""

    def __init__(self, settings: Settings, *, key: str = "") -> None:
        self.settings = settings
        self.key = key
        cap = math.ceil(settings.history_s / settings.bin_s)
        self.history = history.BinnedHistory(bin_s=settings.bin_s, capacity=cap)
        self.fit: models.FitResult | None = None  # the fit in use (ok=True)
        self.last_error = ""  # why the newest attempt failed ("" if it did not)
        self.fits = 0
        self.failures = 0
        self.skipped = 0  # due refits skipped because the fit had not drifted
        self._fitted_at: float | None = None  # submit time of the fit in use
        self._submitted_at: float | None = None
        self._full_window = False  # the fit in use saw its model's whole fit + validation window
        self._submitted_full = False
        self._err_sum = 0.0  # live one-step |log error| since the fit in use was installed
        self._err_n = 0
        self._model: models.Model | None = None
        self._offsets = np.empty(0)
        self._model_end: int | None = None  # bins consumed by _model (absolute, one past)
        self._pending: refit.Handle | None = None
        self._next_fit_at: float | None = None
        self._selected_at: float | None = None  # when `auto` last compared every model
        self._selecting: float | None = None  # submit time of an in-flight `auto` selection
        self._selected_n = 0  # models the last `auto` comparison tried
        # Spread refits of many pools over the period (crc32: stable across runs and processes,
        # unlike hash()), so 1,000 pools started together do not all refit in the same tick.
        self._phase = (zlib.crc32(key.encode()) % 1000) / 1000.0
        self._cache: tuple[int | None, int, int, Forecast | Fallback] | None = None

    # --- per tick --------------------------------------------------------------------------

    def observe(self, now: float, value: float | None) -> None:
        """Record this tick's sample; feed closed bins to the fitted filter."""
        if self.history.record(now, value):
            self._advance()

    def _advance(self) -> None:
        end = self.history.end_bin
        if self._model is None or self._model_end is None or end is None:
            return
        n = end - self._model_end
        if n <= 0:
            return
        fresh = self.history.tail(n) if n <= len(self.history) else None
        if fresh is None or len(fresh) < n:
            # More bins went by than the ring holds: the state is meaningless; refit.
            self._model = None
            return
        for v in fresh:
            z = float(np.log1p(v)) if not math.isnan(v) else math.nan
            if not math.isnan(z):
                self._err_sum += abs(z - float(self._model.forecast(1)[0]))
                self._err_n += 1
            self._model.update(z)
        self._model_end = end

    def maybe_refit(self, now: float, refitter: refit.Refitter | None = None) -> bool:
        """Install a finished fit; start a new one when due. True if one was started."""
        self.poll()
        if self._pending is not None:
            return False
        s = self.settings
        if self.history.span_s() < s.min_history_s:
            return False
        if self._next_fit_at is not None and now < self._next_fit_at:
            return False
        first = self.fits == 0 and self.failures == 0
        delay = s.refit_every_s * (0.5 + self._phase) if first else s.refit_every_s
        self._next_fit_at = now + delay
        job = self.job(now)
        if self.fresh(now, job):
            self.skipped += 1
            return False
        self._submitted_at = now
        self._submitted_full = len(job.z) >= self._need_bins(job.model)
        self._selecting = now if job.model == "auto" else None
        self._pending = (refitter or refit.default()).submit(models.fit, job)
        self.poll()
        return True

    def live_err1(self) -> float:
        """Mean |one-step log error| since the fit in use was installed (NaN before any)."""
        return self._err_sum / self._err_n if self._err_n else math.nan

    def fresh(self, now: float, job: models.FitJob) -> bool:
        """True while the due refit `job` can be skipped (see the module doc)."""
        s, f = self.settings, self.fit
        if s.drift_ratio is None or f is None or self._model is None or self.last_error:
            return False
        if job.model == "auto":  # a comparison is due (period over, or new models eligible)
            return False
        if f.note or not self._full_window or self._fitted_at is None:
            return False
        if now - self._fitted_at >= s.max_fit_age_s:
            return False
        if not math.isfinite(f.err1):
            return False
        # Fewer live errors than validation needs is no evidence of drift: the fit is recent.
        if self._err_n < models.MIN_ERRORS:
            return True
        return self.live_err1() <= s.drift_ratio * f.err1

    def _need_bins(self, model: str) -> int:
        """Bins a fit of `model` reads when history is long enough (window + validation)."""
        s = self.settings
        if model == "local":
            return models.min_bins("local", self._job())
        if model in ("holt", "last_value"):
            window = s.holt_window_s
        elif model == "arima":
            window = s.arima_window_s
        else:  # seasonal models and auto read the longest window
            window = max(s.seasonal_window_s, s.holt_window_s, s.arima_window_s)
        return math.ceil((window + s.validation_s) / s.bin_s)

    def poll(self) -> None:
        if self._pending is not None and self._pending.done():
            handle, self._pending = self._pending, None
            self.install(handle.result())

    def job(self, now: float | None = None) -> models.FitJob:
        """A fit job from the current history. `auto` compares every model only every
        `select_every_s` (a full tournament costs ~6x one fit), or sooner when the history has
        grown enough for a model the last comparison could not try (seasonal ones need 2
        days); in between it refits the model it chose last time."""
        job = self._job()
        if (
            job.model == "auto"
            and self.fit is not None
            and self._selected_at is not None
            and now is not None
            and now - self._selected_at < self.settings.select_every_s
            and len(models.candidates(job)[0]) <= self._selected_n
        ):
            return dataclasses.replace(job, model=self.fit.name)
        return job

    def _job(self) -> models.FitJob:
        s = self.settings
        model = s.model
        end = self.history.end_bin or 0
        need = max(s.seasonal_window_s, s.holt_window_s, s.arima_window_s) + s.validation_s
        raw = self.history.tail(math.ceil(need / s.bin_s))
        # Early on, hold out a third of what exists (rolling-origin needs some bins to walk).
        vbins = min(math.ceil(s.validation_s / s.bin_s), max(len(raw) // 3, 1))
        return models.FitJob(
            model=model,
            z=np.log1p(raw),
            end_bin=end,
            bin_s=s.bin_s,
            season_bins=s.season_bins,
            steps=s.steps,
            quantile=s.quantile,
            validation_bins=vbins,
            seasonal_window_bins=math.ceil(s.seasonal_window_s / s.bin_s),
            holt_window_bins=math.ceil(s.holt_window_s / s.bin_s),
            arima_window_bins=math.ceil(s.arima_window_s / s.bin_s),
            arima_order=s.arima_order,
            fourier_terms=s.fourier_terms,
            damped_trend=s.damped_trend,
            band=s.band,
            key=self.key,
        )

    def install(self, result: models.FitResult) -> None:
        """Adopt a fit result: a success replaces the model (and catches up with the bins that
        closed while it ran); a failure keeps the previous model."""
        if not result.ok or result.model is None:
            self.failures += 1
            self.last_error = result.error or "fit failed"
            return
        self.fits += 1
        self.last_error = ""
        self._fitted_at = self._submitted_at
        self._full_window = self._submitted_full
        self._err_sum, self._err_n = 0.0, 0
        if self._selecting is not None:
            self._selected_at = self._selecting
            self._selected_n = len(result.scores)
            self._selecting = None
        self.fit = result
        self._model = result.model
        self._offsets = np.asarray(result.offsets, dtype=np.float64)
        self._model_end = result.end_bin
        self._advance()
        self._cache = None

    def predict(self, now: float) -> Forecast | Fallback:
        """The upper-quantile forecast over [now, now + horizon_s], or why there is none."""
        s = self.settings
        end = self.history.end_bin
        steps = max(1, math.ceil((now + s.horizon_s) / s.bin_s) - end) if end is not None else 0
        key = (end, self.fits, steps)
        if self._cache is not None and self._cache[:3] == key:
            return self._cache[3]
        out = self._predict(steps)
        self._cache = (*key, out)
        return out

    def paths(self, steps: int) -> tuple[np.ndarray, np.ndarray] | Fallback:
        """(median, upper quantile) of the series for the next `steps` bins after the newest
        complete one, in series units; for evaluation and dashboards."""
        if self._model is None:
            return Fallback(self.last_error or "no fit yet")
        z = self._model.forecast(steps)
        q = self._offsets
        if steps > len(q):
            extra = q[-1] * np.sqrt(np.arange(len(q) + 1, steps + 1) / len(q))
            q = np.concatenate((q, extra))
        return np.expm1(z), np.expm1(z + q[:steps])

    def _predict(self, steps: int) -> Forecast | Fallback:
        s = self.settings
        if self._model is None:
            have = self.history.span_s()
            if have < s.min_history_s:
                return Fallback(f"history {have / 60:.0f} min < {s.min_history_s / 60:.0f} min")
            if self.last_error:
                return Fallback(f"fit failed: {self.last_error}")
            return Fallback("no fit yet")
        recent = self.history.tail(max(1, round(s.stale_after_s / s.bin_s)))
        if len(recent) == 0 or np.isnan(recent).all():
            return Fallback(f"no data for {s.stale_after_s:.0f}s")
        z = self._model.forecast(steps)
        q = self._offsets
        if steps > len(q):
            # Beyond the calibrated steps, widen like a random walk: sqrt of the step ratio.
            extra = q[-1] * np.sqrt(np.arange(len(q) + 1, steps + 1) / len(q))
            q = np.concatenate((q, extra))
        upper_path = np.expm1(z + q[:steps])
        if not np.isfinite(upper_path).all():
            return Fallback(f"{self._model.name} forecast is not finite")
        i = int(np.argmax(upper_path))
        upper = float(upper_path[i])
        if upper < 0:
            return Fallback(f"{self._model.name} forecast is negative ({upper:.3g})")
        name = self._model.name
        if self.fit is not None and self.fit.note:
            name = f"{name} ({self.fit.note})"
        return Forecast(upper=upper, median=float(np.expm1(z[i])), model=name, steps=steps)
