"""Streaming trace replay: `iter_trace` reads a file chunk by chunk, in time order, and stops
at the end of a window; the result is the trace `load_trace` holds whole."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from autoscaler import errors
from autoscaler.policy.load import load_policy_file
from autoscaler.profile import builtin
from autoscaler.sim import backtest as bt_mod
from autoscaler.sim.backtest import default_policy_path, quiet_logs, run_backtest
from autoscaler.sim.baselines import KEDA_QUEUE
from autoscaler.sim.engine import Simulation
from autoscaler.sim.evaluate import request_outcome
from autoscaler.sim.traces import Trace, TraceStream, iter_trace, load_trace, window
from autoscaler.sim.workload import AZURE_CODE, generate

pytestmark = pytest.mark.sim


def _generic(tmp_path: Path, trace: Trace, name: str = "t.csv") -> Path:
    p = tmp_path / name
    rows = zip(trace.arrival_s.tolist(), trace.prompt_tokens.tolist(),
               trace.output_tokens.tolist(), strict=True)  # fmt: skip
    p.write_text(
        "timestamp_s,input_tokens,output_tokens\n"
        + "".join(f"{a!r},{b},{c}\n" for a, b, c in rows),
        encoding="utf-8",
    )
    return p


def _joined(chunks: list[Trace]) -> Trace:
    return Trace(
        np.concatenate([c.arrival_s for c in chunks]),
        np.concatenate([c.prompt_tokens for c in chunks]),
        np.concatenate([c.output_tokens for c in chunks]),
    )


def _same(a: Trace, b: Trace) -> None:
    assert a.arrival_s.tolist() == b.arrival_s.tolist()
    assert a.prompt_tokens.tolist() == b.prompt_tokens.tolist()
    assert a.output_tokens.tolist() == b.output_tokens.tolist()


@pytest.mark.parametrize(
    ("start_s", "duration_s", "speedup"),
    [(0.0, None, 1.0), (0.0, 600.0, 1.0), (900.0, 1200.0, 1.0), (450.0, None, 2.0)],
)
def test_stream_equals_whole_load(
    tmp_path: Path, start_s: float, duration_s: float | None, speedup: float
) -> None:
    """Chunks of 97 rows, joined, are the in-memory trace (and its window) value for value."""
    path = _generic(tmp_path, generate(AZURE_CODE, duration_s=3600, seed=4, diurnal=False))
    whole = load_trace(path, speedup=speedup, start_s=start_s, duration_s=duration_s)
    chunks = list(
        iter_trace(path, speedup=speedup, start_s=start_s, duration_s=duration_s, chunk_rows=97)
    )
    assert len(chunks) > 3
    assert all(len(c.arrival_s) <= 97 for c in chunks)
    _same(_joined(chunks), whole)
    full = load_trace(path, speedup=speedup)
    _same(window(full, start_s=start_s, duration_s=duration_s), whole)


def test_window_reads_no_further_than_its_end(tmp_path: Path) -> None:
    """A broken row after the window is never read by the stream (the whole load fails on it)."""
    path = _generic(tmp_path, generate(AZURE_CODE, duration_s=1800, seed=1, diurnal=False))
    with path.open("a", encoding="utf-8") as fh:
        fh.write("5000.0,many,3\n")
    got = _joined(list(iter_trace(path, duration_s=600.0, chunk_rows=50)))
    assert got.arrival_s[-1] <= 600.0
    with pytest.raises(errors.ConfigError, match="not a number"):
        load_trace(path)


def test_stream_refuses_rows_out_of_time_order(tmp_path: Path) -> None:
    """load_trace sorts; a stream cannot, and names the offending line instead."""
    p = tmp_path / "unsorted.csv"
    p.write_text(
        "timestamp_s,input_tokens,output_tokens\n1.0,10,2\n3.0,10,2\n2.0,10,2\n", encoding="utf-8"
    )
    assert load_trace(p).arrival_s.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(errors.ConfigError, match=r"unsorted.csv: line 4: .*sorted by time"):
        list(iter_trace(p))


def test_stream_mooncake_keeps_block_hashes(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    recs = [
        {"timestamp": 1000 * i, "input_length": 1024, "output_length": 4, "hash_ids": [i, i + 1]}
        for i in range(10)
    ]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    chunks = list(iter_trace(p, start_s=2.0, duration_s=5.0, chunk_rows=3))
    whole = load_trace(p, start_s=2.0, duration_s=5.0)
    assert [h for c in chunks for h in (c.block_hashes or [])] == whole.block_hashes
    assert whole.block_hashes == [(i, i + 1) for i in range(2, 8)]
    _same(_joined(chunks), whole)


# --- replaying a stream -------------------------------------------------------------------------

P8B = builtin("llama-8b-h100")


@pytest.fixture(scope="module")
def code_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated bursty hour at 3x the coding trace's rate, written as a generic CSV."""
    tr = generate(AZURE_CODE.with_rate(3 * AZURE_CODE.mean_rate_rps), duration_s=3600, seed=9,
                  diurnal=False)  # fmt: skip
    return _generic(tmp_path_factory.mktemp("stream"), tr)


