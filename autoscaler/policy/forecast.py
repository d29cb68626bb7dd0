"""The `forecast` policy kind: request replicas one cold start before the load arrives.

Each tick the policy records the role's rate sample into its history, installs a finished
refit (started every `refit_every_s`, run off the tick by `autoscaler.forecast.refit`), and
turns the upper quantile of the forecast over the next `horizon_s` into replicas:

    forecast replicas = ceil(P90 of the series over [now, now + horizon] / capacity per replica)

It returns one Need with want = keep = that number (want = current inside the role's tolerance
band, like a reactive signal). The core's combination then gives exactly the rule we want:
scale-up takes the max of the reactive and forecast wants (the forecast pre-warms), and a
scale-down goes to the largest `keep` of all sources, so it needs the forecast and every reactive
signal to agree: the forecast can hold capacity for a ramp it sees coming, but it can never cut
below what the reactive signals say current load needs.

When it has nothing trustworthy to say (history shorter than `min_history_s`, every fit failed,
capacity not learned yet, a NaN or negative forecast) it returns want = current, keep = 0,
value None: a Need that cannot move the decision, whose note reads "reactive only: <why>".

Capacity per replica (what one replica serves of the series) is either configured
(`capacity_per_replica`) or, by default, learned online: at ticks when the role is in a healthy
steady state (no pending replicas, every load signal reported by all ready replicas, the busiest
load signal between `learn_band`[0] and [1] of its target), the sample
    rate / (ready x busiest value / its target)
is the rate one replica carries *at the reactive target*; a time-weighted average of those
samples (half-life `learn_halflife_s`) is the capacity. Learned is the default because a
replica's tokens/s depend on the prompt/output mix, batch shapes and the SLO headroom already
encoded in the reactive targets; learning against the same targets makes the forecast provision
for the operating point the reactive signals hold, so the two sources agree in steady state and
neither fights the other's scale-down. Configure the capacity when it is known from a benchmark
(the 8B profile: ~35k prompt tokens/s per H100 at 2k-token prompts, SIM-MODEL §2.8) or when the
role has no load signal to learn from. For the `running` series the capacity defaults to the
role's `running` signal target (a per-replica concurrency target is exactly that).

History lives in memory. A new leader refills it before its first tick from Prometheus range
queries of the same series (`autoscaler.controller.backfill`, `PrometheusSource.range_rates`,
docs/prometheus.md), so a restart or failover keeps the daily shape; a hot reload keeps the
history of unchanged policies and backfills the ones it adds. The learned capacity is not
backfilled: it is learned again from live ticks (or configure `capacity_per_replica`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscaler import errors
from autoscaler.forecast import engine, models, refit
from autoscaler.policy.base import Policy, PolicyPlugin, RoleContext
from autoscaler.spec import RoleSpec, signal_key
from autoscaler.types import GUARD_SIGNALS, STOCK_SIGNALS, Need, Role, SignalName

SeriesName = Literal["request_rate", "prompt_tokens_rate", "generation_tokens_rate", "running"]

# Prefill work is prompt tokens; decode work is generated tokens (each a decode step slot);
# an aggregated server does both, and requests are the one unit common to both phases.
_DEFAULT_SERIES: dict[Role, SeriesName] = {
    Role.PREFILL: "prompt_tokens_rate",
    Role.DECODE: "generation_tokens_rate",
    Role.AGGREGATED: "request_rate",
}

# Below this many healthy samples the learned capacity is one noisy reading; 8 ticks is two
# minutes at 15 s ticks, long enough to average over a few scrape intervals.
_MIN_LEARN_SAMPLES = 8

# ceil() of a ratio that is an integer up to float noise must not add a replica (as signals.py).
_EPS = 1e-9


class ForecastConfig(BaseModel):
    """A forecast policy for one role (`policies: [{kind: forecast, ...}]`)."""

    # Every number finite and bounded (issue 17): windows within 90 days, refits within a week.
    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False
    )

    model: models.ModelName = "auto"
    """auto | local | holt | holt_winters | sarimax | arima (last_value | seasonal_naive as
    references). auto refits every eligible model and keeps the one with the lowest
    rolling-origin WAPE on the newest `validation_s` of history. `local` (a damped local trend
    with fixed constants) is usable from ~30 min of history; Holt and ARIMA need ~1 h, seasonal
    models 2 days; until a configured model qualifies Holt, then `local`, stand in."""
    series: SeriesName | None = None
    """request_rate | prompt_tokens_rate | generation_tokens_rate | running (decode concurrency,
    needs a `running` signal on the role). Default: prompt_tokens_rate for prefill,
    generation_tokens_rate for decode, request_rate for aggregated."""
    horizon_s: float | None = Field(default=None, gt=0, le=6 * 3600)
    """How far ahead to provision, seconds. Default: the role's cold_start_s + tick_s: a replica
    requested now serves after the cold start, and the next chance to ask is one tick later."""
    tick_s: float = Field(default=15, gt=0, le=600)
    """The controller's tick interval, seconds (only used for the default horizon)."""
    quantile: float = Field(default=0.9, ge=0.5, lt=1)
    """Provision for this quantile of the forecast distribution (P90: under-provisioning costs
    SLO misses, over-provisioning only GPU-minutes)."""
    bin_s: float = Field(default=60, ge=5, le=3600)
    """History bin width, seconds: 1-minute bins as in SageServe; shorter bins add noise and
    fit cost without moving a horizon measured in minutes. Bins shorter than `min_bin_s` are
    aggregated to it (and `validate` warns)."""
    min_bin_s: float = Field(default=60, ge=1, le=3600)
    """The narrowest bin the models see, seconds: shorter `bin_s` is widened to this. A
    minute holds enough arrivals that its mean is not mostly Poisson noise (at 2 req/s a 15-s
    bin holds ~30 requests, +-18 %; a minute ~120, +-9 %), and rates averaged over a 60-120 s
    window make 15-s bins four to eight copies of the same noise, which a fitted trend then
    extrapolates. Lower it only for compressed clocks in tests."""
    season_s: float = Field(default=86400, gt=0, le=90 * 86400)
    """Season length, seconds (daily)."""
    history_s: float = Field(default=8 * 86400, gt=0, le=90 * 86400)
    """History kept, seconds: 8 days = a week plus a day, for a same-day-last-week view."""
    min_history_s: float = Field(default=1800, gt=0, le=90 * 86400)
    """No forecast before this much history (30 min: the `local` model needs a 5-bin warm-up
    and 20 validation errors at the farthest step, 30 one-minute bins at a 2-3 min horizon; it
    stands in until Holt has the ~1 h it needs to be fitted and validated)."""
    band: Literal["rate", "sample"] = "rate"
    """What the quantile covers. rate: the rate itself, one bin's sampling noise taken out
    (measured as the median scatter of bins 2 min apart), since capacity per replica is a mean
    rate at which the queue already absorbs that scatter; with few arrivals per bin the sample
    band adds replicas no load needs. sample: one bin's value, noise included (before issue
    14)."""
    refit_every_s: float = Field(default=3600, ge=60, le=7 * 86400)
    """Seconds between refit checks. Between refits every closed bin still updates the model's
    state; only the parameters age, and hourly is plenty for a daily pattern. A due refit is
    skipped while the fit has not drifted (`drift_ratio`)."""
    select_every_s: float = Field(default=24 * 3600, ge=60, le=7 * 86400)
    """auto only: seconds between full comparisons of every model; refits in between re-fit
    only the model chosen last. A comparison costs the sum of all fits (~3 s of CPU), so at 6 h
    comparisons alone cost ~1 CPU-s per 15-s tick at 500 pools; once per season (daily) is when
    which model wins can change, and new models joining (2 days of history) trigger one sooner."""
    drift_ratio: float | None = Field(default=1.5, ge=1, le=100)
    """Skip a due refit while the mean |one-step log error| since the fit is within this factor
    of the one measured on the fit's own held-out bins; null refits every `refit_every_s`. 1.5:
    an hour's 60 one-step errors scatter ~10-20 % around their mean under Poisson noise, so a
    50 % rise is drift, not sampling (see docs/forecast.md for the measured effect)."""
    max_fit_age_s: float = Field(default=86400, gt=0, le=30 * 86400)
    """Refit at least this often even without drift: one season, so the parameters have been
    re-estimated on every hour of the day's shape at least once a day."""
    validation_s: float = Field(default=6 * 3600, gt=0, le=90 * 86400)
    """Newest history held out to choose a model and calibrate its quantile (rolling origin)."""
    seasonal_window_s: float = Field(default=3 * 86400, gt=0, le=90 * 86400)
    """History a seasonal model is fitted on (3 days: 2 to initialise the season, 1 to fit)."""
    holt_window_s: float = Field(default=6 * 3600, gt=0, le=90 * 86400)
    """History Holt is fitted on: a local level and trend forget old days on purpose."""
    arima_window_s: float = Field(default=6 * 3600, gt=0, le=90 * 86400)
    """History the ARIMA part is fitted on (its fit cost grows linearly with it)."""
    arima_order: tuple[int, int, int] = (2, 1, 1)
    """(p, d, q) of arima and of sarimax's error term."""
    fourier_terms: int = Field(default=6, ge=1, le=24)
    """Daily harmonics in sarimax (6: a peak/trough shape with shoulders, 13 parameters)."""
    damped_trend: bool = True
    """Damp Holt's and Holt-Winters' additive trend (statsmodels' damping_trend, fitted). A
    1-minute trend extrapolated 15 minutes overshoots: on ServeGen m-large the plain trend's
    15-minute WAPE is about twice the damped one's (benchmarks/forecast_accuracy.py)."""
    capacity_per_replica: float | None = Field(default=None, gt=0, le=1e9)
    """Series units one replica carries at the role's target (e.g. prompt tokens/s per
    prefill replica). Null: learned online from healthy periods (see the module docstring)."""
    learn_band: tuple[float, float] = (0.5, 1.1)
    """Busiest load signal / its target must lie in this band for a tick to teach capacity:
    below half the target fixed overheads distort the ratio, above 110 % the role is saturated
    and served rate understates demand."""
    learn_halflife_s: float = Field(default=3600, gt=0, le=90 * 86400)
    """Half-life of the learned capacity's time-weighted average, seconds."""

    @model_validator(mode="after")
    def _check(self) -> ForecastConfig:
        ratio = self.season_s / self.model_bin_s
        if abs(ratio - round(ratio)) > 1e-9:
            msg = (
                f"season_s {self.season_s:g} must be a whole number of bin_s "
                f"{self.model_bin_s:g}"
            )
            raise ValueError(msg)
        if self.history_s < 2 * self.season_s and self.model in models.SEASONAL:
            msg = (
                f"history_s {self.history_s:g} must hold 2 seasons ({2 * self.season_s:g}) "
                f"for model {self.model}"
            )
            raise ValueError(msg)
        if self.min_history_s > self.history_s:
            msg = f"min_history_s {self.min_history_s:g} > history_s {self.history_s:g}"
            raise ValueError(msg)
        lo, hi = self.learn_band
        if not 0 < lo < hi <= 10:
            msg = f"learn_band must be 0 < low < high <= 10 (got {lo}, {hi})"
            raise ValueError(msg)
        p, d, q = self.arima_order
        # p, q beyond 10 is not a model of minute bins but hours of fitting per refit.
        if not (0 <= p <= 10 and 0 <= q <= 10 and 0 <= d <= 2):
            msg = f"arima_order {self.arima_order}: p, q in 0..10 and d in 0..2"
            raise ValueError(msg)
        return self

    @property
    def model_bin_s(self) -> float:
        """The bin the models work on: `bin_s`, widened to `min_bin_s`."""
        return max(self.bin_s, self.min_bin_s)

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not meant (printed by `validate`)."""
        if self.bin_s < self.min_bin_s:
            return [
                f"bin_s {self.bin_s:g} is below min_bin_s {self.min_bin_s:g}: the forecast "
                f"bins at {self.min_bin_s:g} s (shorter bins hold too few arrivals; their "
                f"Poisson noise would be forecast as load)"
            ]
        return []


def settings_for(config: ForecastConfig, horizon_s: float) -> engine.Settings:
    """The engine's settings for `config`, forecasting `horizon_s` ahead."""
    return engine.Settings(
        model=config.model,
        bin_s=config.model_bin_s,
        season_s=config.season_s,
        history_s=config.history_s,
        horizon_s=horizon_s,
        quantile=config.quantile,
        min_history_s=config.min_history_s,
        refit_every_s=config.refit_every_s,
        select_every_s=config.select_every_s,
        drift_ratio=config.drift_ratio,
        max_fit_age_s=config.max_fit_age_s,
        validation_s=config.validation_s,
        seasonal_window_s=config.seasonal_window_s,
        holt_window_s=config.holt_window_s,
        arima_window_s=config.arima_window_s,
        arima_order=config.arima_order,
        fourier_terms=config.fourier_terms,
        damped_trend=config.damped_trend,
        band=config.band,
    )


