"""Engine scenarios: latency arithmetic on an idle system, chunked prefill, KV exhaustion and
preemption, cold start, drain, GPU-time accounting, and the closed-form decode against
step-by-step references (the engine's own k=1 mode and an independent naive loop)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler import errors
from autoscaler.profile import BUILTIN_PROFILES
from autoscaler.sim.engine import Simulation
from autoscaler.types import Role
from tests.sim.conftest import P8B, one_pool, small_profile

pytestmark = pytest.mark.sim


def expected_mean_itl(prompt: int, output: int, *, batch_context_extra: int = 0) -> float:
    """Mean of the decode steps of one request alone: contexts prompt+1 .. prompt+output-1."""
    steps = [P8B.decode_step_s(1, prompt + 1 + j + batch_context_extra) for j in range(output - 1)]
    return sum(steps) / len(steps)


def test_single_request_disaggregated_ttft_is_prefill_plus_transfer() -> None:
    """An idle P/D pair: TTFT = idle prefill + KV transfer; mean ITL = the decode step formula."""
    sim, pool = one_pool([0.5], [1000], [10])
    sim.advance_to(10)
    res = pool.results()
    assert res.ttft_s[0] == pytest.approx(P8B.idle_prefill_s(1000) + P8B.kv_transfer_s(1000))
    # max(alpha_d, 4 + 0.025*1000) + 4.26e-7*1000^2 ms = 29.426 ms (prefill gamma from
    # FlashAttention-3's H100 throughput, autoscaler/profile.py); 131072*1000/25e9 + 1.5 ms
    # = 6.74 ms.
    assert res.ttft_s[0] == pytest.approx(0.029426 + 0.00674288)
    assert res.mean_itl_s[0] == pytest.approx(expected_mean_itl(1000, 10))
    assert res.finish_s[0] == pytest.approx(0.5 + res.ttft_s[0] + 9 * res.mean_itl_s[0], rel=1e-12)


def test_single_request_aggregated() -> None:
    """An idle aggregated replica: TTFT = idle prefill; then one decode step per token."""
    sim, pool = one_pool([0.0], [500], [4], disaggregated=False)
    sim.advance_to(5)
    res = pool.results()
    assert res.ttft_s[0] == pytest.approx(P8B.idle_prefill_s(500))
    assert res.mean_itl_s[0] == pytest.approx(expected_mean_itl(500, 4))


def test_long_prompt_is_chunked_by_token_budget() -> None:
    """A 20k-token prompt takes three prefill steps: 8192 + 8192 + 3616 tokens, each chunk
    attending to the prefix computed before it (c² + 2·c·p), so the attention terms add up to
    the unchunked prompt's 20000²."""
    sim, pool = one_pool([0.0], [20_000], [2], disaggregated=False)
    sim.advance_to(5)
    m = 8192
    want = (
        P8B.prefill_step_s(m, m * m)
        + P8B.prefill_step_s(m, m * m + 2 * m * m)
        + P8B.prefill_step_s(3616, 3616**2 + 2 * 3616 * 2 * m)
    )
    assert m * m + (m * m + 2 * m * m) + (3616**2 + 2 * 3616 * 2 * m) == 20_000**2
    assert pool.results().ttft_s[0] == pytest.approx(want)
    assert want == pytest.approx(P8B.idle_prefill_s(20_000))


def test_long_prompt_ttft_is_quadratic_in_the_whole_prompt() -> None:
    """Chunking does not hide attention: a 64k prompt's TTFT grows with 64k², so it costs more
    than eight times an 8k prompt by the gamma·(64k² - 8·8k²) term (issue: long prompts were
    23-60 % too fast when each chunk was priced alone)."""
    sim, pool = one_pool([0.0, 100.0], [8192, 65_536], [2, 2], disaggregated=False)
    sim.advance_to(200)
    t8, t64 = pool.results().ttft_s
    extra = P8B.prefill_gamma_ms_per_token2 * (65_536**2 - 8 * 8192**2) / 1000.0
    assert t64 - 8 * t8 == pytest.approx(extra)
    # Seconds: the term the per-chunk pricing left out, 4.26e-7 x (64k² - 8·8k²) ms = 1.60 s
    # with the attention constant from FlashAttention-3's H100 throughput (2.4 s at the 7e-7 of
    # SIM-MODEL §2.8 when this test was written).
    assert extra > 1.5


