"""PrometheusSource against a real Prometheus scraping fake vLLM pods with known values.

Aspects: every signal key and rate per role; both naming generations, the escaped spelling and
per-pod preference; data-parallel engines; idle pods; empty, NaN and stale series; selection by
extra labels; queries per tick independent of the number of pools.
"""

from __future__ import annotations

import dataclasses

import pytest

from autoscaler.metrics import queries
from autoscaler.metrics.lengths import prompt_length_cv
from autoscaler.metrics.source import RoleSamples
from autoscaler.types import PROMPT_LENGTH_CV, Role, SignalSample
from tests.prom import fleet as fl
from tests.prom.fakevllm import (
    E2E_BUCKETS,
    ITL_BUCKETS,
    TOKEN_BUCKETS,
    TTFT_BUCKETS,
    interpolated_quantile,
    rs_pod,
)
from tests.prom.promserver import PromServer

pytestmark = pytest.mark.prometheus

P, D, A = Role.PREFILL, Role.DECODE, Role.AGGREGATED


@pytest.fixture
async def samples(fleet: fl.Fleet) -> RoleSamples:
    src = fl.source(fleet.prom.url)
    try:
        return await src.fetch(fleet.targets(), now=0.0)
    finally:
        src.close()


def approx(sample: SignalSample, value: float, replicas: int, *, rel: float = 0.05) -> None:
    assert sample.value is not None, sample
    assert sample.value == pytest.approx(value, rel=rel, abs=1e-9), sample
    assert sample.replicas == replicas, sample


def test_prefill_decode_signals_match_ground_truth(samples: RoleSamples) -> None:
    """Every signal of a P/D pool is read per role as the fake pods define it."""
    p, d = samples[("alpha", P)], samples[("alpha", D)]
    approx(p["queue_depth"], 6.0, 3)  # mean of 4, 6, 8
    approx(p["kv_cache"], 0.3, 3)
    approx(p["running"], 2.0, 3)
    approx(p["batched_tokens"], 2048 / fl.MNBT, 3)
    approx(p["ttft_p90"], interpolated_quantile(TTFT_BUCKETS, 0.3, 0.9), 3)
    # TTFT p90 over the prefill-time p90 (0.2 s each, above the 167 ms floor).
    relative = interpolated_quantile(TTFT_BUCKETS, 0.3, 0.9) / interpolated_quantile(
        E2E_BUCKETS, 0.2, 0.9
    )
    approx(p["ttft_relative_p90_f167ms"], relative, 3)
    approx(d["running"], 40.0, 2)
    approx(d["kv_cache"], 0.7, 2)
    approx(d["batched_tokens"], 64 / fl.MNBT, 2)
    approx(d["itl_p50"], interpolated_quantile(ITL_BUCKETS, 0.03, 0.5), 2)


def test_rates_are_summed_over_replicas(samples: RoleSamples) -> None:
    """request/prompt/generation rates are sums over the role's pods."""
    p = samples[("alpha", P)]
    approx(p["request_rate"], 3 * 2.0, 3, rel=0.15)
    approx(p["prompt_tokens_rate"], 3 * 2.0 * 1000, 3, rel=0.15)
    approx(p["generation_tokens_rate"], 3 * 2.0 * 11, 3, rel=0.15)


def test_old_names_are_read(samples: RoleSamples) -> None:
    """gpu_cache_usage_perc and time_per_output_token_seconds (vLLM < 0.9) are found."""
    b = samples[("beta", A)]
    approx(b["kv_cache"], 0.5, 2)
    approx(b["itl_p50"], interpolated_quantile(ITL_BUCKETS, 0.045, 0.5), 2)


def test_escaped_names_are_read(samples: RoleSamples) -> None:
    """Series stored as vllm_... (escaped) are read like vllm:..."""
    g = samples[("gamma", A)]
    approx(g["queue_depth"], 3.0, 2)
    approx(g["kv_cache"], 0.4, 2)
    approx(g["batched_tokens"], 2048 / fl.MNBT, 2)
    approx(g["request_rate"], 4.0, 2, rel=0.15)


def test_new_name_wins_per_pod_and_engines_fold_into_pods(samples: RoleSamples) -> None:
    """A pod exposing both generations is read once, from the new name; DP engines add up to
    the pod's queue (10 per pod, not 5 or 20) and average to its KV usage."""
    d = samples[("delta", A)]
    approx(d["kv_cache"], 0.2, 2)
    approx(d["queue_depth"], 10.0, 2)
    approx(d["request_rate"], 4.0, 2, rel=0.15)


def test_idle_pods_read_zero_not_missing(samples: RoleSamples) -> None:
    """A pod with no engine steps has batched_tokens 0 and an idle role's latency reads 0."""
    i = samples[("idle", A)]
    approx(i["batched_tokens"], 0.0, 2)
    approx(i["ttft_p90"], 0.0, 2)
    approx(i["request_rate"], 0.0, 2)
    approx(i["kv_cache"], 0.05, 2)


def test_role_without_pods_is_missing(samples: RoleSamples) -> None:
    """No series at all: every key is missing with zero replicas."""
    e = samples[("empty", A)]
    assert set(e) == {
        "queue_depth",
        "batched_tokens",
        "kv_cache",
        "running",
        "ttft_p90",
        "itl_p50",
        "ttft_relative_p90_f167ms",
        "request_rate",
        "prompt_tokens_rate",
        "generation_tokens_rate",
    }
    for key, s in e.items():
        assert s.missing, key
        assert s.replicas == 0, key
        # The detail says how the pods were looked for, and what to do for other pod names.
        assert "looked for pods named empty-<hash>-<suffix> in namespace empty" in s.detail, key
        assert "metrics.pod_regex" in s.detail, key


