"""vLLM metric state and exposition, the Prometheus-like SimMetricsSource, and SimActuator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from autoscaler import errors
from autoscaler.metrics.source import RATE_KEYS, RoleTarget
from autoscaler.sim.backends import SimActuator, SimMetricsSource, histogram_quantile
from autoscaler.sim.engine import Simulation
from autoscaler.sim.vllm_metrics import ITL_BUCKETS, Histogram, VllmMetrics
from autoscaler.spec import DeploymentRef, PolicyFile
from autoscaler.types import Role
from tests.sim.conftest import P8B

pytestmark = pytest.mark.sim


@given(
    st.floats(0.001, 0.2),
    st.floats(0.0, 0.01),
    st.integers(1, 500),
    st.integers(1, 5),
)
def test_observe_linear_equals_one_by_one(first: float, inc: float, k: int, w: int) -> None:
    """Bulk observation of a linear run of step times lands in the same buckets as a loop."""
    bulk = Histogram(ITL_BUCKETS)
    bulk.observe_linear(first, inc, k, w)
    loop = Histogram(ITL_BUCKETS)
    for j in range(k):
        loop.observe(first + inc * j, w)
    # Values within float noise of a bucket bound may legitimately land either side.
    near = inc > 0 and any(
        abs(b - (first + inc * round((b - first) / inc))) < 1e-12
        for b in ITL_BUCKETS
        if abs((b - first) / inc) < 1e9
    )
    if not near:
        assert bulk.counts == loop.counts
    assert bulk.count == loop.count
    assert bulk.sum == pytest.approx(loop.sum, rel=1e-9)


def test_render_text_new_and_old_names() -> None:
    """The exposition uses vLLM V1 names, labels and buckets; `old` uses the pre-rename names."""
    m = VllmMetrics(model_name="meta-llama/Llama-3.1-8B-Instruct", kv_capacity_tokens=430_000)
    m.waiting, m.running, m.kv_usage = 3, 7, 0.25
    m.prompt_tokens, m.generation_tokens, m.preemptions = 1000, 50, 2
    m.ttft.observe(0.3)
    m.itl.observe_linear(0.012, 0.0, 10, 3)
    m.iteration_tokens.observe(7, 10)
    m.finish("stop", 1.2)
    text = m.render_text()
    assert (
        'vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25'
        in text
    )
    assert "vllm:prompt_tokens_total{" in text
    assert 'vllm:request_success_total{engine="0",finished_reason="stop",' in text
    assert 'vllm:inter_token_latency_seconds_bucket{engine="0",le="0.025",' in text
    assert 'vllm:iteration_tokens_total_bucket{engine="0",le="8.0",' in text
    assert (
        'vllm:cache_config_info{block_size="16",engine="0",gpu_memory_utilization="0.9",num_gpu_blocks="26875"} 1.0'
        in text
    )
    assert "gpu_cache_usage_perc" not in text
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    old = m.render_text("old")
    assert "vllm:gpu_cache_usage_perc{" in old
    assert "vllm:time_per_output_token_seconds_count{" in old
    assert "kv_cache_usage_perc" not in old
    assert "inter_token_latency" not in old
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    itl = fams["vllm:inter_token_latency_seconds"]
    count = [s.value for s in itl.samples if s.name.endswith("_count")]
    assert count == [30.0]
    assert fams["vllm:num_requests_running"].samples[0].value == 7.0
    with pytest.raises(ValueError, match="naming"):
        m.render_text("bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("q", "bounds", "counts", "want"),
    [
        pytest.param(0.75, (0.1, 0.5), (2, 2, 0), 0.3, id="interpolate-in-bucket"),
        pytest.param(0.5, (0.1, 0.5), (4, 0, 0), 0.05, id="first-bucket-from-zero"),
        pytest.param(0.99, (0.1, 0.5), (1, 1, 8), 0.5, id="inf-bucket-gives-top-bound"),
        pytest.param(0.5, (0.1, 0.5), (0, 0, 0), math.nan, id="empty-is-nan"),
    ],
)
def test_histogram_quantile(
    q: float, bounds: tuple[float, ...], counts: tuple[int, ...], want: float
) -> None:
    """Prometheus's histogram_quantile arithmetic."""
    got = histogram_quantile(q, bounds, counts)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want)


def _sim(policy: PolicyFile, n: int = 400) -> Simulation:
    rng = np.random.default_rng(1)
    arrival = np.sort(rng.uniform(0, 300, n))
    work = (arrival, np.full(n, 1000, dtype=np.int64), np.full(n, 100, dtype=np.int64))
    return Simulation.from_policy(policy, {"chat": work, "agg": work}, profile=P8B)