def test_streamed_pool_gives_the_per_request_results_of_arrays(code_trace: Path) -> None:
    """Chunk boundaries change nothing: a fixed fleet fed 500-request chunks from disk finishes
    every request at the same instant as the same fleet fed the whole arrays."""
    policy = load_policy_file(default_policy_path())
    pool = policy.pools[0].name
    whole = load_trace(code_trace)
    reps = dict.fromkeys(policy.pools[0].roles, 2)
    a = Simulation.from_policy(policy, {pool: tuple(whole)}, profile=P8B,
                               initial_replicas={pool: reps})  # fmt: skip
    b = Simulation.from_policy(policy, {pool: TraceStream(code_trace, chunk_rows=500)},
                               profile=P8B, initial_replicas={pool: reps})  # fmt: skip
    for sim in (a, b):
        sim.advance_to(whole.duration_s)
        sim.run_until_idle()
    ra, rb = a.pool(pool).results(), b.pool(pool).results()
    assert len(rb.arrival_s) == len(whole.arrival_s) > 10_000
    for field in ("arrival_s", "first_token_s", "finish_s", "preemptions"):
        assert getattr(ra, field).tolist() == getattr(rb, field).tolist(), field


def test_window_replay_equals_the_same_window_cut_from_the_full_trace(code_trace: Path) -> None:
    """`backtest --stream --start-s 1200 --duration-s 1500` (read from disk, judged as requests
    finish) reports what the in-memory backtest of that window of the fully loaded trace does:
    the same requests, attainment, GPU-hours, scale events and oracle; latency percentiles as
    the tally defines them: the order statistic at rank q/100 x (n - 1) rounded down, at its
    0.1 % bin's centre (within 0.05 %). The in-memory evaluation's np.percentile interpolates
    toward the next order statistic, which can lie anywhere above it (0.1 %, 0.11 % and 0.39 %
    on this window as the profile and the policy changed), so the streamed figure is checked
    against the same order statistic of the in-memory run's own outcomes."""
    policy = load_policy_file(default_policy_path())
    cut = window(load_trace(code_trace), start_s=1200.0, duration_s=1500.0)
    stream = TraceStream(code_trace, start_s=1200.0, duration_s=1500.0, chunk_rows=700)
    with quiet_logs():
        runs = [
            run_backtest(
                tr,
                trace_name="w",
                policies=[("policy", policy)],
                baseline_names=[KEDA_QUEUE],
                profile=P8B,
            )
            for tr in (cut, stream)
        ]
    mem, streamed = runs
    assert streamed.requests == mem.requests == len(cut.arrival_s)
    assert streamed.horizon_s == mem.horizon_s
    assert streamed.oracle_gpu_hours == mem.oracle_gpu_hours
    for name, run in mem.runs.items():
        x, y = run.evaluation, streamed.runs[name].evaluation
        assert y.finished == x.finished == x.requests
        assert (y.slo_attainment, y.ttft_attainment, y.itl_attainment) == (
            x.slo_attainment, x.ttft_attainment, x.itl_attainment)  # fmt: skip
        assert y.gpu_hours_by_role == x.gpu_hours_by_role
        assert (y.scale_events, y.reversals, y.preemptions) == (
            x.scale_events, x.reversals, x.preemptions)  # fmt: skip
        out = request_outcome(run.sim.pool(run.pool).results(), mem.profile, mem.config.slo)
        for q, values, pct in (
            ("ttft_p50_s", out.ttft_s, 50), ("ttft_p99_s", out.ttft_s, 99),
            ("itl_p50_s", out.mean_itl_s, 50), ("itl_p99_s", out.mean_itl_s, 99),
        ):  # fmt: skip
            lower = float(np.nanpercentile(values, pct, method="lower"))
            assert getattr(y, q) == pytest.approx(lower, rel=6e-4), q
            assert getattr(x, q) >= lower, q
    assert any(r.evaluation.slo_attainment < 1.0 for r in mem.runs.values())
    assert any(r.evaluation.scale_events for r in mem.runs.values())


