"""The backtest's warm-up (`ReplayConfig.warmup_s`, `--warmup-s`): every run, the yardsticks
and the oracle judge the same span [W, H), so a trace that starts at full load judges the
policy, not the minutes its fleet needs to get there.

Scenario: ten minutes of generated conversation at 4x its rate, steady from t = 0: two prefill
replicas serve it; a controller run starts at one and reaches its size after a cold start. Each figure is recomputed here from the runs' own
simulations, not taken from the code under test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from autoscaler import cli, errors
from autoscaler.policy.load import load_policy_file
from autoscaler.sim import backtest
from autoscaler.sim.baselines import BEST_STATIC, HINDSIGHT, KEDA_QUEUE
from autoscaler.sim.evaluate import request_outcome
from autoscaler.sim.traces import Trace, TraceStream, load_trace
from autoscaler.sim.workload import AZURE_CODE, AZURE_CONV, generate
from tests.sim.conftest import P8B

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]
WARMUP_S = 180.0


def _busy_trace() -> Trace:
    return generate(AZURE_CONV.with_rate(4 * AZURE_CONV.mean_rate_rps), duration_s=600,
                    seed=3, diurnal=False)  # fmt: skip


def _csv(tmp_path: Path, tr: Trace) -> Path:
    path = tmp_path / "busy.csv"
    cols = (tr.arrival_s.tolist(), tr.prompt_tokens.tolist(), tr.output_tokens.tolist())
    rows = "\n".join(f"{t!r},{p},{o}" for t, p, o in zip(*cols, strict=True))
    path.write_text("timestamp_s,input_tokens,output_tokens\n" + rows + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs() -> dict[float, backtest.Backtest]:
    policy = load_policy_file(backtest.default_policy_path())
    out = {}
    for w in (0.0, WARMUP_S):
        with backtest.quiet_logs():
            out[w] = backtest.run_backtest(
                _busy_trace(),
                trace_name="busy",
                policies=[("policy", policy)],
                baseline_names=[KEDA_QUEUE, BEST_STATIC, HINDSIGHT],
                profile=P8B,
                config=backtest.ReplayConfig(warmup_s=w),
            )
    return out


def test_every_run_is_judged_on_requests_from_the_warmup_on(
    runs: dict[float, backtest.Backtest],
) -> None:
    bt = runs[WARMUP_S]
    for name, run in bt.runs.items():
        res = run.sim.pool(run.pool).results()
        keep = res.arrival_s >= WARMUP_S
        met = request_outcome(res, bt.profile, bt.config.slo).met
        ev = run.evaluation
        assert ev.requests == int(keep.sum()) < len(res.arrival_s), name
        assert ev.slo_attainment == pytest.approx(float(met[keep].mean()), abs=1e-12), name
        # GPU-seconds held in [W, H): each replica from max(request, W) to min(stop, H).
        held = run.sim.gpu_seconds(pool=run.pool, at=bt.horizon_s) - run.sim.gpu_seconds(
            pool=run.pool, at=WARMUP_S
        )
        assert ev.gpu_hours == pytest.approx(held / 3600.0), name
        assert ev.scale_events == sum(1 for e in run.sim.scale_events() if e.t >= WARMUP_S), name
    # A fixed fleet is billed for the judged span only.
    static = bt.runs[BEST_STATIC]
    n = sum(static.replicas.values())
    assert static.evaluation.gpu_hours == pytest.approx(n * (bt.horizon_s - WARMUP_S) / 3600.0)
    doc = backtest.summary_json(bt)
    assert doc["warmup_s"] == WARMUP_S
    assert "[warmup_s, horizon_s)" in doc["gpu_hours_method"]


def test_the_start_at_one_replica_is_what_the_warmup_leaves_out(
    runs: dict[float, backtest.Backtest],
) -> None:
    """At full load from 0 the controller run's first minutes are the cut's, not the
    policy's: judged whole it misses 6 % (at one replica until the second is ready), judged
    from the warm-up it meets the SLO as the best fixed fleet does, for the same GPU-hours."""
    cold, warm = runs[0.0].runs["policy"].evaluation, runs[WARMUP_S].runs["policy"].evaluation
    assert cold.slo_attainment < 0.97, cold
    static = runs[WARMUP_S].runs[BEST_STATIC].evaluation
    assert warm.slo_attainment >= static.slo_attainment - 0.005, (warm, static)
    assert warm.gpu_hours <= static.gpu_hours * 1.05, (warm, static)
    # The hindsight schedule starts at the floor too: its forced start misses (the bins before
    # a replica requested at 0 can serve) fall inside the warm-up.
    ys_cold, ys_warm = runs[0.0].yardsticks, runs[WARMUP_S].yardsticks
    assert ys_cold is not None
    assert ys_warm is not None
    assert ys_cold.plan is not None
    assert ys_warm.plan is not None
    assert ys_cold.plan.forced > 0
    assert ys_warm.plan.forced == 0
    assert ys_warm.plan.n == runs[WARMUP_S].runs["policy"].evaluation.requests


def test_the_oracle_covers_the_judged_span(runs: dict[float, backtest.Backtest]) -> None:
    """The fluid bound is over the judged requests, its bins counted from the warm-up: no bin of
    the warm-up is billed, so it is below the whole trace's (the trace's load is steady)."""
    cold, warm = runs[0.0].oracle, runs[WARMUP_S].oracle
    minutes = (runs[0.0].horizon_s - WARMUP_S) / 60.0
    assert len(warm.replicas[next(iter(warm.replicas))]) == pytest.approx(minutes, abs=1)
    assert warm.gpu_hours < cold.gpu_hours


def test_streamed_replay_judges_the_same_span(tmp_path: Path) -> None:
    """The OutcomeTally of a streamed replay skips the warm-up's requests as the in-memory
    evaluation drops them: the same attainment, requests and GPU-hours."""
    path = _csv(tmp_path, _busy_trace())
    tr = load_trace(path)  # its times from the first arrival
    policy = load_policy_file(backtest.default_policy_path())
    cfg = backtest.ReplayConfig(warmup_s=WARMUP_S)
    with backtest.quiet_logs():
        mem, streamed = (
            backtest.run_backtest(t, trace_name="w", policies=[("policy", policy)],
                                  baseline_names=[KEDA_QUEUE], profile=P8B, config=cfg)
            for t in (tr, TraceStream(path, chunk_rows=400))
        )  # fmt: skip
    assert streamed.oracle_gpu_hours == mem.oracle_gpu_hours
    for name, run in mem.runs.items():
        x, y = run.evaluation, streamed.runs[name].evaluation
        assert y.requests == x.requests == int((tr.arrival_s >= WARMUP_S).sum()), name
        assert y.finished == x.finished, name
        assert y.slo_attainment == x.slo_attainment, name
        assert y.gpu_hours_by_role == x.gpu_hours_by_role, name


def test_a_warmup_leaving_nothing_to_judge_is_refused() -> None:
    policy = load_policy_file(backtest.default_policy_path())
    tr = _busy_trace()
    with pytest.raises(errors.ConfigError, match=r"--warmup-s 900 leaves nothing to judge"):
        backtest.run_backtest(tr, trace_name="busy", policies=[("p", policy)],
                              baseline_names=[], profile=P8B,
                              config=backtest.ReplayConfig(warmup_s=900.0))  # fmt: skip
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(errors.ConfigError, match=r"--warmup-s must be >= 0"):
            backtest.ReplayConfig(warmup_s=bad)


def test_the_flag_reaches_the_table_and_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tr = generate(AZURE_CODE, duration_s=240, seed=7, diurnal=False)
    path = _csv(tmp_path, tr)
    out = tmp_path / "bt.json"
    args = ["backtest", "--trace", str(path), "--baseline", "keda-queue", "--json", str(out),
            "--no-progress", "--warmup-s", "60"]  # fmt: skip
    assert cli.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["warmup_s"] == 60.0
    judged = int((np.asarray(tr.arrival_s) >= 60.0).sum())
    assert judged < len(tr.arrival_s)
    assert "judged from 60 s (warm-up)" in capsys.readouterr().out
    # Without the flag every request is judged, as before.
    assert backtest.ReplayConfig().warmup_s == 0.0
    assert backtest.warmup_for(P8B, backtest.ReplayConfig()) == P8B.cold_start_s + 60.0
