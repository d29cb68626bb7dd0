"""telemetry.Telemetry: what a decision, a fetch and the health hooks export (no server needed).

Aspects: replica gauges and signal values/targets per role; decision reasons as bounded labels;
missing values dropped rather than frozen; roles and sources leaving the policy are dropped;
the wrapped source exports samples and unavailability; an isolated registry.
"""

from __future__ import annotations

from collections.abc import Sequence

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoscaler import errors, telemetry
from autoscaler.metrics.source import RoleSamples, RoleTarget
from autoscaler.testing import Ticker, obs, pool_policy
from autoscaler.types import Role, SignalSample


def series(t: telemetry.Telemetry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(t.render().decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(t: telemetry.Telemetry, name: str, **labels: str) -> float | None:
    return series(t).get((name, frozenset(labels.items())))


def two_role_ticker() -> Ticker:
    return Ticker(
        pool_policy(
            prefill={
                "signals": [{"signal": "queue_depth", "target": 5}],
                "max_replicas": 10,
                "behavior": {"stock_max_step": None},
            },
            decode={"signals": [{"signal": "kv_cache", "target": 0.8}]},
        )
    )


def test_decision_exports_replicas_signals_and_reasons() -> None:
    """A scale-up and a missing-data hold show up as gauges and one decision count each."""
    t = two_role_ticker()
    t.tick(0, prefill=obs(2, queue_depth=20), decode=obs(2, kv_cache=None))
    tel = telemetry.Telemetry()
    tel.record_decision(t.decisions[-1], t.policy)
    pr = {"pool": "p", "role": "prefill"}
    assert value(tel, "pd_autoscaler_desired_replicas", **pr) == 8
    assert value(tel, "pd_autoscaler_current_replicas", **pr) == 2
    assert value(tel, "pd_autoscaler_max_replicas", **pr) == 10
    assert value(tel, "pd_autoscaler_signal_value", **pr, signal="queue_depth") == 20
    assert value(tel, "pd_autoscaler_signal_target", **pr, signal="queue_depth") == 5
    up = {"direction": "up", "driver": "queue_depth", "clipped_by": "none"}
    assert value(tel, "pd_autoscaler_decisions_total", **pr, **up) == 1
    d = {"pool": "p", "role": "decode"}
    # A missing value is not exported (no frozen last value), and is flagged.
    assert value(tel, "pd_autoscaler_signal_value", **d, signal="kv_cache") is None
    assert value(tel, "pd_autoscaler_signal_missing", **d, signal="kv_cache") == 1
    hold = {"direction": "hold", "driver": "missing-data", "clipped_by": "none"}
    assert value(tel, "pd_autoscaler_decisions_total", **d, **hold) == 1


def test_clipped_decisions_name_the_rule() -> None:
    """A decision clipped by max_replicas carries that rule as its label."""
    t = two_role_ticker()
    t.tick(0, prefill=obs(8, queue_depth=50), decode=obs(1, kv_cache=0.8))
    tel = telemetry.Telemetry()
    tel.record_decision(t.decisions[-1], t.policy)
    rd = t.decisions[-1].pools["p"].roles[Role.PREFILL]
    assert rd.desired == 10
    labels = {"pool": "p", "role": "prefill", "direction": "up", "driver": "queue_depth"}
    assert value(tel, "pd_autoscaler_decisions_total", **labels, clipped_by=rd.clipped_by[0]) == 1


def test_roles_leaving_the_policy_are_dropped() -> None:
    """After a reload without a pool, its series disappear instead of freezing."""
    t = two_role_ticker()
    t.tick(0, prefill=obs(2, queue_depth=5), decode=obs(2, kv_cache=0.8))
    tel = telemetry.Telemetry()
    tel.record_decision(t.decisions[-1], t.policy)
    other = Ticker(pool_policy(aggregated={"signals": [{"signal": "running", "target": 8}]}))
    other.tick(1, aggregated=obs(1, running=8))
    tel.record_decision(other.decisions[-1], other.policy)
    names = {(n, dict(lbl).get("role")) for n, lbl in series(tel)}
    assert ("pd_autoscaler_desired_replicas", "prefill") not in names
    assert ("pd_autoscaler_signal_value", "prefill") not in names
    assert ("pd_autoscaler_desired_replicas", "aggregated") in names


class _Fixed:
    def __init__(self, samples: RoleSamples | None) -> None:
        self.samples = samples

    async def fetch(self, targets: Sequence[RoleTarget], *, now: float) -> RoleSamples:
        if self.samples is None:
            raise errors.MetricsUnavailable("down")
        return self.samples


async def test_instrumented_source_exports_samples_and_outages() -> None:
    """What the source saw is exported per key; an outage counts as unavailable."""
    tel = telemetry.Telemetry()
    samples = {
        ("p", Role.DECODE): {
            "request_rate": SignalSample(value=3.5, replicas=2),
            "kv_cache": SignalSample(value=None, replicas=0),
        }
    }
    await telemetry.InstrumentedSource(_Fixed(samples), tel).fetch([], now=0)
    d = {"pool": "p", "role": "decode"}
    assert value(tel, "pd_autoscaler_observed_value", **d, key="request_rate") == 3.5
    assert value(tel, "pd_autoscaler_observed_reporting_replicas", **d, key="kv_cache") == 0
    assert value(tel, "pd_autoscaler_observed_value", **d, key="kv_cache") is None
    with pytest.raises(errors.MetricsUnavailable):
        await telemetry.InstrumentedSource(_Fixed(None), tel).fetch([], now=1)
    errs = {"query": "all", "reason": "unavailable"}
    assert value(tel, "pd_autoscaler_metric_source_errors_total", **errs) == 1


def test_health_metrics_and_isolated_registry() -> None:
    """Reload, leadership, Kubernetes errors and forecasts are exported; two instances do not
    share series and the global default registry is untouched."""
    a, b = telemetry.Telemetry(), telemetry.Telemetry()
    a.config_reload(ok=False)
    a.set_leader(leader=True)
    a.kubernetes_api_error(operation="patch_scale", code=409)
    a.record_forecast("p", "decode", series="request_rate", value=12.5, horizon_s=120)
    a.observe_tick(0.02)
    assert value(a, "pd_autoscaler_config_last_reload_successful") == 0
    assert value(a, "pd_autoscaler_config_reloads_total", result="failure") == 1
    assert value(a, "pd_autoscaler_leader") == 1
    k = {"operation": "patch_scale", "code": "409"}
    assert value(a, "pd_autoscaler_kubernetes_api_errors_total", **k) == 1
    fc = {"pool": "p", "role": "decode", "series": "request_rate"}
    assert value(a, "pd_autoscaler_forecast_value", **fc) == 12.5
    assert value(a, "pd_autoscaler_tick_duration_seconds_count") == 1
    assert value(b, "pd_autoscaler_leader") == 0
    assert value(b, "pd_autoscaler_tick_duration_seconds_count") == 0
    assert prometheus_client.REGISTRY.get_sample_value("pd_autoscaler_leader") is None
