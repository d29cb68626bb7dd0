"""The scrape-time collector exports exactly what the per-label gauges did (issue 16).

`telemetry_scenario.prom` was rendered by the previous implementation (one `labels()` call per
series and tick) from `scenario()` below: several ticks with scale-ups, holds on missing data,
a clipped decision, metric samples with a missing key, a forecast, health events, then a
policy reload that removes a role and a pool that goes unobserved. The collector must give the
same families, HELP/TYPE lines, label sets and values. Only the `_created` timestamps of
counters and histograms and the two `*_timestamp_seconds` gauges may differ (wall-clock times of
the run) and the measured fetch time's `_sum`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from autoscaler import telemetry
from autoscaler.testing import Ticker, obs, pool_policy
from autoscaler.types import Role, SignalSample

GOLDEN = Path(__file__).parent / "fixtures" / "telemetry_scenario.prom"


class _Fixed:
    def __init__(self, samples: dict) -> None:  # type: ignore[type-arg]
        self.samples = samples

    async def fetch(self, targets: object, *, now: float) -> dict:  # type: ignore[type-arg]
        return self.samples


def scenario() -> telemetry.Telemetry:
    tel = telemetry.Telemetry()
    t = Ticker(pool_policy(
        prefill={"signals": [{"signal": "queue_depth", "target": 5}], "max_replicas": 10,
                 "behavior": {"stock_max_step": None}},
        decode={"signals": [{"signal": "kv_cache", "target": 0.8},
                            {"signal": "running", "target": 40}]},
    ))
    for i, (q, kv) in enumerate([(20.0, None), (50.0, 0.9), (5.0, 0.5)]):
        t.tick(i * 15, prefill=obs(2 + i, queue_depth=q), decode=obs(2, kv_cache=kv, running=30))
        tel.record_decision(t.decisions[-1], t.policy)
    samples = {
        ("p", Role.DECODE): {"request_rate": SignalSample(value=3.5, replicas=2),
                             "kv_cache": SignalSample(value=None, replicas=0)},
        ("p", Role.PREFILL): {"queue_depth": SignalSample(value=4.0, replicas=3)},
    }
    asyncio.run(telemetry.InstrumentedSource(_Fixed(samples), tel).fetch([], now=0))
    tel.record_forecast("p", "decode", series="request_rate", value=12.5, horizon_s=120)
    tel.config_reload(ok=True)
    tel.config_reload(ok=False)
    tel.set_leader(leader=True)
    tel.kubernetes_api_error(operation="patch_scale", code=409)
    tel.metric_source_error(query="ttft", reason="nan")
    tel.observe_tick(0.02)
    tel.observe_tick(0.7)
    # A reload to an aggregated pool: the prefill/decode series go, the new role's come.
    other = Ticker(pool_policy(aggregated={"signals": [{"signal": "running", "target": 8}]}))
    other.tick(60, aggregated=obs(1, running=16))
    tel.record_decision(other.decisions[-1], other.policy)
    return tel


def content(text: str) -> list[tuple[str, str, str, list[tuple[str, tuple, float]]]]:  # type: ignore[type-arg]
    out = []
    for fam in text_string_to_metric_families(text):
        samples = sorted((s.name, tuple(sorted(s.labels.items())),
                          0.0 if s.name.endswith(("_created", "_timestamp_seconds"))
                          or s.name == "pd_autoscaler_metric_fetch_duration_seconds_sum"
                          else s.value)
                         for s in fam.samples)
        out.append((fam.name, fam.type, fam.documentation, samples))
    return sorted(out)


# Families added since the golden file was rendered (refits run in worker processes now; the
# latency SLO of slo-kind roles, which the dashboard draws where guard targets would be).
NEW = {"pd_autoscaler_forecast_refits", "pd_autoscaler_forecast_refit_cpu_seconds",
       "pd_autoscaler_slo_target_seconds"}


def test_exposition_matches_the_per_label_implementation() -> None:
    now = content(scenario().render().decode())
    assert {f[0] for f in now} - {f[0] for f in content(GOLDEN.read_text())} == NEW
    assert [f for f in now if f[0] not in NEW] == content(GOLDEN.read_text())


def test_refits_are_exported_per_pool_with_their_cpu_seconds() -> None:
    from autoscaler.forecast.models import FitResult  # noqa: PLC0415

    tel = telemetry.Telemetry()
    tel.record_refit("p/decode", FitResult(ok=True, end_bin=1, cpu_s=1.5))
    tel.record_refit("p/decode", FitResult(ok=False, end_bin=2, cpu_s=0.25, error="x"))
    fams = {f[0]: f[3] for f in content(tel.render().decode())}
    pr = (("pool", "p"), ("role", "decode"))
    assert ("pd_autoscaler_forecast_refit_cpu_seconds_total", pr, 1.75) in fams[
        "pd_autoscaler_forecast_refit_cpu_seconds"]
    failed = (("pool", "p"), ("result", "failure"), ("role", "decode"))
    assert ("pd_autoscaler_forecast_refits_total", failed, 1.0) in fams[
        "pd_autoscaler_forecast_refits"]


def test_the_fast_writer_matches_prometheus_clients() -> None:
    """`render()` writes the per-pool families itself; prometheus_client's own writer over the
    same registry gives the same text, line for line (order included)."""
    from prometheus_client import generate_latest  # noqa: PLC0415

    tel = scenario()
    from autoscaler.forecast.models import FitResult  # noqa: PLC0415

    tel.record_refit('p/we"ird\\pool', FitResult(ok=True, end_bin=1, cpu_s=0.5))
    mine = tel.render().decode()
    theirs = generate_latest(tel.registry).decode()
    assert mine == theirs


def test_the_writers_caches_follow_changing_values_and_removed_series() -> None:
    """The fast writer keeps label text and formatted values between scrapes: scrape after
    scrape, as values change and a reload removes series, it still matches prometheus_client."""
    from prometheus_client import generate_latest  # noqa: PLC0415

    tel = telemetry.Telemetry()
    t = Ticker(pool_policy(
        prefill={"signals": [{"signal": "queue_depth", "target": 5}], "max_replicas": 10},
        decode={"signals": [{"signal": "running", "target": 40}]},
    ))
    for i, q in enumerate([20.0, 50.0, 5.0, 5.0, 0.25, 1e-7]):
        t.tick(i * 15, prefill=obs(2, queue_depth=q), decode=obs(2, running=30.0 + i))
        tel.record_decision(t.decisions[-1], t.policy)
        tel.record_forecast("p", "decode", series="request_rate", value=q / 3, horizon_s=120)
        assert tel.render().decode() == generate_latest(tel.registry).decode()
    other = Ticker(pool_policy(aggregated={"signals": [{"signal": "running", "target": 8}]}))
    other.tick(90, aggregated=obs(1, running=16))
    tel.record_decision(other.decisions[-1], other.policy)
    text = tel.render().decode()
    assert text == generate_latest(tel.registry).decode()
    assert 'role="prefill"' not in text.split("pd_autoscaler_forecast_value")[0]


def test_slo_kind_roles_export_their_latency_slo() -> None:
    """A role sized by the slo kind exports the TTFT floor and the ITL mean it sizes for (the
    dashboard's "vs SLO" panels draw them); a reactive role exports none; a reload that drops
    the slo kind drops its rows."""
    slo = {"policies": [{"kind": "slo", "profile": "llama-8b-h100", "ttft_floor_s": 0.4}]}
    t = Ticker(pool_policy(prefill=slo, decode={"signals": [{"signal": "running", "target": 8}]}))
    t.tick(15.0, prefill=obs(1, request_rate=None), decode=obs(1, running=2.0))
    tel = telemetry.Telemetry()
    tel.record_decision(t.decisions[-1], t.policy)
    fams = {f[0]: f[3] for f in content(tel.render().decode())}
    rows = fams["pd_autoscaler_slo_target_seconds"]
    assert sorted((dict(labels)["role"], dict(labels)["target"], v) for _, labels, v in rows) == [
        ("prefill", "itl_mean", 0.05), ("prefill", "ttft_floor", 0.4)]
    plain = Ticker(pool_policy(aggregated={"signals": [{"signal": "running", "target": 8}]}))
    plain.tick(15.0, aggregated=obs(1, running=2.0))
    tel.record_decision(plain.decisions[-1], plain.policy)
    fams = {f[0]: f[3] for f in content(tel.render().decode())}
    assert fams.get("pd_autoscaler_slo_target_seconds", []) == []
