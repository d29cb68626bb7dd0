"""Forecasts from half an hour of history that do not chase 15-second noise (issue 14).

Scenario tables on synthetic time, ticks every 15 s. Arrivals are Poisson counts per 15-s slot
and the role's rate is their mean over the last 60 s, as the simulator's metric source reports
it. "Reactive sizing" is what the true mean rate needs: ceil(rate / capacity per replica).

- constant rate: from 30 min of history the forecast sizes within +-1 replica of the reactive
  sizing, with 1-minute bins and with 15-s bins (widened to a minute); the band of one bin's
  sample on 15-s bins (the behaviour before issue 14) asks for more;
- ramp: with 30-35 minutes of history (the ramp began at 15 min) the forecast asks for more
  than the current rate needs, and reaches each replica count at least a minute before the
  reactive sizing does;
- step: after a step up the forecast never asks for more than 2 replicas (nor 50 %) above what
  the new level needs (the stated overshoot bound), and settles near it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from autoscaler.forecast import models
from autoscaler.policy.forecast import ForecastConfig, ForecastNeed
from tests.forecast.conftest import ctx, policy

TICK = 15.0
CAP = 0.5  # requests/s one replica carries (request_rate series)


def arrivals(rate: Callable[[float], float], until: float, seed: int) -> Iterator[tuple[float, float]]:
    """(t, 60-s window rate) every 15 s for Poisson arrivals at `rate(t)` requests/s."""
    rng = np.random.default_rng(seed)
    slots: list[int] = []
    t = 0.0
    while t < until:
        t += TICK
        slots.append(int(rng.poisson(rate(t - TICK / 2) * TICK)))
        window = slots[-4:]
        yield t, sum(window) / (TICK * len(window))


def run(
    rate: Callable[[float], float], until: float, *, seed: int = 1, cap: float = CAP,
    **config: object,
) -> list[tuple[float, float, int | None]]:  # fmt: skip
    """(t, window rate, forecast replicas or None while reactive only) per tick."""
    p = policy(series="request_rate", capacity_per_replica=cap, **config)
    out = []
    for t, r in arrivals(rate, until, seed):
        (need,) = p.needs(ctx(t, replicas=4, request_rate=r, batched_tokens=0.5))
        assert isinstance(need, ForecastNeed)
        out.append((t, r, None if need.value is None else need.keep))
    return out


def reactive(rate: float) -> int:
    return math.ceil(rate / CAP - 1e-9)


@pytest.mark.parametrize(
    ("lam", "config", "seed"),
    [
        pytest.param(1.2, {}, 1, id="1.2 req/s, 1-min bins"),
        pytest.param(2.8, {}, 2, id="2.8 req/s, 1-min bins"),
        pytest.param(1.2, {"bin_s": 15}, 3, id="1.2 req/s, 15-s bins widened to 1 min"),
        pytest.param(2.8, {"bin_s": 15}, 4, id="2.8 req/s, 15-s bins widened to 1 min"),
        pytest.param(2.8, {"model": "holt"}, 5, id="2.8 req/s, holt (local until it qualifies)"),
    ],
)
def test_constant_poisson_sizes_like_reactive(lam: float, config: dict[str, object], seed: int
                                              ) -> None:  # fmt: skip
    """From 30 min of history the forecast acts, and sizes within +-1 of the reactive sizing.
    The rates sit inside a replica's range, not on its edge: at exactly 3 req/s (6.0 replicas)
    any upward band rounds up to 7, and 2 ticks of 361 asked for 8 (seed 4, measured)."""
    out = run(lambda t: lam, 2 * 3600, seed=seed, **config)
    acting = [(t, n) for t, _, n in out if n is not None]
    assert acting, "the forecast never acted"
    assert acting[0][0] <= 1800 + 2 * 60  # from 30 min (plus the bins to close)
    want = reactive(lam)
    off = [(t, n) for t, n in acting if abs(n - want) > 1]
    assert not off, f"reactive {want}: {off[:5]}"


def test_one_bins_sample_band_on_15s_bins_overprovisions() -> None:
    """The contrast: 15-s bins with the band of one bin's sample (before issue 14) ask for 2
    replicas more than the load needs on average; the rate band on the same bins for less, and
    widened to a minute (the default) within one replica."""
    lam, cap = 0.5, 0.1  # 7.5 arrivals per 15-s bin: 5 replicas of 0.1 req/s
    before = run(lambda t: lam, 2 * 3600, seed=3, band="sample", bin_s=15, min_bin_s=15,
                 cap=cap)  # fmt: skip
    raw = run(lambda t: lam, 2 * 3600, seed=3, bin_s=15, min_bin_s=15, cap=cap)
    now = run(lambda t: lam, 2 * 3600, seed=3, bin_s=15, cap=cap)

    def mean(out: list[tuple[float, float, int | None]]) -> float:
        return float(np.mean([n for _, _, n in out if n is not None]))

    # Measured: 7.24 before, 6.56 with the rate band alone, 5.88 widened to 1-minute bins too.
    assert mean(before) >= 5 + 2
    assert mean(raw) < mean(before)
    assert mean(now) < 5 + 1


def _ramp(t: float) -> float:
    """1 req/s, then from 15 min a ramp of 0.2 req/s per minute (4 req/s at 30 min, 7 by 45)."""
    return 1.0 + max(0.0, min(t, 2700.0) - 900.0) / 300.0


def test_ramp_acts_ahead_from_half_an_hour() -> None:
    """A ramp under way when the history reaches 30 min: from its first forecasts the policy
    asks for more than the current rate needs, is never behind the reactive sizing of the true
    rate, and from 32 min on reaches each replica count at least a minute before it (measured
    over seeds 6-9: 135-555 s ahead; the horizon is 105 s, the rest is the P90 band)."""
    out = run(_ramp, 3000, seed=6)
    early = [(t, r, n) for t, r, n in out if 1800 <= t <= 2100 and n is not None]
    assert early
    assert any(n > reactive(r) for _, r, n in early)
    for level in range(reactive(_ramp(1800)) + 1, reactive(_ramp(2700)) + 1):
        t_fc = next(t for t, _, n in out if n is not None and n >= level)
        t_re = next(t for t, _, _ in out if reactive(_ramp(t)) >= level)
        lead = 0 if t_re < 1920 else 60
        assert t_fc <= t_re - lead, (level, t_fc, t_re)


@pytest.mark.parametrize(
    ("low", "high", "seed"),
    [(1.0, 3.0, 7), (1.1, 2.9, 8), (2.1, 3.9, 10), (0.6, 2.4, 9)],
)
def test_step_overshoot_is_bounded(low: float, high: float, seed: int) -> None:
    """A step up at 40 min. The stated bound: the forecast never asks for more than 2 replicas,
    nor 50 %, above what the new level needs (the trend it reads from the step fades with the
    damping; measured worst over seeds 7-11 of these steps: +2 replicas, 1.46x at 2.4 req/s),
    and from 15 min after the step it stays within -1/+2 of it (Poisson noise on the level)."""
    step = 2400.0
    out = run(lambda t: low if t < step else high, 2 * 3600, seed=seed)
    after = [(t, n) for t, _, n in out if n is not None and t >= step]
    need = reactive(high)
    top = max(n for _, n in after)
    assert top <= need + 2
    assert top <= 1.5 * high / CAP
    late = [n for t, n in after if t >= step + 900]
    assert all(need - 1 <= n <= need + 2 for n in late)


def test_config_defaults_and_warning() -> None:
    """The default history is 30 min; bins below a minute are widened, and validate says so."""
    cfg = ForecastConfig()
    assert cfg.min_history_s == 1800
    assert cfg.model_bin_s == 60
    assert cfg.warnings() == []
    tiny = ForecastConfig(bin_s=15)
    assert tiny.model_bin_s == 60
    (w,) = tiny.warnings()
    assert "bin_s 15 is below min_bin_s 60" in w


def _job(model: str, z: np.ndarray) -> models.FitJob:
    return models.FitJob(
        model=model, z=z, end_bin=len(z), bin_s=60.0, season_bins=1440, steps=3, quantile=0.9,
        validation_bins=max(len(z) // 3, 1), seasonal_window_bins=4320, holt_window_bins=360,
        arima_window_bins=360, arima_order=(2, 1, 1), fourier_terms=6,
    )


@pytest.mark.parametrize(
    ("model", "bins", "name", "note"),
    [
        pytest.param("auto", 30, "local", "", id="auto, 30 min: local only"),
        pytest.param("holt", 30, "local", "holt needs", id="holt, 30 min: bridged by local"),
        pytest.param("sarimax", 30, "local", "sarimax needs", id="sarimax, 30 min: local"),
        pytest.param("sarimax", 120, "holt", "sarimax needs", id="sarimax, 2 h: holt"),
    ],
)
def test_short_history_fits(model: str, bins: int, name: str, note: str) -> None:
    """What a fit picks from a short history, and the note that says what it stands in for."""
    rng = np.random.default_rng(0)
    z = np.log1p(rng.poisson(120, bins) / 60.0)
    res = models.fit(_job(model, z))
    assert res.ok, res.error
    assert res.name == name
    assert res.note.startswith(note)
    too_short = models.fit(_job(model, z[:20]))
    assert not too_short.ok


@pytest.mark.parametrize("per_bin", [30, 120, 480])
def test_sampling_noise_is_one_over_the_count(per_bin: int) -> None:
    """A steady Poisson rate of n arrivals per bin: log-scale noise variance ~ 1/n (within 30 %),
    and a slow daily-like drift on top does not pass for noise."""
    rng = np.random.default_rng(per_bin)
    t = np.arange(600)
    drift = 1 + 0.5 * np.sin(2 * np.pi * t / 600)
    z = np.log(rng.poisson(per_bin * drift) / 60.0)
    v = models.sampling_noise_var(z, bin_s=60.0)
    assert 0.7 / per_bin < v < 1.3 / per_bin
