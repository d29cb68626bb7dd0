"""Prefix caching: per-replica LRU block caches whose hits remove prefill work, the routing
policies that make hits likely, the counters a vLLM pod exports, and the front-end delay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoscaler import errors
from autoscaler.policy.load import parse_policy
from autoscaler.sim.engine import Simulation
from autoscaler.sim.traces import load_trace
from autoscaler.types import Role
from tests.sim.conftest import P8B, one_pool, small_profile

pytestmark = pytest.mark.sim

BLOCK = 16


def blocks(prefix: int, n: int) -> list[int]:
    """n block hashes of a prompt family `prefix` (same family = same leading blocks)."""
    return [prefix * 1000 + b for b in range(n)]


def test_second_identical_prompt_skips_the_cached_blocks() -> None:
    """The same 4096-token prompt twice, far apart: the second prefills only its last token
    (vLLM computes at least one), so its TTFT is one small step; the counters say 4095 of the
    8192 queried tokens hit."""
    h = blocks(1, 4096 // BLOCK)
    sim, pool = one_pool([0.0, 10.0], [4096, 4096], [2, 2], disaggregated=False,
                         block_hashes=[h, h])  # fmt: skip
    sim.run_until_idle()
    ttft = pool.results().ttft_s
    assert ttft[0] == pytest.approx(P8B.idle_prefill_s(4096))
    # One token at offset 4095: max(alpha_d, alpha_p + beta_p) + gamma_p·(1 + 2·4095).
    assert ttft[1] == pytest.approx(P8B.prefill_step_s(1, 1 + 2 * 4095))
    assert ttft[1] < ttft[0] / 10
    m = sim.deployment(("llm", "a")).replicas[0].metrics
    assert (m.prefix_queries, m.prefix_hits) == (8192, 4095)


def test_shared_prefix_hits_only_the_leading_blocks() -> None:
    """Two prompts share their first 64 blocks and differ after: the second reuses exactly the
    shared 1024 tokens."""
    a = blocks(1, 128)
    b = a[:64] + blocks(2, 64)
    sim, pool = one_pool([0.0, 10.0], [2048, 2048], [2, 2], disaggregated=False,
                         block_hashes=[a, b])  # fmt: skip
    sim.run_until_idle()
    m = sim.deployment(("llm", "a")).replicas[0].metrics
    assert m.prefix_hits == 1024
    # The uncached 1024 tokens attend to the cached 1024 before them.
    want = P8B.prefill_step_s(1024, 1024**2 + 2 * 1024 * 1024)
    assert pool.results().ttft_s[1] == pytest.approx(want)


def test_lru_capacity_comes_from_the_kv_budget() -> None:
    """A cache of 2048 tokens (128 blocks) keeps the most recent prompt only: after A then B
    (each 128 blocks), A misses."""
    prof = small_profile(kv_capacity_tokens=2048 + 16)
    a, b = blocks(1, 128), blocks(2, 128)
    sim, _ = one_pool([0.0, 10.0, 20.0], [2048, 2048, 2048], [1, 1, 1], disaggregated=False,
                      block_hashes=[a, b, a], profile=prof)  # fmt: skip
    sim.run_until_idle()
    assert sim.deployment(("llm", "a")).replicas[0].metrics.prefix_hits == 0


@pytest.mark.parametrize(
    ("routing", "want_hits"), [("least-loaded", 2 * 2047), ("prefix-aware", 3 * 2047)]
)
def test_prefix_aware_routing_finds_the_cached_replica(routing: str, want_hits: int) -> None:
    """Two replicas. At t=0 replica 0 gets prompt `other` and replica 1 prompt `h`. Three more
    `h` requests then arrive one at a time on an idle fleet: least-loaded sends them to the
    oldest replica (a tie), where the first misses and the next two hit; prefix-aware sends all
    three to replica 1, which holds `h`, so all three hit."""
    h = blocks(7, 128)
    other = blocks(8, 128)
    arrival = [0.0, 0.0, 10.0, 20.0, 30.0]
    hashes = [other, h, h, h, h]
    sim, _ = one_pool(arrival, [2048] * 5, [1] * 5, disaggregated=False,
                      initial={Role.AGGREGATED: 2}, block_hashes=hashes,
                      routing=routing)  # fmt: skip
    sim.run_until_idle()
    reps = sim.deployment(("llm", "a")).replicas
    assert sum(r.metrics.prefix_hits for r in reps) == want_hits


def test_unknown_routing_is_refused() -> None:
    with pytest.raises(ValueError, match="routing must be one of"):
        one_pool([0.0], [10], [2], routing="round-robin")


def test_decode_replicas_do_not_look_up_prompts() -> None:
    """Disaggregated: the prefill replica caches; the decode replica gets KV over the wire."""
    h = blocks(3, 64)
    sim, _ = one_pool([0.0, 10.0], [1024, 1024], [4, 4], block_hashes=[h, h])
    sim.run_until_idle()
    p = sim.deployment(("llm", "p")).replicas[0].metrics
    d = sim.deployment(("llm", "d")).replicas[0].metrics
    assert p.prefix_hits == 1023
    assert (d.prefix_queries, d.prefix_hits) == (0, 0)


def test_frontend_delay_shifts_first_token_and_end() -> None:
    """frontend_ms delays a request's entry to the scheduler: TTFT and E2E grow by exactly it."""
    base = small_profile(frontend_ms=0.0)
    slow = small_profile(frontend_ms=25.0)
    out = []
    for prof in (base, slow):
        sim = Simulation()
        pool = sim.add_pool("x", profile=prof, deployments={Role.AGGREGATED: ("llm", "a")},
                            arrival_s=np.array([0.0, 0.3]), prompt_tokens=np.array([500, 800]),
                            output_tokens=np.array([20, 30]))  # fmt: skip
        sim.run_until_idle()
        out.append(pool.results())
    assert out[1].ttft_s == pytest.approx(out[0].ttft_s + 0.025)
    assert out[1].finish_s == pytest.approx(out[0].finish_s + 0.025)


