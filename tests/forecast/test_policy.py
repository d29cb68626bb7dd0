"""The forecast policy with the real decision core, on synthetic time.

Covers: fallbacks that leave the decision to the reactive signals (short history, failed fit,
NaN/negative forecast, capacity not learned) and how they read in the decision; the combination
rule (scale-up = max of reactive and forecast, scale-down needs both); a failed refit keeping the
previous fit; learned capacity; pre-warming before a daily ramp with a seasonal model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from autoscaler.decision.core import PolicyMap
from autoscaler.forecast import engine, models
from autoscaler.policy import registry
from autoscaler.policy.forecast import ForecastNeed, ForecastPolicy
from autoscaler.spec import PolicyRef
from autoscaler.testing import Ticker, obs, pool_policy
from autoscaler.types import Need, Role
from tests.forecast.conftest import ctx, policy

CAP = 1000.0  # prompt tokens/s one replica carries at the batched_tokens target 0.5
TARGET = 0.5
FAST = {  # small windows so a fit takes milliseconds (Holt on ~1.5 h of 1-minute bins)
    "model": "holt",
    "min_history_s": 5400,
    "validation_s": 1800,
    "holt_window_s": 3600,
}
DECODE = {"signals": [{"signal": "kv_cache", "target": 0.7}]}
NO_WINDOWS = {
    "scale_up": {"stabilization_window_s": 0, "rules": []},
    "scale_down": {"stabilization_window_s": 0, "rules": []},
    "panic": {"enabled": False},
}


def feed(
    p: ForecastPolicy,
    until: float,
    rate: Callable[[float], float],
    *,
    replicas: int = 2,
    start: float = 0.0,
) -> Need:
    """Ticks every 15 s with the role's rate sample and a batched_tokens value matching it."""
    need: Need | None = None
    t = start
    while t < until:
        r = rate(t)
        util = TARGET * r / (CAP * replicas)
        (need,) = p.needs(ctx(t, replicas=replicas, prompt_tokens_rate=r, batched_tokens=util))
        t += 15
    assert need is not None
    return need


def test_short_history_is_reactive_only() -> None:
    """Before min_history_s the Need cannot move the decision and says why."""
    p = policy(**FAST, capacity_per_replica=CAP)
    need = feed(p, 600, lambda t: 2000.0, replicas=3)
    assert (need.want, need.keep, need.value) == (3, 0, None)
    assert need.note.startswith("reactive only: history 9 min < 90 min")
    assert need.source == "forecast:prompt_tokens_rate"


@pytest.mark.parametrize(
    ("band", "low", "high"),
    [
        # One bin's P90: a little above the level.
        pytest.param("sample", 3500, 3800, id="sample band: P90 of a bin"),
        # White noise around a flat level is all sampling noise: the rate's band is the level.
        pytest.param("rate", 3500 * 0.98, 3500 * 1.01, id="rate band: noise taken out"),
    ],
)
def test_forecast_need_after_history(band: str, low: float, high: float) -> None:
    """With enough history the Need is want = keep = ceil(upper quantile / capacity)."""
    p = policy(**FAST, capacity_per_replica=CAP, band=band)
    rng = np.random.default_rng(0)
    need = feed(p, 7200, lambda t: 3500.0 * (1 + 0.02 * rng.standard_normal()), replicas=4)
    assert isinstance(need, ForecastNeed)
    assert need.value is not None
    assert low < need.value < high
    assert need.keep == math.ceil(need.value / CAP) == 4
    assert need.want == 4
    assert "P90 over 105s" in need.describe()
    assert need.model == "holt"


def _boom(name: str, job: models.FitJob, train: Any) -> models.Model:
    msg = f"{name} exploded"
    raise RuntimeError(msg)


