"""A simulated pod exposes every metric family vLLM V1 always emits, with vLLM's names, types,
labels and buckets: diffed against a fixture derived from vLLM's metric definitions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.sim.vllm_metrics import VllmMetrics, buckets_1_2_5
from tests.sim.conftest import one_pool

pytestmark = pytest.mark.sim

FIXTURE = Path(__file__).parent / "fixtures" / "vllm_v1_families.yaml"


def exposed(text: str) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for fam in text_string_to_metric_families(text):
        labels: set[str] = set()
        bounds: list[float] = []
        reasons: set[str] = set()
        for s in fam.samples:
            labels |= {k for k in s.labels if k != "le"}
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf":
                b = float(s.labels["le"])
                if b not in bounds:
                    bounds.append(b)
            if "finished_reason" in s.labels:
                reasons.add(s.labels["finished_reason"])
        out[fam.name] = {"type": fam.type, "labels": labels, "buckets": bounds, "reasons": reasons}
    return out


def test_families_match_vllm_v1_definitions() -> None:
    want = yaml.safe_load(FIXTURE.read_text())["families"]
    # A fresh pod: nothing has happened yet, every family is still there.
    got = exposed(VllmMetrics(model_name="m", kv_capacity_tokens=16_000).render_text())
    assert sorted(got) == sorted(want)
    for name, spec in want.items():
        g = got[name]
        assert g["type"] == spec["type"], name
        assert g["labels"] == set(spec["labels"]), name
        if spec["type"] == "histogram":
            assert g["buckets"] == [float(b) for b in spec["buckets"]], name
        if "finished_reasons" in spec:
            assert g["reasons"] == set(spec["finished_reasons"]), name


def test_1_2_5_buckets() -> None:
    assert buckets_1_2_5(20) == (1, 2, 5, 10, 20)
    assert buckets_1_2_5(131_072)[-1] == 100_000


def test_per_request_histograms_and_decode_pod_tokens() -> None:
    """One request through an idle P/D pair: the P pod records it as a 1-token `length` request,
    the D pod as a `stop` request whose generated tokens are all its output tokens (the first
    one included) and whose first step counts the transferred prompt plus that token; the phase
    times add up to the e2e latency."""
    sim, pool = one_pool([0.0], [1000], [10])
    sim.run_until_idle()
    p = sim.deployment(("llm", "p")).replicas[0].metrics
    d = sim.deployment(("llm", "d")).replicas[0].metrics
    assert p.success == {"stop": 0, "length": 1, "abort": 0}
    assert d.success == {"stop": 1, "length": 0, "abort": 0}
    assert (p.generation_tokens, d.generation_tokens) == (1, 10)
    assert d.iteration_tokens.count == 9  # 9 decode steps after the landing
    # The first step carries the transferred prompt and the first token, then 1 token a step.
    assert d.iteration_tokens.sum == (1001 + 1) + 8
    assert d.gen_tokens_hist.sum == 10
    assert p.params_max_tokens.sum == 1
    res = pool.results()
    # The D pod's clock starts at the hand-off (the end of the prefill on the P pod).
    handoff = p.e2e.sum
    assert d.e2e.sum == pytest.approx(res.finish_s[0] - handoff)
    assert math.isclose(d.queue_time.sum + d.inference_time.sum, d.e2e.sum)
    assert math.isclose(d.prefill_time.sum + d.decode_time.sum, d.inference_time.sum)
    # Its "prefill" is the KV transfer: first token at the landing.
    assert handoff + d.queue_time.sum + d.prefill_time.sum == pytest.approx(res.first_token_s[0])
