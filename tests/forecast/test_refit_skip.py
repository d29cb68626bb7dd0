"""Refits skipped while the fit has not drifted (issue 16: refit CPU at 500 forecasting pools).

A Forecaster on synthetic time, ticking every 15 s with inline refits checked every 10 min: on a
steady series the due refits are skipped until the fit is `max_fit_age_s` old; a series whose
noise grows (one-step errors well above the fit's validated ones) refits; `drift_ratio=None`
refits every period as before; a bridging fit (seasonal model short of 2 days) and an `auto`
comparison that is due are never skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from autoscaler.forecast import engine, models, refit

TICK_S = 15.0
START = 5400.0  # the first fit: 90 one-minute bins = holt window (60) + validation (30)
CHECKS = 12  # refit checks after the first fit, every REFIT_S
REFIT_S = 600.0


def settings(**over: object) -> engine.Settings:
    base: dict[str, object] = {
        "model": "holt",
        "min_history_s": START,
        "validation_s": 1800.0,
        "holt_window_s": 3600.0,
        "horizon_s": 300.0,
        "refit_every_s": REFIT_S,
    }
    return engine.Settings(**(base | over))  # type: ignore[arg-type]


class Recording(refit.Inline):
    """Inline refits, keeping every job's model name."""

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def submit(self, fn: Callable[[models.FitJob], models.FitResult], job: models.FitJob
               ) -> refit.Handle:
        self.jobs.append(job.model)
        return super().submit(fn, job)


def run(s: engine.Settings, noise: Callable[[float], float], *, until: float,
        inline: refit.Refitter | None = None) -> engine.Forecaster:
    """Tick a forecaster from 0 to `until` on 2,000 tokens/s with relative noise `noise(t)`."""
    rng = np.random.default_rng(7)
    f = engine.Forecaster(s, key="p/prefill")
    inline = inline or refit.Inline()
    t = 0.0
    while t < until:
        f.maybe_refit(t, inline)
        f.observe(t, 2000.0 * (1 + noise(t) * rng.standard_normal()))
        t += TICK_S
    return f


def steady(t: float) -> float:
    return 0.02


def noisier(t: float) -> float:
    # Five times the noise from 20 minutes after the first fit: a one-step error ~5x validated.
    return 0.02 if t < START + 1200 else 0.10


END = START + CHECKS * REFIT_S + TICK_S


@pytest.mark.parametrize(
    ("case", "over", "noise", "fits", "skipped"),
    [
        ("steady: every due refit skipped", {}, steady, (1, 1), (CHECKS - 1, CHECKS)),
        ("steady, drift_ratio None: every period", {"drift_ratio": None}, steady,
         (CHECKS, CHECKS + 1), (0, 0)),
        ("steady, max age 30 min: refit when old", {"max_fit_age_s": 1800.0}, steady,
         (CHECKS // 3, CHECKS // 3 + 2), (CHECKS // 2, CHECKS)),
        ("noise x5: drift refits", {}, noisier, (3, CHECKS + 1), (0, CHECKS - 3)),
    ],
)
def test_refit_is_skipped_until_drift_or_age(
    case: str,
    over: dict[str, object],
    noise: Callable[[float], float],
    fits: tuple[int, int],
    skipped: tuple[int, int],
) -> None:
    f = run(settings(**over), noise, until=END)
    assert fits[0] <= f.fits <= fits[1], (case, f.fits, f.skipped, f.live_err1(), f.fit)
    assert skipped[0] <= f.skipped <= skipped[1], (case, f.fits, f.skipped)
    assert f.failures == 0
    assert not isinstance(f.predict(END), engine.Fallback)


def test_live_one_step_error_matches_the_validated_one_on_the_same_process() -> None:
    """The drift yardstick is like for like: on the same stationary series the live mean
    |one-step log error| is close to the fit's held-out one (here within 30 %)."""
    f = run(settings(), steady, until=END)
    assert f.fit is not None
    assert math.isfinite(f.fit.err1)
    assert f.fit.err1 > 0
    assert 0.7 < f.live_err1() / f.fit.err1 < 1.3


def test_bridging_fit_is_never_skipped() -> None:
    """holt_winters short of 2 days fits Holt with a note; those refits are not skipped, so
    the seasonal model takes over as soon as its history exists."""
    f = run(settings(model="holt_winters"), steady, until=END)
    assert f.fit is not None
    assert "needs" in f.fit.note
    assert f.skipped == 0
    assert f.fits >= CHECKS


def test_auto_compares_again_when_new_models_become_eligible() -> None:
    """auto's refit is a full comparison as soon as the history admits a model the last
    comparison could not try (here a 1-hour season: seasonal models need 150 bins), even
    within select_every_s, and such a job is never skipped."""
    s = settings(model="auto", season_s=3600.0, seasonal_window_s=7200.0,
                 select_every_s=86400.0)
    f = run(s, steady, until=START + 2 * TICK_S)
    assert f.fit is not None
    assert "holt_winters" not in f.fit.scores  # 90 bins: too short for a season of 60
    rec = Recording()
    f = run(s, steady, until=END, inline=rec)
    # The first comparison (3 models), one more once 150 bins exist (6 models), then none:
    # refits in between fit the winner or are skipped.
    assert rec.jobs.count("auto") == 2, rec.jobs
    assert f._selected_n == len(models.CONCRETE)