def test_failed_fit_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fit failing: reactive only, with the error in the note."""
    monkeypatch.setattr(models, "_fit_one", _boom)
    p = policy(**FAST, capacity_per_replica=CAP)
    need = feed(p, 7200, lambda t: 2000.0)
    assert (need.want, need.keep, need.value) == (2, 0, None)
    assert "reactive only: fit failed: holt failed: RuntimeError: holt exploded" in need.note
    assert p.forecaster.failures == 1


def test_failed_refit_keeps_previous_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refit that fails keeps forecasting with the previous fit's parameters."""
    # drift_ratio None: refit every period, so the failing refit is attempted on a steady rate.
    p = policy(**FAST, capacity_per_replica=CAP, refit_every_s=600, drift_ratio=None)
    feed(p, 6000, lambda t: 2000.0)
    assert p.forecaster.fits == 1
    monkeypatch.setattr(models, "_fit_one", _boom)
    need = feed(p, 9000, lambda t: 2000.0, start=6000)
    assert p.forecaster.failures >= 1
    assert p.forecaster.fits == 1
    assert need.value is not None
    assert need.keep == 2


@pytest.mark.parametrize(
    ("path", "why"),
    [
        pytest.param(np.nan, "holt forecast is not finite", id="nan"),
        pytest.param(-5.0, "holt forecast is negative", id="negative"),
    ],
)
def test_bad_forecast_values_fall_back(
    monkeypatch: pytest.MonkeyPatch, path: float, why: str
) -> None:
    """A NaN or negative forecast (e.g. a diverging trend) is never turned into replicas."""
    p = policy(**FAST, capacity_per_replica=CAP)
    feed(p, 6000, lambda t: 2000.0)
    model = p.forecaster._model
    assert model is not None
    monkeypatch.setattr(model, "forecast", lambda steps: np.full(steps, path))
    need = feed(p, 6120, lambda t: 2000.0, start=6000)
    assert need.value is None
    assert need.note.startswith(f"reactive only: {why}")


def test_capacity_learned_from_healthy_ticks() -> None:
    """Unconfigured capacity is learned as rate per replica at the load signal's target."""
    p = policy(**FAST)
    need = feed(p, 60, lambda t: 2000.0, replicas=2)
    assert need.note == "reactive only: history 0 min < 90 min"
    need = feed(p, 7200, lambda t: 1600.0, replicas=2, start=60)
    # 1600 tok/s on 2 replicas at 0.4 / 0.5 of target -> 1000 tok/s per replica at target.
    assert p.capacity() == pytest.approx(CAP)
    assert need.value is not None


def test_capacity_not_learned_outside_band() -> None:
    """Ticks far below target (or with pending replicas) teach nothing: reactive only."""
    p = policy(**FAST)
    need = feed(p, 7200, lambda t: 200.0, replicas=2)  # util 0.05 of target
    assert need.note.startswith("reactive only: capacity not learned yet (0/8")


def test_running_series_uses_signal_target() -> None:
    """For decode concurrency the capacity is the role's running target."""
    from tests.forecast.conftest import role_spec  # noqa: PLC0415

    spec = role_spec(signals=[{"signal": "running", "target": 192}])
    p = policy(spec, **FAST, series="running")
    assert p.capacity() == 192


# --- the combination rule, with the real core ---------------------------------------------


def _stub(p: ForecastPolicy, upper: float) -> None:
    fc = engine.Forecast(upper=upper, median=upper, model="stub", steps=2)
    p.forecaster.predict = lambda now: fc  # type: ignore[method-assign]


def _ticker(upper: float | None) -> tuple[Ticker, ForecastPolicy]:
    pf = pool_policy(
        prefill={
            "signals": [{"signal": "batched_tokens", "target": TARGET}],
            "behavior": NO_WINDOWS,
            "policies": [{"kind": "forecast", "capacity_per_replica": CAP}],
        },
        decode=DECODE,
    )
    spec = pf.pools[0].roles[Role.PREFILL]
    fp = registry.build(
        PolicyRef(kind="forecast", capacity_per_replica=CAP),  # type: ignore[call-arg]
        pool="p",
        role=Role.PREFILL,
        spec=spec,
        where="test",
    )
    assert isinstance(fp, ForecastPolicy)
    if upper is not None:
        _stub(fp, upper)
    pm: PolicyMap = {("p", Role.PREFILL): [fp]}
    return Ticker(pf, policies=pm), fp


