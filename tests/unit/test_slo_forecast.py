"""The `slo` kind with a forecast plugged in (issue 14), on synthetic time with 15-s ticks.

Arrivals are Poisson counts per 15-s slot; the role's rates are their means over the last 60 s,
as the simulator's source reports them. Covers: constant traffic sizes like the slo kind without
a forecast (+-1 replica) once the forecast acts at 30 min; a ramp under way at 30 min is sized
ahead of the current rate, and the reason names the forecast; before 30 min the trend stands in
and the reason says why; config errors name the field; validate warns on short bins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler import errors
from autoscaler.forecast import refit
from autoscaler.policy.load import load_policy_file, parse_policy
from autoscaler.policy.reach import unreachable_targets
from autoscaler.policy.slo import SLOConfig, SLOPolicy
from autoscaler.types import Role
from tests.unit.test_slo_policy import make, tick

PROMPT, OUTPUT = 2000.0, 200.0  # tokens per request


@pytest.fixture(autouse=True)
def inline_refits() -> Iterator[None]:
    """Fits run synchronously, as in the simulator: deterministic, no thread outlives a test."""
    previous = refit.set_default(refit.Inline())
    yield
    refit.set_default(previous)


def slots(rate: Callable[[float], float], until: float, seed: int) -> Iterator[tuple[float, float]]:
    """(t, 60-s window request rate) every 15 s for Poisson arrivals at rate(t) req/s."""
    rng = np.random.default_rng(seed)
    counts: list[int] = []
    t = 0.0
    while t < until:
        t += 15.0
        counts.append(int(rng.poisson(rate(t - 7.5) * 15.0)))
        window = counts[-4:]
        yield t, sum(window) / (15.0 * len(window))


def replay(rate: Callable[[float], float], until: float, seed: int, **config: Any
           ) -> list[tuple[float, int, str]]:  # fmt: skip
    """(t, want, reason) per tick, for the prefill role of an slo policy with `config`."""
    pol: SLOPolicy = make(prompt_length_cv=1.0, **config)
    out = []
    for t, lam in slots(rate, until, seed):
        want, why, _ = tick(pol, t, req=lam, ptok=lam * PROMPT, gtok=lam * OUTPUT)
        out.append((t, want, why))
    return out


@pytest.mark.parametrize(("lam", "seed"), [(4.0, 1), (15.0, 2), (40.0, 3)])
def test_constant_poisson_sizes_like_without_forecast(lam: float, seed: int) -> None:
    """From 30 min of history the forecast is in the reason and the sizing stays within one
    replica of the same policy without a forecast (no burst memory: only steady sizing)."""
    base = {"burst_memory_s": 0}
    with_fc = replay(lambda t: lam, 5400, seed, forecast={}, **base)
    without = replay(lambda t: lam, 5400, seed, **base)
    acting = [(t, w) for t, w, why in with_fc if "forecast[" in why]
    assert acting
    assert acting[0][0] <= 1800 + 120
    plain = {t: w for t, w, _ in without}
    off = [(t, w, plain[t]) for t, w in acting if abs(w - plain[t]) > 1]
    assert not off, off[:5]


def _ramp(t: float) -> float:
    """2 req/s, then from 15 min +1 req/s per minute (17 req/s at 30 min, 32 by 45)."""
    return 2.0 + max(0.0, min(t, 2700.0) - 900.0) / 60.0


def test_ramp_is_sized_ahead_with_the_forecast_in_the_reason() -> None:
    """With 30-35 min of history the forecast sizes a ramp for more than the current rate (the
    same policy with neither trend nor forecast), and its reason names the forecast."""
    with_fc = replay(_ramp, 2700, 4, forecast={}, burst_memory_s=0, burst_shape_memory_s=0)
    now_only = replay(_ramp, 2700, 4, burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0)
    window = [(a, b) for a, b in zip(with_fc, now_only, strict=True) if 1800 <= a[0] <= 2100]
    ahead = [a for a, b in window if a[1] > b[1]]
    assert ahead
    assert all("forecast[" in a[2] and "sized for" in a[2] for a in ahead)


def test_trend_stands_in_before_the_forecast_can_act() -> None:
    """Before 30 min the reason says why there is no forecast and that the trend is used."""
    out = replay(lambda t: 5.0, 900, 5, forecast={})
    assert "forecast: history 15 min < 30 min, trend instead" in out[-1][2]


DOC = """
pools:
  - name: p
    roles:
      aggregated:
        deployment: {{namespace: t, name: p-agg}}
        max_replicas: 8
        policies: [{{kind: slo, profile: llama-8b-h100, forecast: {forecast}}}]
"""


@pytest.mark.parametrize(
    ("forecast", "message"),
    [
        pytest.param("{series: running}", "forecast.series: 'running' cannot be set here",
                     id="series"),
        pytest.param("{capacity_per_replica: 3}", "forecast.capacity_per_replica: 3.0 cannot",
                     id="capacity"),
        pytest.param("{tick_s: 30}", "forecast.tick_s: 30.0 cannot", id="tick"),
        pytest.param("{model: prophet}", "forecast.model: Input should be", id="model"),
    ],
)
def test_forecast_config_errors_name_the_field(forecast: str, message: str) -> None:
    with pytest.raises(errors.ConfigError) as exc:
        parse_policy(DOC.format(forecast=forecast), source="f.yaml")
    text = "\n".join(exc.value.problems)
    assert "f.yaml: pools.0.roles.aggregated.policies.0" in text
    assert message in text


def test_validate_warns_on_short_bins() -> None:
    policy = parse_policy(DOC.format(forecast="{bin_s: 15}"), source="f.yaml")
    (w,) = [x for x in unreachable_targets(policy) if "bin_s" in x]
    assert w.startswith("pools.0.roles.aggregated.policies.0: bin_s 15 is below min_bin_s 60")


def test_shipped_forecast_policy_builds_a_forecaster() -> None:
    """policies/llama-8b-slo-forecast.yaml loads and both roles forecast at cold start + tick."""
    path = Path(__file__).resolve().parents[2] / "policies" / "llama-8b-slo-forecast.yaml"
    pf = load_policy_file(path)
    for role, rs in pf.pools[0].roles.items():
        (ref,) = rs.policies
        cfg = SLOConfig.model_validate(ref.model_extra or {})
        pol = SLOPolicy(cfg, pool="llama-8b", role=role, spec=rs)
        assert pol.forecaster is not None
        assert pol.forecaster.settings.horizon_s == rs.cold_start_s + cfg.tick_s
        assert pol.forecaster.settings.min_history_s == 1800
        assert role in (Role.PREFILL, Role.DECODE)