def test_stream_refuses_the_yardsticks_and_rate_scale(code_trace: Path) -> None:
    policy = load_policy_file(default_policy_path())
    with pytest.raises(errors.ConfigError, match=r"best-static need the trace in memory"):
        run_backtest(TraceStream(code_trace), trace_name="x", policies=[("p", policy)],
                     baseline_names=["best-static"], profile=P8B)  # fmt: skip
    rc = bt_mod.main(argparse.Namespace(trace=code_trace, stream=True, rate_scale=2.0))
    assert rc == bt_mod.EXIT_INVALID


def test_streamed_mooncake_with_prefix_aware_routing_matches_the_arrays(tmp_path: Path) -> None:
    """The calibrated engine's prefix caches and prefix-aware routing see the same block hashes
    streamed as held whole: a fixed fleet finishes every request at the same instant, caches
    hit (so the hashes reached the replicas), and the streamed report says prefix caching is
    on."""
    rng = np.random.default_rng(3)
    recs = []
    for i in range(2400):
        group = int(rng.integers(0, 6))  # six shared system prompts of 6 blocks each
        tail = int(rng.integers(1, 4))
        ids = [group * 100 + k for k in range(6)] + [10_000 + i * 4 + k for k in range(tail)]
        recs.append({"timestamp": i * 250, "input_length": 512 * len(ids) + 100,
                     "output_length": int(rng.integers(20, 200)), "hash_ids": ids})  # fmt: skip
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    policy = load_policy_file(default_policy_path())
    pool = policy.pools[0].name
    whole = load_trace(p)
    reps = dict.fromkeys(policy.pools[0].roles, 2)
    sims = [
        Simulation.from_policy(
            policy, {pool: work}, profile=P8B, routing="prefix-aware", initial_replicas={pool: reps}
        )
        for work in (tuple(whole), TraceStream(p, chunk_rows=333))
    ]
    for sim in sims:
        sim.advance_to(whole.duration_s)
        sim.run_until_idle()
    ra, rb = (s.pool(pool).results() for s in sims)
    assert len(rb.arrival_s) == len(whole.arrival_s) == 2400
    for field in ("arrival_s", "first_token_s", "finish_s"):
        assert getattr(ra, field).tolist() == getattr(rb, field).tolist(), field
    rates = [s.pool(pool).prefix_cache_hit_rate() for s in sims]
    assert rates[0] == rates[1] > 0.3
    cfg = bt_mod.ReplayConfig(routing="prefix-aware")
    with quiet_logs():
        streamed = run_backtest(TraceStream(p), trace_name="m", policies=[("policy", policy)],
                                baseline_names=[], profile=P8B, config=cfg)  # fmt: skip
    out = bt_mod.summary_json(streamed)
    assert out["prefix_cache"] is True
    assert out["routing"] == "prefix-aware"
