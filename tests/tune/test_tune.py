"""`pd-autoscaler tune` on the built-in generator: small traces, few trials (seconds each)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autoscaler import cli
from autoscaler.policy.load import load_policy_file
from autoscaler.profile import builtin
from autoscaler.sim import backtest
from autoscaler.sim.tune import main as tune_main
from autoscaler.sim.tune.study import Score
from autoscaler.sim.tune.windows import joined
from tests.tune.conftest import POOR_POLICY, code_trace, write_azure_csv

pytestmark = pytest.mark.sim


def test_poor_policy_is_improved_on_held_out_windows() -> None:
    """Targets 3-4x too high leave bursts unserved (51 % / 79 % attainment on the two windows);
    tuning on the first window lifts the second, which the search never saw, to the target."""
    res = tune_main.tune(
        code_trace(),
        POOR_POLICY.read_text(),
        source=str(POOR_POLICY),
        profile=builtin("llama-8b-h100"),
        config=backtest.ReplayConfig(),
        folds=2,
        trials=12,
        yardsticks_on=False,
    )
    poor, tuned = res.row("input policy"), res.row("tuned")
    assert poor.held_out is not None
    assert tuned.held_out is not None
    assert poor.held_out.attainment < 0.9
    assert tuned.held_out.attainment >= 0.99
    assert tuned.held_out.attainment > poor.held_out.attainment + 0.1
    assert res.feasible
    assert res.worse_held_out is None
    # The chosen trial is the cheapest feasible one, and its training figures are the trial's.
    feasible = [t for t in res.trials if t["feasible"]]
    chosen = next(t for t in res.trials if t["chosen"])
    assert chosen["gpu_hours"] == min(t["gpu_hours"] for t in feasible)
    assert tuned.train is not None
    assert tuned.train.gpu_hours == chosen["gpu_hours"]
    # Trial 0 is the user's policy, so its training result is the input policy's.
    first = next(t for t in res.trials if t["number"] == 0)
    assert poor.train is not None
    assert math.isclose(first["attainment"], poor.train.attainment)


def test_a_warmup_judges_each_window_from_it_on() -> None:
    """--warmup-s: every window, in the trials' replays and the fixed fleets' joined replay
    alike, is judged from W on: the same requests are counted for both, and a fixed fleet is
    billed for each window less its warm-up."""
    warmup = 180.0
    trace = code_trace()
    res = tune_main.tune(
        trace,
        POOR_POLICY.read_text(),
        source=str(POOR_POLICY),
        profile=builtin("llama-8b-h100"),
        config=backtest.ReplayConfig(warmup_s=warmup),
        folds=2,
        trials=2,
        yardsticks_on=True,
    )
    assert res.split is not None
    width = res.split.window_s
    for rows, windows in (("train", res.split.train), ("held_out", res.split.held_out)):
        judged = sum(int((w.trace.arrival_s >= warmup).sum()) for w in windows)
        assert judged < sum(len(w.trace.arrival_s) for w in windows)
        policy = getattr(res.row("input policy"), rows)
        static = getattr(res.row("best-static"), rows)
        assert policy is not None
        assert static is not None
        assert policy.requests == static.requests == judged, rows
        fleet = res.row("best-static").note.split("; ")[0 if rows == "train" else 1].split()[-1]
        replicas = sum(int(part[:-1]) for part in fleet.split("+"))
        # The joined windows' billed span (minutes, as a backtest's) less one warm-up each.
        span = max(len(windows) * width, backtest.horizon_of(joined(windows, width)))
        assert static.gpu_hours == pytest.approx(
            replicas * (span - len(windows) * warmup) / 3600.0
        ), fleet


def _score(att: float) -> Score:
    return Score(att, 1.0, 0, 100, ())


@pytest.mark.parametrize(
    ("train", "held_out", "worse"),
    [
        (0.995, 0.995, None),
        (0.995, 0.999, None),  # better held out
        (0.995, 0.992, None),  # within half a point, both above target
        (0.995, 0.985, "misses the 99 % target"),  # the overfit of issue 15
        (0.98, 0.97, "held out vs"),  # neither meets the target, 1 point down
    ],
)
def test_worse_held_out_is_said_plainly(train: float, held_out: float, worse: str | None) -> None:
    res = tune_main.Result(
        tuned_doc={}, values={}, params=[], unsearched=[], feasible=True,
        rows=[tune_main.Row("tuned", _score(train), _score(held_out))], trials=[],
        split=None, study_name="s", target=0.99, max_reversals=2,  # type: ignore[arg-type]
    )  # fmt: skip
    got = res.worse_held_out
    if worse is None:
        assert got is None
    else:
        assert got is not None
        assert worse in got


def test_cli_writes_tuned_policy_with_measured_header(tmp_path: Path) -> None:
    trace = write_azure_csv(code_trace(), tmp_path / "code.csv")
    out = tmp_path / "tuned.yaml"
    rc = cli.main(["tune", "--trace", str(trace), "--policy", str(POOR_POLICY), "--trials", "4",
                   "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    text = out.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    joined = "\n".join(header)
    for must in (f"trace: {trace}", "SLO: TTFT <= max(0.5 s", "target attainment 99 %",
                 "tuned ", "input policy", "keda-queue", "best-static", "training", "held-out"):
        assert must in joined, must
    # The file is a valid policy as written (header and all).
    tuned = load_policy_file(out)
    assert tuned.pools[0].name == "llama-8b"
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--folds", "1"], "--folds 1: needs at least 2"),
        (["--folds", "9"], "each needs at least 10 min"),
        (["--warmup-s", "5000"], "--warmup-s 5000 leaves nothing of each"),
        (["--warmup-s", "-1"], "--warmup-s must be >= 0"),
        (["--trials", "0"], "--trials 0"),
        (["--out", "/nonexistent-dir/x.yaml"], "directory /nonexistent-dir does not exist"),
        # Nothing listens on port 1: named, after the open retries, no traceback.
        (["--storage", "postgresql://u@127.0.0.1:1/db"], "--storage postgresql://...: cannot open"),
    ],
)
def test_cli_bad_input_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], match: str
) -> None:
    trace = write_azure_csv(code_trace(), tmp_path / "code.csv")
    argv = ["tune", "--trace", str(trace), "--policy", str(POOR_POLICY), "--out",
            str(tmp_path / "t.yaml"), "--trials", "1", "--no-progress", *extra]  # fmt: skip
    assert cli.main(argv) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "t.yaml").exists()


def test_header_names_changes_or_says_none() -> None:
    from autoscaler.sim.tune.space import Param  # noqa: PLC0415
    from autoscaler.sim.tune.windows import Split  # noqa: PLC0415

    params = [Param("prefill.tolerance", ("x",), 0.0, 0.3, 0.1)]

    def head(value: float) -> str:
        res = tune_main.Result(
            tuned_doc={}, values={"prefill.tolerance": value}, params=params, unsearched=[],
            feasible=True, rows=[tune_main.Row("tuned", _score(0.995), _score(0.995))],
            trials=[{"number": 0, "chosen": True}], split=Split(600.0, (), ()),
            study_name="s", target=0.99, max_reversals=2,
        )  # fmt: skip
        return tune_main.header(res, trace="t.csv", config=backtest.ReplayConfig())

    assert "changed: nothing (the input policy was the best trial)" in head(0.1)
    assert "changed: prefill.tolerance 0.1 -> 0.25" in head(0.25)
    assert all(line.startswith("# ") for line in head(0.25).splitlines())
