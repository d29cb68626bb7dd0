"""Inputs that used to end in a traceback or were accepted silently (issue 12): each gets a clear
error naming the flag, file or field, before any long work starts; or, where the input is fine,
it is accepted and the command says what it ignored."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler import cli, errors
from autoscaler.sim import backtest
from autoscaler.sim.traces import MAX_SPAN_S, load_trace

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]
GENERIC = "timestamp_s,input_tokens,output_tokens\n0,100,20\n1.5,200,30\n"


def _trace(tmp_path: Path, text: str = GENERIC, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _cli(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoscaler", *argv], capture_output=True,
                          text=True, cwd=cwd, check=False, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def test_row_at_1e12_seconds_is_a_clear_error(tmp_path: Path) -> None:
    """Not a 124 GiB allocation: the span is checked before anything is sized by it."""
    p = _trace(tmp_path, GENERIC + "1e12,10,10\n")
    with pytest.raises(errors.ConfigError) as exc:
        load_trace(p)
    (line,) = exc.value.problems
    assert line.startswith(f"{p}: request 3 (in file order) arrives 1e+12 s")
    assert f"at most {MAX_SPAN_S / 86400:.0f} days" in line
    r = _cli("backtest", "--trace", str(p))
    assert r.returncode == 2
    assert "arrives 1e+12 s" in r.stderr
    assert "Traceback" not in r.stderr


def test_generic_csv_with_an_extra_column_is_read_and_the_column_named(tmp_path: Path) -> None:
    text = "request_id,timestamp_s,input_tokens,output_tokens,model\na,0,100,20,m\nb,1.5,200,30,m\n"
    p = _trace(tmp_path, text)
    tr = load_trace(p)
    assert tr.arrival_s.tolist() == [0.0, 1.5]
    assert tr.prompt_tokens.tolist() == [100, 200]
    assert tr.output_tokens.tolist() == [20, 30]
    r = _cli("--log-format", "json", "backtest", "--trace", str(p), "--baseline", "keda-queue",
             "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "trace_extra_columns_ignored" in r.stderr
    assert "request_id" in r.stderr
    assert "model" in r.stderr


@pytest.mark.parametrize("flag", ["--speedup", "--rate-scale", "--tick-s", "--duration-s"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_non_positive_factors_are_rejected(flag: str, value: str) -> None:
    """`--speedup 0` used to run as 1 (`0 or 1.0`)."""
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["backtest", "--trace", "x", flag, value])
    assert exc.value.code == 2


def test_speedup_zero_through_the_command(tmp_path: Path) -> None:
    r = _cli("backtest", "--trace", str(_trace(tmp_path)), "--speedup", "0")
    assert r.returncode == 2
    assert "argument --speedup: must be a positive number, got 0" in r.stderr


def test_json_into_a_missing_directory_is_an_error_not_created(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "out.json"
    r = _cli("backtest", "--trace", str(_trace(tmp_path)), "--json", str(target))
    assert r.returncode == 2
    assert f"--json {target}: directory {target.parent} does not exist" in r.stderr
    assert not (tmp_path / "no").exists()


def _read_only_dir(tmp_path: Path) -> str:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    # Root ignores the mode bits; /proc refuses new files even to root.
    return str(ro / "p.png") if os.geteuid() != 0 else "/proc/p.png"


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        pytest.param(_read_only_dir, "is not writable", id="unwritable"),
        pytest.param("/nonexistent-dir/p.png", "does not exist", id="missing-dir"),
    ],
)
def test_plot_into_an_unusable_path_is_an_error_before_the_run(
    tmp_path: Path, target: object, fragment: str
) -> None:
    path = target(tmp_path) if callable(target) else str(target)
    r = _cli("backtest", "--trace", str(_trace(tmp_path)), "--plot", path)
    assert r.returncode == 2, r.stderr
    assert f"--plot {path}: directory" in r.stderr
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr


def test_gpu_hours_policy_profile_mismatch_is_an_error(tmp_path: Path) -> None:
    """A TP4 policy under the 1-GPU 8B profile used to report 2.0 GPU-h instead of 8."""
    r = _cli("backtest", "--trace", str(_trace(tmp_path)),
             "--policy", str(ROOT / "policies" / "llama-70b-ratio.yaml"))
    assert r.returncode == 2
    assert "gpus_per_replica is 4 but profile llama-8b-h100 models 1 GPU(s) per replica" in r.stderr
    # With the matching profile it runs.
    policies = backtest._policies([ROOT / "policies" / "llama-70b-ratio.yaml"])
    backtest.check_profile(policies, backtest.resolve_profile_arg("llama-70b-tp4-h100"))


def _options(parser: argparse.ArgumentParser, path: list[str]) -> list[argparse.Action]:
    sub = parser
    for name in path:
        (subs,) = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        sub = subs.choices[name]
    return [a for a in sub._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize(
    "path", [["backtest"], ["run"], ["sim", "serve"], ["trace", "stitch"], ["demo"], ["validate"]]
)
def test_every_option_has_help(path: list[str]) -> None:
    missing = [a.option_strings[0] for a in _options(cli.build_parser(), path)
               if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"{' '.join(path)}: options without help: {missing}"


def test_progress_lines_without_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped, a long replay prints progress lines (one per run at least, at its end) instead of
    nothing until the table; --no-progress silences them."""
    gap = "timestamp_s,input_tokens,output_tokens\n0,100,20\n7200,100,20\n"
    p = _trace(tmp_path, gap)
    r = _cli("backtest", "--trace", str(p))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("backtest: ")]
    runs = {ln.split(":")[1].strip() for ln in lines}
    assert runs == {"llama-8b-slo", "keda-queue"}, r.stderr
    assert all("min simulated" in ln for ln in lines)
    assert any("(100 %)" in ln for ln in lines)
    quiet = _cli("backtest", "--trace", str(p), "--no-progress")
    assert not [ln for ln in quiet.stderr.splitlines() if ln.startswith("backtest: ")]
