"""The slo kind recovers short-window rates from successive window rates, so it must know the
window its source rates over: the loop tells it (`Loop.set_policy` -> `bind_rate_window`), from
the source's own `rate_window_s` (the in-cluster Prometheus source's 120 s, the simulator's
60 s), also behind the controller's InstrumentedSource."""

from __future__ import annotations

import pytest

from autoscaler import telemetry
from autoscaler.loop import Loop
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.metrics.settings import PrometheusSettings
from autoscaler.metrics.source import rate_window_of
from autoscaler.policy.load import parse_policy
from autoscaler.policy.slo import SLOPolicy
from autoscaler.policy.slo_model import RateSeries
from autoscaler.testing import FakeActuator, FakeMetricsSource
from autoscaler.types import Role
from tests.unit.test_slo_policy import make

POLICY = """
pools:
  - name: p
    roles:
      prefill:
        deployment: {namespace: t, name: p-prefill}
        max_replicas: 8
        policies: [{kind: slo, profile: llama-8b-h100%s}]
      decode:
        deployment: {namespace: t, name: p-decode}
        max_replicas: 8
        policies: [{kind: slo, profile: llama-8b-h100%s}]
"""


class WindowedSource(FakeMetricsSource):
    def __init__(self, window_s: float) -> None:
        super().__init__()
        self.rate_window_s = window_s


def _slo(loop: Loop, role: Role) -> SLOPolicy:
    (pol,) = loop.policies[("p", role)]
    assert isinstance(pol, SLOPolicy)
    return pol


@pytest.mark.parametrize(
    ("source_window", "configured", "expected"),
    [
        pytest.param(120.0, "", 120.0, id="prometheus-default-120s"),
        pytest.param(60.0, "", 60.0, id="simulator-60s"),
        pytest.param(120.0, ", rate_window_s: 60", 120.0, id="the-source-wins"),
        pytest.param(None, ", rate_window_s: 90", 90.0, id="silent-source-configured"),
        pytest.param(None, "", 60.0, id="silent-source-default"),
    ],
)
def test_the_loop_tells_slo_policies_the_sources_window(
    source_window: float | None, configured: str, expected: float
) -> None:
    src = FakeMetricsSource() if source_window is None else WindowedSource(source_window)
    loop = Loop(parse_policy(POLICY % (configured, configured)), src, FakeActuator())
    for role in (Role.PREFILL, Role.DECODE):
        pol = _slo(loop, role)
        assert pol.window_s == expected
        assert pol.rate.window_s == pol.gen.window_s == pol.spread.window_s == expected


def test_window_found_behind_the_instrumented_source() -> None:
    prom = PrometheusSource(PrometheusSettings(url="http://127.0.0.1:9", rate_window_s=120.0))
    try:
        wrapped = telemetry.InstrumentedSource(prom, telemetry.Telemetry())
        assert rate_window_of(wrapped) == 120.0
        assert rate_window_of(prom) == 120.0
        assert rate_window_of(FakeMetricsSource()) is None
    finally:
        prom.close()


def test_a_burst_is_recovered_only_with_the_sources_window() -> None:
    """12 req/s for one 15-s tick over a 1 req/s base, reported as 120-s window rates: read with
    W = 120 the tick's rate comes back (12); read as if W were 60 it comes back near half."""
    tick, base, burst = 15.0, 1.0, 12.0

    def window_rate(t: float, w: float) -> float:
        # Arrivals in (t - w, t]: the burst fills (600, 615].
        inside = max(0.0, min(t, 615.0) - max(t - w, 600.0))
        return (base * w + (burst - base) * inside) / w

    right = RateSeries(memory_s=1800, halflife_s=600, trend_s=0, window_s=120, short=True)
    wrong = RateSeries(memory_s=1800, halflife_s=600, trend_s=0, window_s=60, short=True)
    got = {}
    for k in range(1, 42):
        t = k * tick
        got[t] = (right.add(t, window_rate(t, 120.0)), wrong.add(t, window_rate(t, 120.0)))
    assert got[615.0][0] == pytest.approx(burst)
    assert got[615.0][1] == pytest.approx(base + (burst - base) / 2, rel=0.05)


def test_bind_keeps_a_history_it_already_has() -> None:
    pol = make()
    pol.prime([(15.0, 5.0, 10_000.0, 1000.0)])
    pol.bind_rate_window(120.0)
    assert pol.window_s == 60.0
    assert len(pol.rate.samples) == 1