def test_batched_decode_step_time() -> None:
    """Two requests decoding together: each step costs alpha + 2 beta + gamma (L1 + L2)."""
    # Both prefill in one step (admitted together), then decode side by side.
    sim, pool = one_pool([0.0, 0.0], [100, 300], [3, 3], disaggregated=False)
    sim.advance_to(5)
    res = pool.results()
    prefill = P8B.prefill_step_s(400, 100**2 + 300**2, seqs=2)
    assert res.first_token_s == pytest.approx([prefill, prefill])
    s1 = P8B.decode_step_s(2, 101 + 301)
    s2 = P8B.decode_step_s(2, 102 + 302)
    assert res.finish_s == pytest.approx([prefill + s1 + s2] * 2)


def test_kv_exhaustion_preempts_and_recomputes() -> None:
    """With a tiny KV cache the newest running request is preempted (LIFO), recomputed, and
    every request still finishes; the counter matches the per-request preemptions."""
    prof = small_profile(kv_capacity_tokens=1500)
    sim, pool = one_pool([0.0, 0.0, 0.0], [300, 300, 300], [400, 400, 400], disaggregated=False,
                         profile=prof)  # fmt: skip
    sim.run_until_idle(limit_s=600)
    res = pool.results()
    assert not np.isnan(res.finish_s).any()
    assert res.preemptions.sum() >= 1
    # LIFO: the first admitted request is never the victim.
    assert res.preemptions[0] == 0
    rep = sim.deployment(("llm", "a")).replicas[0]
    assert rep.metrics.preemptions == res.preemptions.sum()
    # Recompute: generation tokens counted per emitted token (no double counting).
    assert rep.metrics.generation_tokens == 1200
    # A preempted request's recompute shows as a long inter-token gap.
    assert res.mean_itl_s[2] > res.mean_itl_s[0]


def test_decode_replica_waits_for_kv_then_admits() -> None:
    """On a decode replica whose KV is full, a new request waits until a completion frees KV."""
    prof = small_profile(kv_capacity_tokens=1200)
    sim, pool = one_pool([0.0, 0.01], [1000, 1000], [50, 5], profile=prof)
    sim.run_until_idle(limit_s=600)
    res = pool.results()
    assert not np.isnan(res.finish_s).any()
    # The second request's first token arrives only after the first finished.
    assert res.first_token_s[1] >= res.finish_s[0]


def test_cold_start_delays_serving() -> None:
    """A replica requested at t=0 serves only after the cold start; GPU time counts from 0."""
    sim, pool = one_pool([1.0], [1000], [2], initial={Role.PREFILL: 0, Role.DECODE: 1})
    sim.scale(("llm", "p"), 1, reason="up")
    sim.advance_to(60)
    assert sim.deployment(("llm", "p")).serving == []
    assert math.isnan(pool.results().first_token_s[0])
    sim.advance_to(200)
    ttft = pool.results().ttft_s[0]
    want = P8B.cold_start_s - 1.0 + P8B.idle_prefill_s(1000) + P8B.kv_transfer_s(1000)
    assert ttft == pytest.approx(want)
    assert sim.gpu_seconds(role=Role.PREFILL) == pytest.approx(200.0)