async def test_metrics_source_signals(policy: PolicyFile) -> None:
    """Signals follow the PromQL definitions and refresh only at scrape times."""
    sim = _sim(policy)
    src = SimMetricsSource(sim, scrape_interval_s=15, window_s=60)
    pool = policy.pool("chat")
    targets = [RoleTarget("chat", role, spec) for role, spec in pool.roles.items()]
    out = await src.fetch(targets, now=120.0)
    pre = out[("chat", Role.PREFILL)]
    dec = out[("chat", Role.DECODE)]
    assert set(pre) == {"queue_depth", "batched_tokens", "ttft_p90", *RATE_KEYS, "prompt_length_cv"}
    assert set(dec) == {"kv_cache", "running", "itl_p50", *RATE_KEYS, "prompt_length_cv"}
    # Every prompt is 1000 tokens: the (500, 1000] bucket's width is all the spread there is.
    assert pre["prompt_length_cv"].value is not None
    assert pre["prompt_length_cv"].value < 0.3
    # ~1.33 req/s x 1000 prompt tokens; counters over the 60 s window.
    assert pre["prompt_tokens_rate"].value == pytest.approx(1333, rel=0.25)
    assert dec["generation_tokens_rate"].value == pytest.approx(133, rel=0.3)
    assert pre["request_rate"].value == pytest.approx(1.33, rel=0.25)
    # One prompt of 1000 tokens (+1 generated) per prefill step: 1001 / 8192.
    assert pre["batched_tokens"].value == pytest.approx(1001 / 8192, rel=0.05)
    assert pre["batched_tokens"].replicas == 1
    assert 0 < pre["ttft_p90"].value < 0.1
    # Single-request steps of ~6.6 ms at low batch land in the first ITL bucket.
    assert 0 < dec["itl_p50"].value <= 0.01
    assert 0 <= dec["kv_cache"].value < 0.05
    # Between scrapes nothing moves.
    again = await src.fetch(targets, now=134.0)
    assert again[("chat", Role.PREFILL)]["prompt_tokens_rate"] == pre["prompt_tokens_rate"]


async def test_extra_gauges_are_reported_when_a_policy_asks(policy: PolicyFile) -> None:
    """Keys a role's policies ask for (`RoleTarget.extra`, e.g. the slo kind's waiting and
    running gauges) are reported like configured signals; other extras are not invented."""
    sim = _sim(policy)
    src = SimMetricsSource(sim, scrape_interval_s=15, window_s=60)
    pool = policy.pool("chat")
    spec = pool.roles[Role.DECODE]  # configures running, not queue_depth
    target = RoleTarget("chat", Role.DECODE, spec, extra=("queue_depth", "running", "nope"))
    dec = (await src.fetch([target], now=120.0))[("chat", Role.DECODE)]
    plain = (await src.fetch([RoleTarget("chat", Role.DECODE, spec)], now=120.0))[
        ("chat", Role.DECODE)
    ]
    assert "queue_depth" not in plain
    assert dec["queue_depth"].value is not None
    assert dec["queue_depth"].value >= 0.0
    assert dec["running"] == plain["running"]
    assert "nope" not in dec


async def test_idle_replica_reports_zero_not_missing(policy: PolicyFile) -> None:
    """After the load stops, batched_tokens is 0 (idle), latency quantiles are missing."""
    sim = _sim(policy)
    src = SimMetricsSource(sim, scrape_interval_s=15, window_s=60)
    spec = policy.pool("chat").roles[Role.PREFILL]
    out = await src.fetch([RoleTarget("chat", Role.PREFILL, spec)], now=600.0)
    s = out[("chat", Role.PREFILL)]
    assert s["batched_tokens"].value == 0.0
    assert s["queue_depth"].value == 0.0
    assert s["ttft_p90"].missing
    assert s["request_rate"].value == 0.0


async def test_new_replica_reports_gauges_then_rates(policy: PolicyFile) -> None:
    """A replica that just became ready has gauges at its first scrape, rates one scrape later."""
    sim = _sim(policy)
    src = SimMetricsSource(sim, scrape_interval_s=15, window_s=60)
    act = SimActuator(sim)
    spec = policy.pool("agg").roles[Role.AGGREGATED]
    ref = spec.deployment
    sim.advance_to(10)
    await act.scale(ref, 2, reason="test")
    assert await act.status(ref) == type(await act.status(ref))(replicas=2, ready=1, pending=1)
    ready_at = 10 + P8B.cold_start_s
    first_scrape = math.ceil(ready_at / 15) * 15
    out = await src.fetch([RoleTarget("agg", Role.AGGREGATED, spec)], now=first_scrape)
    s = out[("agg", Role.AGGREGATED)]
    assert s["queue_depth"].replicas == 2
    assert s["request_rate"].replicas == 1
    out = await src.fetch([RoleTarget("agg", Role.AGGREGATED, spec)], now=first_scrape + 15)
    assert out[("agg", Role.AGGREGATED)]["request_rate"].replicas == 2
    st_ = await act.status(ref)
    assert (st_.replicas, st_.ready, st_.pending) == (2, 2, 0)


async def test_actuator_unknown_deployment(policy: PolicyFile) -> None:
    """An unknown Deployment is an ActuationError, as with the Kubernetes actuator."""
    act = SimActuator(_sim(policy))
    with pytest.raises(errors.ActuationError):
        await act.status(DeploymentRef(namespace="llm", name="nope"))


def test_scrapes_stay_on_their_grid_when_attached_late(policy: PolicyFile) -> None:
    """A source attached mid-run scrapes at the next multiple of its interval, never the past."""
    sim = _sim(policy)
    sim.advance_to(100.0)
    seen: list[float] = []
    sim.every(15.0, seen.append)
    sim.advance_to(140.0)
    assert seen == [105.0, 120.0, 135.0]