@pytest.mark.parametrize(
    ("replicas", "util", "forecast", "want", "driver"),
    [
        # reactive: 4 x 0.25 / 0.5 = 2 replicas' worth; forecast 6,500 tok/s -> 7: pre-warm.
        pytest.param(4, 0.25, 6500.0, 7, "forecast:prompt_tokens_rate[stub]", id="up-forecast"),
        # reactive wants ceil(4 x 1.0 / 0.5) = 8 > forecast 7: the larger want wins.
        pytest.param(4, 1.0, 6500.0, 8, "batched_tokens", id="up-reactive"),
        # forecast says 0 but current load needs 4 x 0.45 / (0.5 x 0.9) = 4: no cut.
        pytest.param(4, 0.45, 0.0, 4, "hold: batched_tokens", id="no-cut-below-load"),
        # load needs ceil(1.2 / 0.45) = 3, forecast needs 6 for the ramp it sees: hold at 6.
        pytest.param(6, 0.2, 5500.0, 6, "hold: forecast", id="forecast-holds"),
        # both agree on fewer: the larger keep wins (reactive 3, forecast 2).
        pytest.param(8, 0.15, 1500.0, 3, "scale-down: batched_tokens", id="down-both-agree"),
    ],
)
def test_combination_rule(
    replicas: int, util: float, forecast: float, want: int, driver: str
) -> None:
    """Scale-up takes the max of reactive and forecast; scale-down needs both to agree."""
    t, _ = _ticker(forecast)
    (d,) = [
        v
        for k, v in t.tick(
            0, prefill=obs(replicas, batched_tokens=util), decode=obs(1, kv_cache=0.5)
        ).items()
        if k is Role.PREFILL
    ]
    assert d.desired == want
    assert d.driver.startswith(driver)


def test_fallback_leaves_reactive_decision_unchanged() -> None:
    """A fallback Need (reactive only) gives exactly the reactive-only decision."""
    cases = [(4, 0.25), (4, 1.0), (8, 0.15), (3, 0.5)]
    with_fc, _ = _ticker(None)  # no history: falls back
    pf = pool_policy(
        prefill={
            "signals": [{"signal": "batched_tokens", "target": TARGET}],
            "behavior": NO_WINDOWS,
        },
        decode=DECODE,
    )
    without = Ticker(pf)
    for i, (n, u) in enumerate(cases):
        a = with_fc.tick(i * 15.0, prefill=obs(n, batched_tokens=u), decode=obs(1, kv_cache=0.5))
        b = without.tick(i * 15.0, prefill=obs(n, batched_tokens=u), decode=obs(1, kv_cache=0.5))
        assert a[Role.PREFILL].desired == b[Role.PREFILL].desired
        notes = [x.note for x in a[Role.PREFILL].needs if x.source.startswith("forecast:")]
        assert notes == ["reactive only: history 0 min < 30 min"]


# --- pre-warming before a daily ramp -------------------------------------------------------

DAY = 4 * 3600.0  # a short synthetic "day" keeps the seasonal fits at milliseconds
RAMP_AT = 2 * 3600.0  # phase of the day where load ramps 2,000 -> 8,000 tok/s in 5 minutes


def _daily(t: float, rng: np.random.Generator) -> float:
    ph = t % DAY
    if ph < RAMP_AT:
        base = 2000.0
    elif ph < RAMP_AT + 300:
        base = 2000.0 + 6000.0 * (ph - RAMP_AT) / 300
    elif ph < 3 * 3600:
        base = 8000.0
    else:
        base = 2000.0
    return base * (1 + 0.02 * rng.standard_normal())