def test_scale_down_drains_before_releasing_gpu() -> None:
    """A removed ready replica takes no new requests, finishes its own, then stops."""
    sim, pool = one_pool(
        [0.0, 0.0, 5.0], [100, 100, 100], [2000, 2000, 10], disaggregated=False,
        initial={Role.AGGREGATED: 2},
    )  # fmt: skip
    dep = sim.deployment(("llm", "a"))
    sim.advance_to(1.0)
    assert [r.outstanding for r in dep.replicas] == [1, 1]
    sim.scale(("llm", "a"), 1, reason="down")
    victim = dep.replicas[1]  # both ready at 0: the higher index goes first
    assert victim.status == "draining"
    sim.run_until_idle(limit_s=600)
    assert victim.status == "stopped"
    assert victim.t_stop == pytest.approx(pool.results().finish_s[1])
    # The request arriving after the scale-down went to the remaining replica.
    assert dep.replicas[0].metrics.success["stop"] == 2
    assert victim.gpu_seconds(sim.now) == pytest.approx(victim.t_stop)
    tl = sim.timeline("x", Role.AGGREGATED)
    assert list(tl.replicas) == [2, 1, 1]
    assert list(tl.draining) == [0, 1, 0]


def test_removing_a_starting_replica_stops_it_at_once() -> None:
    """Scale up then down before the cold start ends: the pending replica is dropped."""
    sim, _ = one_pool([], [], [], disaggregated=False)
    sim.scale(("llm", "a"), 3)
    sim.advance_to(10)
    sim.scale(("llm", "a"), 1)
    dep = sim.deployment(("llm", "a"))
    assert (dep.spec_replicas, len(dep.starting), len(dep.draining)) == (1, 0, 0)
    sim.advance_to(500)
    assert len(dep.serving) == 1
    assert sim.gpu_seconds() == pytest.approx(500 + 2 * 10)


def test_requests_wait_at_the_gateway_without_ready_replicas() -> None:
    """With zero decode replicas, prefilled requests queue until one is ready."""
    sim, pool = one_pool([0.0], [100], [3], initial={Role.PREFILL: 1, Role.DECODE: 0})
    sim.advance_to(30)
    assert math.isnan(pool.results().first_token_s[0])
    sim.scale(("llm", "d"), 1)
    sim.advance_to(P8B.cold_start_s + 40)
    assert pool.results().first_token_s[0] == pytest.approx(
        30 + P8B.cold_start_s + P8B.kv_transfer_s(100)
    )


def test_least_loaded_routing() -> None:
    """Requests spread over replicas by outstanding work."""
    sim, _ = one_pool([0.0] * 6, [100] * 6, [500] * 6, disaggregated=False,
                         initial={Role.AGGREGATED: 3})  # fmt: skip
    sim.advance_to(0.0)
    dep = sim.deployment(("llm", "a"))
    assert [r.outstanding for r in dep.replicas] == [2, 2, 2]


def test_random_routing_is_seeded_and_ignores_load() -> None:
    """`random` (a plain Kubernetes Service) draws a replica per request whatever the load: 60
    simultaneous requests over 3 replicas land unevenly, where least-loaded puts 20 on each;
    the same replay draws the same replicas."""
    counts = []
    for _ in range(2):
        sim, _ = one_pool([0.0] * 60, [100] * 60, [500] * 60, disaggregated=False,
                          initial={Role.AGGREGATED: 3}, routing="random")  # fmt: skip
        sim.advance_to(0.0)
        counts.append([r.outstanding for r in sim.deployment(("llm", "a")).replicas])
    assert counts[0] == counts[1]
    assert sum(counts[0]) == 60
    assert counts[0] != [20, 20, 20]
    assert min(counts[0]) > 0

def test_errors() -> None:
    """Unknown Deployments, negative replicas and time travel are refused."""
    sim, _ = one_pool([0.0], [10], [2])
    with pytest.raises(errors.ActuationError, match="llm/nope"):
        sim.scale(("llm", "nope"), 1)
    with pytest.raises(errors.ActuationError, match=">= 0"):
        sim.scale(("llm", "p"), -1)
    sim.advance_to(5)
    with pytest.raises(ValueError, match="back in time"):
        sim.advance_to(1)
    with pytest.raises(ValueError, match="KV capacity"):
        one_pool([0.0], [500_000], [2])