def test_mooncake_hash_ids_reach_the_prefix_cache(tmp_path: Path) -> None:
    """A Mooncake trace's hash_ids (512-token blocks) are kept through loading, sorting and rate
    scaling, and a backtest-style simulation of it reports the prefix-cache hit rate: the second
    request repeats the first one's two leading blocks."""
    p = tmp_path / "mc.jsonl"
    p.write_text(
        '{"timestamp": 5000, "input_length": 1100, "output_length": 4, "hash_ids": [7, 8, 9]}\n'
        '{"timestamp": 0, "input_length": 1500, "output_length": 4, "hash_ids": [7, 8, 3]}\n'
        '{"timestamp": 9000, "input_length": 300, "output_length": 4}\n'
    )
    tr = load_trace(p)
    assert tr.block_tokens == 512
    # Sorted by time; whole blocks only (1100 tokens: 2 blocks, 1500: 2, 300: none).
    assert tr.block_hashes == [(7, 8), (7, 8), ()]
    assert load_trace(p, rate_scale=2.0, seed=3).block_hashes is not None
    sim = Simulation.from_policy(
        parse_policy(POLICY), {"x": tuple(tr)}, profile=small_profile()
    )
    sim.run_until_idle()
    pool = sim.pool("x")
    # Queries: 1500 + 1100 + 300 tokens; hits: the 1024 cached tokens of the second request.
    assert pool.prefix_cache_hit_rate() == pytest.approx(1024 / 2900)


def test_mooncake_hash_ids_must_be_integers(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": ["a"]}\n')
    with pytest.raises(errors.ConfigError, match="hash_ids") as ei:
        load_trace(p)
    assert "bad.jsonl" in str(ei.value)
    assert "expected a list of integers" in str(ei.value)


POLICY = """
pools:
  - name: x
    roles:
      aggregated:
        deployment: {name: x}
        max_replicas: 2
        signals: [{signal: kv_cache, target: 0.7}]
"""


def test_generated_sessions_share_prefixes_and_routing_matters() -> None:
    """A generated trace with 600 sessions of 2048-token system prompts, half the requests
    follow-up turns, on 4 replicas whose caches cannot hold every session: prefix-aware routing
    keeps a session on the replica that has it (hit rate 0.85 here) where least-loaded spreads
    it over all four (0.27); both hit, since prefixes repeat."""
    from autoscaler.sim.workload import AZURE_CONV, generate, with_sessions  # noqa: PLC0415

    tr = with_sessions(generate(AZURE_CONV.with_rate(40.0), duration_s=120, seed=2, diurnal=False),
                       sessions=600, prefix_tokens=2048, turns_share=0.5, seed=1)  # fmt: skip
    assert tr.block_hashes is not None
    assert all(len(h) == p // 16 for h, p in zip(tr.block_hashes, tr.prompt_tokens, strict=True))
    rates = {}
    for routing in ("least-loaded", "prefix-aware"):
        sim = Simulation()
        pool = sim.add_pool("x", profile=P8B, deployments={Role.AGGREGATED: ("llm", "a")},
                            arrival_s=tr.arrival_s, prompt_tokens=tr.prompt_tokens,
                            output_tokens=tr.output_tokens, initial_replicas={Role.AGGREGATED: 4},
                            block_hashes=tr.block_hashes, routing=routing)  # fmt: skip
        sim.run_until_idle()
        rates[routing] = pool.prefix_cache_hit_rate()
    assert 0.1 < rates["least-loaded"] < 0.5
    assert rates["prefix-aware"] > 0.75