def test_prewarms_before_daily_ramp_and_never_cuts_below_load() -> None:
    """A seasonal model learns the ramp and asks for replicas before it starts; at no tick is
    the decision below what the reactive signal alone recommends."""
    cfg = {
        "kind": "forecast",
        "model": "holt_winters",
        "capacity_per_replica": CAP,
        "season_s": DAY,
        "history_s": 4 * DAY,
        "min_history_s": 5400,
        "validation_s": 3600,
        "seasonal_window_s": 3 * DAY,
        "refit_every_s": 3600,
    }
    pf = pool_policy(
        prefill={
            "signals": [{"signal": "batched_tokens", "target": TARGET}],
            "behavior": NO_WINDOWS,
            "cold_start_s": 90,
            "policies": [cfg],
        },
        decode=DECODE,
    )
    spec = pf.pools[0].roles[Role.PREFILL]
    fp = registry.build(spec.policies[0], pool="p", role=Role.PREFILL, spec=spec, where="test")
    assert isinstance(fp, ForecastPolicy)
    t = Ticker(pf, policies={("p", Role.PREFILL): [fp]})
    rng = np.random.default_rng(7)
    replicas = 2
    early: list[tuple[float, int, str]] = []
    now = 0.0
    while now < 3 * DAY + RAMP_AT + 600:
        rate = _daily(now, rng)
        util = TARGET * rate / (CAP * replicas)
        d = t.tick(
            now,
            prefill=obs(replicas, batched_tokens=util, prompt_tokens_rate=rate),
            decode=obs(1, kv_cache=0.5),
        )
        rd = d[Role.PREFILL]
        # What the reactive signal alone would recommend from this same observation.
        (reactive,) = [n for n in rd.needs if n.source == "batched_tokens"]
        alone = reactive.want if reactive.want > replicas else min(reactive.keep, replicas)
        assert rd.desired >= alone, (now, rd.reason)
        if now >= 3 * DAY + RAMP_AT - 300:
            early.append((now, rd.desired, rd.driver))
        replicas = rd.desired
        now += 15
    assert fp.forecaster.fit is not None
    assert fp.forecaster.fit.name == "holt_winters"
    # The ramp reaches 8,000 tok/s (8 replicas) at RAMP_AT + 300 s. Reactive alone asks for 8
    # once the load passes 7,000 tok/s (RAMP_AT + 250 s) and would have them a 90 s cold start
    # later (+340 s). The forecast, having seen the ramp on previous days, must ask early enough
    # that 8 replicas are ready when the peak arrives: by +300 - 90 s, within one 15 s tick.
    start = 3 * DAY + RAMP_AT
    ahead = [(s - start, n, why) for s, n, why in early if n >= 8]
    assert ahead, early
    at, _, why = ahead[0]
    assert at <= 300 - 90 + 15, ahead[:3]
    assert why.startswith("forecast:prompt_tokens_rate[holt_winters] P90"), why


def test_auto_compares_models_then_refits_the_winner() -> None:
    """auto runs the full comparison every select_every_s; refits in between fit the winner."""
    cfg = {**FAST, "model": "auto", "refit_every_s": 600, "select_every_s": 3600}
    p = policy(**cfg, capacity_per_replica=CAP)
    rng = np.random.default_rng(3)
    feed(p, 5460, lambda t: 2000.0 * (1 + 0.02 * rng.standard_normal()))
    first = p.forecaster.fit
    assert first is not None
    # Seasonal models need 2 days.
    assert set(first.scores) == {"last_value", "local", "holt", "arima"}
    feed(p, 5460 + 900, lambda t: 2000.0 * (1 + 0.02 * rng.standard_normal()), start=5460)
    again = p.forecaster.fit
    assert again is not None
    assert again is not first
    assert set(again.scores) == {first.name}