# --- closed form vs step by step --------------------------------------------------------------

_workload = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 3, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(1, 3000), min_size=n, max_size=n),
        st.lists(st.integers(1, 300), min_size=n, max_size=n),
    )
)


def _run(arr: list[float], prm: list[int], out: list[int], *, disagg: bool, kv: int,
         reps: int, k: int) -> tuple[Simulation, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    prof = small_profile(kv_capacity_tokens=kv, max_num_batched_tokens=2048)
    init = {Role.PREFILL: 1, Role.DECODE: reps} if disagg else {Role.AGGREGATED: reps}
    sim, pool = one_pool(sorted(arr), prm, out, disaggregated=disagg, profile=prof,
                         initial=init, max_segment_steps=k)  # fmt: skip
    # Scrape-like syncs in the middle of segments must not change the outcome.
    for t in np.arange(0.05, 60, 0.37):
        sim.advance_to(float(t))
        for rep in sim.replicas():
            rep.sync(sim.now)
    sim.run_until_idle(limit_s=3600)
    res = pool.results()
    return sim, res.first_token_s, res.finish_s, res.preemptions


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _workload,
    st.booleans(),
    st.sampled_from([3500, 8000, 430_000]),
    st.integers(1, 2),
)
def test_closed_form_matches_step_by_step(
    w: tuple[list[float], list[int], list[int]], disagg: bool, kv: int, reps: int
) -> None:
    """Jumping over decode steps gives the same request times, preemptions and metric totals
    as simulating every step (max_segment_steps=1), including under KV pressure."""
    arr, prm, out = w
    sim_a, ft_a, fin_a, pre_a = _run(arr, prm, out, disagg=disagg, kv=kv, reps=reps, k=0)
    sim_b, ft_b, fin_b, pre_b = _run(arr, prm, out, disagg=disagg, kv=kv, reps=reps, k=1)
    np.testing.assert_allclose(ft_a, ft_b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fin_a, fin_b, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(pre_a, pre_b)
    for ra, rb in zip(sim_a.replicas(live_only=False), sim_b.replicas(live_only=False),
                      strict=True):  # fmt: skip
        ma, mb = ra.metrics, rb.metrics
        assert ma.generation_tokens == mb.generation_tokens
        assert ma.itl.counts == mb.itl.counts
        assert ma.itl.sum == pytest.approx(mb.itl.sum, rel=1e-9)
        assert ma.iteration_tokens.counts == mb.iteration_tokens.counts
        assert ma.iteration_tokens.sum == mb.iteration_tokens.sum
    assert sim_a.events_processed <= sim_b.events_processed
    # Every token after the first is one ITL observation, and the gaps add up to the decode
    # time exactly (preemption stalls included, however often a request is preempted).
    itl_count = sum(r.metrics.itl.count for r in sim_a.replicas(live_only=False))
    itl_sum = sum(r.metrics.itl.sum for r in sim_a.replicas(live_only=False))
    out_arr = np.array(out)
    assert itl_count == int((out_arr - 1).sum())
    assert itl_sum == pytest.approx(float(np.sum(fin_a - ft_a)), rel=1e-9, abs=1e-9)


def _itl_totals(sim: Simulation) -> tuple[int, float]:
    reps = sim.replicas(live_only=False)
    return sum(r.metrics.itl.count for r in reps), sum(r.metrics.itl.sum for r in reps)


@pytest.mark.parametrize("k", [0, 1])
def test_itl_keeps_the_stall_of_a_recompute_preempted_again(k: int) -> None:
    """Regression (a saved hypothesis counterexample): request 1 is preempted while decoding,
    then preempted again part-way through its recompute prefill. The token after the recompute
    must be one ITL gap from the token before the *first* preemption; the engine used to restart
    the gap at the second preemption and lost ~67 ms of stall from the histogram sum."""
    prm = [396, 3000] + [1] * 10
    out = [55, 52] + [1] * 10
    prof = small_profile(kv_capacity_tokens=3500, max_num_batched_tokens=2048)
    sim, pool = one_pool([0.0] * 12, prm, out, disaggregated=False, profile=prof,
                         max_segment_steps=k)  # fmt: skip
    sim.run_until_idle(limit_s=600)
    res = pool.results()
    assert list(res.preemptions) == [0, 2] + [0] * 10  # the scenario still holds
    count, total = _itl_totals(sim)
    assert count == sum(out) - len(out)
    assert total == pytest.approx(float(np.sum(res.finish_s - res.first_token_s)), rel=1e-12)


@pytest.mark.parametrize("k", [0, 1])
def test_itl_keeps_the_gap_of_a_fresh_transfer_preempted_before_its_first_step(k: int) -> None:
    """Regression: on a decode replica with KV for exactly two more steps, request 1's transfer
    lands inside the second step of request 0's segment; at that boundary KV is short and the
    newcomer (LIFO) is preempted before its first decode step. Its last token is the landing,
    not the boundary: the recompute's ITL gap must start there."""
    prof = small_profile(kv_capacity_tokens=3038, max_num_batched_tokens=2048)
    sim, pool = one_pool([0.0, 0.2], [1000, 2000], [300, 50], profile=prof,
                         max_segment_steps=k)  # fmt: skip
    sim.run_until_idle(limit_s=600)
    res = pool.results()
    assert list(res.preemptions) == [0, 1]
    count, total = _itl_totals(sim)
    assert count == 300 - 1 + 50 - 1
    assert total == pytest.approx(float(np.sum(res.finish_s - res.first_token_s)), rel=1e-12)


def naive_aggregated(prompts: list[int], outputs: list[int]) -> list[float]:
    """Independent reference: all requests arrive at 0 on one aggregated replica with ample KV;
    one prefill step for all prompts, then one decode step at a time."""
    t = P8B.prefill_step_s(sum(prompts), sum(p * p for p in prompts), seqs=len(prompts))
    ctx = [p + 1 for p in prompts]
    left = [o - 1 for o in outputs]
    finish = [t if o == 1 else math.nan for o in outputs]
    while any(x > 0 for x in left):
        live = [i for i, x in enumerate(left) if x > 0]
        t += P8B.decode_step_s(len(live), sum(ctx[i] for i in live))
        for i in live:
            ctx[i] += 1
            left[i] -= 1
            if left[i] == 0:
                finish[i] = t
    return finish


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(1, 1000), min_size=n, max_size=n),
            st.lists(st.integers(1, 2000), min_size=n, max_size=n),
        )
    )
)
def test_closed_form_matches_naive_loop(w: tuple[list[int], list[int]]) -> None:
    """The engine's finish times equal a from-scratch per-step loop of the same formulas."""
    prompts, outputs = w
    sim, pool = one_pool([0.0] * len(prompts), prompts, outputs, disaggregated=False)
    sim.run_until_idle(limit_s=3600)
    np.testing.assert_allclose(pool.results().finish_s, naive_aggregated(prompts, outputs),
                               rtol=1e-9)  # fmt: skip


