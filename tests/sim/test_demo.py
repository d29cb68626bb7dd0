"""The demo: trace selection (flag, environment, shared file, generator), a fast run on the
generator with its live feed printed as lines, and its outputs (table, JSON, PNG)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from autoscaler import cli
from autoscaler.sim import demo

pytestmark = pytest.mark.sim


def test_demo_on_the_generator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No trace anywhere: the generator is used and said so, every run is reported (speed is
    measured by benchmarks/backtest_speed.py, not asserted here)."""
    monkeypatch.delenv(demo.TRACE_ENV, raising=False)
    monkeypatch.setattr(demo, "SHARED_TRACE", tmp_path / "absent.csv")
    rc = cli.main(["demo", "--out", str(tmp_path / "out"), "--duration-s", "600", "--seconds", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "built-in generator" in out
    assert "keda-queue" in out
    assert "best-static" in out
    assert "hindsight" in out
    # Not a terminal: the latest decision per role is printed with its reason.
    assert "llama-8b/prefill" in out
    assert "llama-8b/decode" in out
    png = tmp_path / "out" / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert set(doc["runs"]) == {"llama-8b-slo", "keda-queue", "best-static", "hindsight"}
    assert str(png) in out


def test_demo_trace_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--trace beats $PD_AUTOSCALER_TRACE beats the shared trace beats the generator."""
    a, b, shared = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "shared.csv"
    for p in (a, b, shared):
        p.write_text("timestamp_s,input_tokens,output_tokens\n0,10,5\n1,10,5\n", encoding="utf-8")
    monkeypatch.setattr(demo, "SHARED_TRACE", shared)
    monkeypatch.setenv(demo.TRACE_ENV, str(b))
    ns = argparse.Namespace(trace=a, duration_s=None)
    assert demo.pick_trace(ns)[1] == "a.csv"
    ns = argparse.Namespace(trace=None, duration_s=None)
    assert "PD_AUTOSCALER_TRACE" in demo.pick_trace(ns)[2]
    monkeypatch.delenv(demo.TRACE_ENV)
    assert demo.pick_trace(ns)[1] == "shared.csv"
    monkeypatch.setattr(demo, "SHARED_TRACE", tmp_path / "absent.csv")
    tr, name, where = demo.pick_trace(argparse.Namespace(trace=None, duration_s=120.0))
    assert name.startswith("generated-")
    assert "generator" in where
    assert tr.duration_s <= 120.0


def test_demo_bad_trace_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing --trace: exit 2, one line."""
    rc = cli.main(["demo", "--trace", str(tmp_path / "nope.csv"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "cannot read" in err[0]