def test_nan_pod_is_left_out(samples: RoleSamples) -> None:
    """A pod reporting NaN does not count: the value is the others' mean, replicas drop (partial)."""
    n = samples[("nanpool", A)]
    approx(n["queue_depth"], 2.0, 2)
    approx(n["kv_cache"], 0.5, 2)
    assert f"nan: {rs_pod('nanpool', 2)}" in n["queue_depth"].detail


def test_stale_pod_is_left_out(samples: RoleSamples) -> None:
    """A pod whose newest sample is older than max_sample_age_s does not count."""
    s = samples[("stale", A)]
    approx(s["queue_depth"], 5.0, 1)
    approx(s["kv_cache"], 0.5, 1)
    # Not counted either way; it is named as stale while Prometheus still returns its series
    # (queries now send age rows only for pods past max_sample_age_s, and a series past
    # Prometheus' own lookback is absent altogether, depending on the scrape timing).
    assert s["queue_depth"].replicas == 1
    detail = s["queue_depth"].detail
    assert f"stale: {rs_pod('stale', 1)}" in detail or detail == "1 pods", detail


def test_extra_labels_select_pods(samples: RoleSamples) -> None:
    """MetricMatch.labels narrows a pod regex to one model's pods."""
    approx(samples[("labels", A)]["queue_depth"], 7.0, 1)


async def test_queries_per_tick_do_not_grow_with_pools(fleet: fl.Fleet) -> None:
    """One query per signal key per tick, whether 1 pool or 9 are fetched (counted by
    Prometheus itself and by the source)."""
    src = fl.source(fleet.prom.url)
    prom: PromServer = fleet.prom
    try:
        await src.fetch(fleet.targets("alpha"), now=0.0)  # discovery happens on the first tick
        counts = []
        for pools in (("alpha",), ()):
            before = prom.self_counter("prometheus_http_requests_total", handler="/api/v1/query")
            await src.fetch(fleet.targets(*pools), now=1.0)
            after = prom.self_counter("prometheus_http_requests_total", handler="/api/v1/query")
            counts.append((after - before, src.stats.last_tick_queries))
    finally:
        src.close()
    # 7 signal keys + 3 rates.
    assert counts == [(10, 10), (10, 10)]


async def test_discovery_narrows_to_present_spellings(fleet: fl.Fleet) -> None:
    """The discovery query finds which spellings exist; families keep all of them only when
    none is present."""
    src = fl.source(fleet.prom.url)
    try:
        await src.fetch(fleet.targets("alpha"), now=0.0)
    finally:
        src.close()
    kv = src.names.present(queries.Family.KV_CACHE)
    assert kv == (
        "vllm:kv_cache_usage_perc",
        "vllm_kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    )
    assert src.names.present(queries.Family.WAITING) == (
        "vllm:num_requests_waiting",
        "vllm_num_requests_waiting",
    )


async def test_prompt_mix_is_read_from_the_length_histogram(fleet: fl.Fleet) -> None:
    """A role whose policies ask for PROMPT_LENGTH_CV gets it from the summed bucket rates of
    `vllm:request_prompt_tokens` (prompts of 200 and 1,800 tokens in equal shares: true CV 0.8,
    read through the buckets (100, 200] and (1000, 2000]); a role whose pods expose no such
    histogram reports it missing; a role that did not ask gets no such key."""
    asked = [dataclasses.replace(t, extra=(PROMPT_LENGTH_CV,)) for t in fleet.targets("alpha")]
    src = fl.source(fleet.prom.url)
    try:
        got = await src.fetch([*asked, *fleet.targets("beta")], now=0.0)
    finally:
        src.close()
    counts = [0.0] * (len(TOKEN_BUCKETS) + 1)
    counts[TOKEN_BUCKETS.index(200)] = 1.0
    counts[TOKEN_BUCKETS.index(2000)] = 1.0
    expected = prompt_length_cv(TOKEN_BUCKETS, counts, 1000.0)
    assert expected is not None
    assert 0.8 <= expected <= 0.95  # one bucket's width on top of the true 0.8
    approx(got[("alpha", P)][PROMPT_LENGTH_CV], expected, 3, rel=0.02)
    assert got[("alpha", D)][PROMPT_LENGTH_CV].value is None
    assert PROMPT_LENGTH_CV not in got[("beta", A)]


async def test_gauges_asked_as_extra_keys_are_read(fleet: fl.Fleet) -> None:
    """A role with no signals of its own whose policy asks for the waiting and running gauges
    (the slo kind, for arrivals) gets them, per replica as a configured signal would."""
    bare = [
        dataclasses.replace(
            t, spec=t.spec.model_copy(update={"signals": []}), extra=("queue_depth", "running")
        )
        for t in fleet.targets("alpha")
    ]
    src = fl.source(fleet.prom.url)
    try:
        got = await src.fetch(bare, now=0.0)
    finally:
        src.close()
    approx(got[("alpha", P)]["queue_depth"], 6.0, 3)
    approx(got[("alpha", P)]["running"], 2.0, 3)
    approx(got[("alpha", D)]["running"], 40.0, 2)
    assert "kv_cache" not in got[("alpha", P)]
