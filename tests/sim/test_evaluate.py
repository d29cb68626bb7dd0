"""Evaluation arithmetic: SLO verdicts, percentiles, reversals, GPU-hours and the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscaler.sim.engine import RequestResults, ScaleEvent
from autoscaler.sim.evaluate import (
    SLO,
    count_reversals,
    evaluate,
    idle_prefill_s,
    oracle,
    request_outcome,
)
from autoscaler.types import Role
from tests.sim.conftest import P8B, one_pool

pytestmark = pytest.mark.sim


def _results(
    ttft: list[float], itl: list[float], prompt: list[int], output: list[int]
) -> RequestResults:
    arrival = np.zeros(len(ttft))
    first = np.array(ttft, dtype=np.float64)
    out = np.array(output, dtype=np.int64)
    finish = first + np.nan_to_num(np.array(itl)) * np.maximum(out - 1, 0)
    return RequestResults(
        arrival_s=arrival,
        prompt_tokens=np.array(prompt, dtype=np.int64),
        output_tokens=out,
        first_token_s=first,
        finish_s=finish,
        preemptions=np.zeros(len(ttft), dtype=np.int64),
    )


def test_slo_verdicts() -> None:
    """TTFT limit = max(0.5 s, 3 x idle prefill); mean ITL <= 50 ms; 1-token outputs pass ITL."""
    long_idle = P8B.idle_prefill_s(16_384)  # two full chunks: 2 x 0.26 s = 0.52 s
    assert 3 * long_idle > 0.5
    res = _results(
        ttft=[0.49, 0.51, 1.5, 1.6, 0.1, 0.1, math.nan],
        itl=[0.01, 0.01, 0.01, 0.01, 0.0499, 0.0501, math.nan],
        prompt=[100, 100, 16_384, 16_384, 100, 100, 100],
        output=[10, 10, 10, 10, 10, 10, 10],
    )
    res.finish_s[6] = math.nan  # unfinished
    out = request_outcome(res, P8B, SLO())
    assert out.ttft_limit_s[0] == 0.5
    assert out.ttft_limit_s[2] == pytest.approx(3 * long_idle)
    assert out.met.tolist() == [True, False, True, False, True, False, False]
    one = _results([0.1], [math.nan], [100], [1])
    assert request_outcome(one, P8B).met.tolist() == [True]


def test_idle_prefill_vectorised_matches_profile() -> None:
    """The vectorised idle prefill equals Profile.idle_prefill_s, chunking included."""
    prompts = np.array([1, 100, 8192, 8193, 20_000])
    np.testing.assert_allclose(
        idle_prefill_s(P8B, prompts), [P8B.idle_prefill_s(int(p)) for p in prompts]
    )


def _ev(t: float, role: Role, a: int, b: int) -> ScaleEvent:
    return ScaleEvent(t, "x", role, a, b, "")


@pytest.mark.parametrize(
    ("events", "want"),
    [
        pytest.param([_ev(0, Role.DECODE, 1, 2), _ev(300, Role.DECODE, 2, 1)], 1, id="up-down"),
        pytest.param([_ev(0, Role.DECODE, 1, 2), _ev(700, Role.DECODE, 2, 1)], 0, id="too-late"),
        pytest.param([_ev(0, Role.DECODE, 1, 2), _ev(60, Role.DECODE, 2, 3)], 0, id="same-way"),
        pytest.param([_ev(0, Role.DECODE, 1, 2), _ev(60, Role.PREFILL, 2, 1)], 0, id="other-role"),
        pytest.param(
            [_ev(0, Role.DECODE, 3, 2), _ev(60, Role.DECODE, 2, 3), _ev(120, Role.DECODE, 3, 2)],
            2,
            id="flapping",
        ),
    ],
)
def test_reversals(events: list[ScaleEvent], want: int) -> None:
    """A reversal is an opposite change of the same role within 10 minutes."""
    assert count_reversals(events) == want


def test_oracle_worked_example() -> None:
    """The docstring's capacity arithmetic, and replicas per minute from demand."""
    # One minute: 60 requests of 1500 prompt tokens (1 req/s) -> 1500 tok/s.
    n = 60
    t = np.linspace(0, 59, n)
    o = oracle(t, np.full(n, 1500), np.full(n, 100), P8B, disaggregated=True)
    assert o.prefill_capacity_tok_s == pytest.approx(1000 / (4 / 8192 + 0.025 + 7e-7 * 1500))
    assert o.replicas[Role.PREFILL].tolist() == [1]
    # 80 requests/s of 1500 prompt tokens = 120k tok/s -> 4 replicas at 37.7k each.
    n = 4800
    t = np.linspace(0, 59.9, n)
    o = oracle(t, np.full(n, 1500), np.full(n, 1), P8B, disaggregated=True)
    assert o.replicas[Role.PREFILL].tolist() == [4]
    assert o.gpu_hours == pytest.approx((4 + 1) / 60)
    agg = oracle(t, np.full(n, 1500), np.full(n, 1), P8B, disaggregated=False)
    assert agg.replicas[Role.AGGREGATED].tolist() == [4]


def test_oracle_decode_capacity_at_itl_slo() -> None:
    """Decode capacity: the largest batch whose step stays within 50 ms (§ worked example)."""
    n = 600
    t = np.linspace(0, 59.9, n)
    # Context prompt + output/2 = 1150 + 50 = 1200 tokens.
    o = oracle(t, np.full(n, 1150), np.full(n, 100), P8B, disaggregated=True)
    # The ITL bound allows 426 sequences; KV (430k tokens / 1200) only 358.
    assert math.floor(43.5 / (0.03 + 6e-5 * 1200)) == 426
    bstar = 430_000 // 1200
    assert o.decode_capacity_tok_s[0] == pytest.approx(
        bstar / (6.5 + (0.03 + 6e-5 * 1200) * bstar) * 1000
    )


def test_evaluate_a_run() -> None:
    """evaluate() sums GPU-hours per role, counts events and reversals, and reports SLOs."""
    sim, _ = one_pool([0.0, 1.0, 2.0], [100, 200, 300], [5, 5, 5])
    sim.advance_to(100)
    sim.scale(("llm", "d"), 2)
    sim.advance_to(200)
    sim.scale(("llm", "d"), 1)
    sim.advance_to(3600)
    ev = evaluate(sim, "x")
    assert ev.requests == ev.finished == 3
    assert ev.slo_attainment == 1.0
    assert ev.gpu_hours_by_role[Role.PREFILL] == pytest.approx(1.0)
    # The second decode replica was requested at 100 s and dropped (still starting) at 200 s.
    assert ev.gpu_hours_by_role[Role.DECODE] == pytest.approx(1.0 + 100 / 3600)
    assert (ev.scale_events, ev.reversals) == (2, 1)
    assert ev.oracle_gpu_hours == pytest.approx(2 / 60)
    assert ev.ttft_p50_s < 0.05