def test_fixed_replica_driver_over_a_generated_hour() -> None:
    """The backtest's shape: advance 15 s at a time, read status, scale on a fixed schedule;
    the engine serves a generated hour with sane latencies and exact GPU accounting."""
    from autoscaler.sim.workload import generate  # noqa: PLC0415

    trace = generate(duration_s=1800, seed=3)
    sim = Simulation()
    pool = sim.add_pool(
        "x",
        profile=P8B,
        deployments={Role.PREFILL: ("llm", "p"), Role.DECODE: ("llm", "d")},
        arrival_s=trace.arrival_s,
        prompt_tokens=trace.prompt_tokens,
        output_tokens=trace.output_tokens,
    )
    schedule = {600.0: 2, 1200.0: 1}  # decode replicas requested at these times
    t = 0.0
    while t < 1800:
        t += 15.0
        sim.advance_to(t)
        if t in schedule:
            sim.scale(("llm", "d"), schedule[t], reason="schedule")
    sim.run_until_idle()
    res = pool.results()
    assert not np.isnan(res.finish_s).any()
    assert np.nanpercentile(res.ttft_s, 50) < 0.2
    assert np.nanpercentile(res.mean_itl_s, 99) < 0.05
    gpu_p = sim.gpu_seconds(role=Role.PREFILL)
    assert gpu_p == pytest.approx(sim.now)
    dec = sim.deployment(("llm", "d"))
    assert dec.replicas[1].t_requested == 600.0
    assert dec.replicas[1].t_ready == 600.0 + P8B.cold_start_s
    assert [e.to_replicas for e in sim.scale_events()] == [2, 1]