@dataclass(frozen=True, slots=True)
class ForecastNeed(Need):
    """A Need whose description says what the forecast saw, for the decision reason."""

    model: str = ""
    horizon_s: float = 0.0
    quantile: float = 0.9

    def describe(self) -> str:
        if self.value is None or self.target is None:
            return f"{self.source}: {self.note or 'no forecast'}"
        return (
            f"{self.source}[{self.model}] P{round(self.quantile * 100)} over "
            f"{self.horizon_s:.0f}s={self.value:.4g} / {self.target:.4g} per replica "
            f"-> {self.want}"
        )


class _Capacity:
    """Time-weighted average of healthy rate-per-replica-at-target samples."""

    __slots__ = ("halflife_s", "last_t", "n", "value")

    def __init__(self, halflife_s: float) -> None:
        self.halflife_s = halflife_s
        self.value = math.nan
        self.n = 0
        self.last_t: float | None = None

    def add(self, t: float, sample: float) -> None:
        if self.n == 0 or self.last_t is None:
            self.value = sample
        else:
            w = 1 - 0.5 ** (max(t - self.last_t, 0.0) / self.halflife_s)
            self.value += w * (sample - self.value)
        self.n += 1
        self.last_t = t


class ForecastPolicy:
    """The forecast policy of one role of one pool."""

    def __init__(
        self,
        config: ForecastConfig,
        *,
        pool: str,
        role: Role,
        spec: RoleSpec,
        refitter: refit.Refitter | None = None,
    ) -> None:
        self.config = config
        self.series: SeriesName = config.series or _DEFAULT_SERIES[role]
        self.source = f"forecast:{self.series}"
        self.refitter = refitter
        horizon = (
            config.horizon_s
            if config.horizon_s is not None
            else spec.cold_start_s + (config.tick_s)
        )
        self.settings = settings_for(config, horizon)
        self.forecaster = engine.Forecaster(self.settings, key=f"{pool}/{role.value}")
        running = [s for s in spec.signals if s.signal is SignalName.RUNNING]
        if self.series == "running" and not running:
            msg = f"pool {pool} role {role.value}: series running needs a `running` signal"
            raise errors.ConfigError([msg])
        self._fixed: float | None = config.capacity_per_replica
        if self._fixed is None and self.series == "running":
            self._fixed = running[0].target
        # Load signals: flows proportional to work (not queues, not latency guards).
        self._load = [s for s in spec.signals if s.signal not in STOCK_SIGNALS | GUARD_SIGNALS]
        if self._fixed is None and not self._load:
            msg = (
                f"pool {pool} role {role.value}: forecast needs capacity_per_replica, or a "
                f"load signal (batched_tokens, kv_cache, running) to learn it from"
            )
            raise errors.ConfigError([msg])
        self._learned = _Capacity(config.learn_halflife_s)

    # --- per tick --------------------------------------------------------------------------

    def _sample(self, ctx: RoleContext) -> float | None:
        if self.series == "running":
            s = ctx.obs.signals.get(SignalName.RUNNING.value)
            if s is None or s.missing or s.value is None:
                return None
            return s.value * (s.replicas or ctx.obs.ready)
        s = ctx.obs.signals.get(self.series)
        return None if s is None or s.missing else s.value

    def _learn(self, ctx: RoleContext, rate: float | None) -> None:
        obs = ctx.obs
        if rate is None or rate <= 0 or obs.pending > 0 or obs.ready <= 0:
            return
        util = 0.0
        for spec in self._load:
            s = obs.signals.get(signal_key(spec))
            if s is None or s.missing or s.value is None or s.replicas < obs.ready:
                return  # partial or missing: not a healthy, fully observed period
            util = max(util, s.value / spec.target)
        lo, hi = self.config.learn_band
        if lo <= util <= hi:
            self._learned.add(ctx.now, rate / (obs.ready * util))

    def capacity(self) -> float | None:
        if self._fixed is not None:
            return self._fixed
        if self._learned.n < _MIN_LEARN_SAMPLES:
            return None
        return self._learned.value

    def needs(self, ctx: RoleContext) -> list[Need]:
        rate = self._sample(ctx)
        f = self.forecaster
        f.observe(ctx.now, rate)
        if self._fixed is None:
            self._learn(ctx, rate)
        f.maybe_refit(ctx.now, self.refitter)
        return [self._need(ctx, f.predict(ctx.now))]

    def _fallback(self, current: int, why: str) -> Need:
        return ForecastNeed(
            source=self.source,
            want=current,
            keep=0,
            value=None,
            target=None,
            note=f"reactive only: {why}",
            horizon_s=self.settings.horizon_s,
            quantile=self.settings.quantile,
        )

    def _need(self, ctx: RoleContext, fc: engine.Forecast | engine.Fallback) -> Need:
        current = ctx.obs.replicas
        if isinstance(fc, engine.Fallback):
            return self._fallback(current, fc.reason)
        cap = self.capacity()
        if cap is None:
            n = self._learned.n
            return self._fallback(
                current, f"capacity not learned yet ({n}/{_MIN_LEARN_SAMPLES} healthy ticks)"
            )
        replicas = max(0, math.ceil(fc.upper / cap - _EPS))
        tol = ctx.spec.behavior.tolerance
        # The role's deadband, as for a reactive signal: a forecast within +-tolerance of the
        # current capacity asks for no change (avoids +1/-1 churn on forecast noise).
        inside = current > 0 and abs(fc.upper / (cap * current) - 1) <= tol
        want = current if inside else replicas
        return ForecastNeed(
            source=self.source,
            want=want,
            keep=replicas,
            value=fc.upper,
            target=cap,
            note=f"{fc.model} median {fc.median:.4g}",
            model=fc.model,
            horizon_s=self.settings.horizon_s,
            quantile=self.settings.quantile,
        )


class _Plugin:
    kind = "forecast"
    config_model = ForecastConfig

    def build(self, config: ForecastConfig, *, pool: str, role: Role, spec: RoleSpec) -> Policy:
        return ForecastPolicy(config, pool=pool, role=role, spec=spec)


PLUGIN: PolicyPlugin[ForecastConfig] = _Plugin()