# A TP4 profile with the all-reduce bandwidth term (front end left out, as for P8B).
P70B = BUILTIN_PROFILES["llama-70b-tp4-h100"].model_copy(update={"frontend_ms": 0.0})


@pytest.mark.parametrize(
    ("tokens", "want_ms"),
    [
        # Below the latency-bound size the all-reduces cost nothing beyond decode_alpha_ms.
        (80, 17.34),
        (253, 12.0 + 0.06 * 253),
        # Above it each further token pays 0.0115 ms of all-reduce bandwidth.
        (1000, 12.0 + 0.06 * 1000 + 0.0115 * (1000 - 253)),
        (8192, 12.0 + 0.06 * 8192 + 0.0115 * (8192 - 253)),
    ],
)
def test_tp_all_reduce_costs_only_above_its_latency_bound_size(tokens: int, want_ms: float) -> None:
    """The TP4 step's linear part: max(alpha_d, alpha_p + beta_p·T) + ar·max(T - T_ar, 0)."""
    assert P70B.linear_ms(tokens) == pytest.approx(want_ms)


def test_tp_all_reduce_in_a_chunked_long_prompt() -> None:
    """A 20k-token prompt on the TP4 profile: the engine's three prefill steps carry the
    all-reduce term of 8192, 8192 and 3616 tokens, as Profile.idle_prefill_s says."""
    sim, pool = one_pool([0.0], [20_000], [2], disaggregated=False, profile=P70B)
    sim.advance_to(30)
    m = 8192
    want = (
        2 * P70B.linear_ms(m) + P70B.linear_ms(3616) + P70B.prefill_gamma_ms_per_token2 * 20_000**2
    ) / 1000.0
    assert pool.results().ttft_s[0] == pytest.approx(want)
    assert want == pytest.approx(P70B.idle_prefill_s(20_000))
    assert P70B.linear_ms(m) - max(17.34, 12.0 + 0.06 * m) == pytest.approx(0.0115 * (m - 253))


@pytest.mark.parametrize("k", [0, 1])
def test_tp_all_reduce_in_large_decode_batches(k: int) -> None:
    """400 sequences decoding together (a step of 400 tokens, above the all-reduce's
    latency-bound 253): every decode step, jumped over in closed form or stepped one by one,
    costs Profile.decode_step_s with the all-reduce term."""
    n, prompt, out = 400, 8, 6
    sim, pool = one_pool([0.0] * n, [prompt] * n, [out] * n, disaggregated=False,
                         profile=P70B, max_segment_steps=k)  # fmt: skip
    sim.run_until_idle(limit_s=600)
    res = pool.results()
    steps = [P70B.decode_step_s(n, n * (prompt + 1 + j)) for j in range(out - 1)]
    np.testing.assert_allclose(res.finish_s - res.first_token_s, sum(steps), rtol=1e-9)
    assert P70B.decode_step_s(n, 0) * 1000 > 12.0 + 0.06 * n + 0.0115 * (n - 253)
