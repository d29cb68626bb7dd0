"""trace stitch: envelope shape x Azure lengths; row count, peak, lengths, determinism, errors."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest

from autoscaler import errors
from autoscaler.cli import main as cli_main
from autoscaler.sim import stitch
from tests.conftest import shared_traces_missing

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
ENVELOPE = SHARED / "servegen_aggregate_rate_10min.csv"
CONV = SHARED / "AzureLLMInferenceTrace_conv.csv"


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    """A 1-day envelope with a 1:3 daily swing and a 3-request token file."""
    env = tmp_path / "env.csv"
    rows = ["model,timestamp,rate,active_clients,clients_total,cv_rate_weighted"]
    for i in range(144):
        rate = 2.0 + np.sin(np.pi * i / 144) * 4.0  # 2 -> 6 -> 2 over the day
        rows += [f"a/x,{i * 600},{rate},1,1,0", f"b/y,{i * 600},1.0,1,1,0"]
    env.write_text("\n".join(rows) + "\n")
    tok = tmp_path / "tok.csv"
    tok.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.2224670,879,55\n"
    )
    return env, tok


def args(env: Path, tok: Path, out: Path, **kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "envelope": env,
        "model": "a/x",
        "tokens": tok,
        "days": 1.0,
        "peak_rps": 3.0,
        "out": out,
        "seed": 3,
    }
    base.update(kw)
    return argparse.Namespace(**base)


def read(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open() as fh:
        r = csv.reader(fh)
        header = next(r)
        data = np.array([[float(x) for x in row] for row in r])
    return header, data


def test_rows_follow_the_scaled_envelope(small: tuple[Path, Path], tmp_path: Path) -> None:
    """Row count ~ integral of the scaled rate (Poisson: within 4 sd); the peak is --peak-rps;
    timestamps sorted within the span; lengths are pairs from the source file."""
    env, tok = small
    out = tmp_path / "o.csv"
    assert stitch.main(args(env, tok, out)) == 0
    header, data = read(out)
    assert header == ["timestamp_s", "input_tokens", "output_tokens"]
    t, _, _, e = stitch.stitch(envelope=env, model="a/x", tokens=tok, days=1, peak_rps=3, seed=3)
    expected = e.expected_requests()
    assert abs(len(data) - expected) < 4 * np.sqrt(expected)
    assert len(data) == len(t)
    assert np.all(np.diff(data[:, 0]) >= 0)
    assert data[0, 0] >= 0
    assert data[-1, 0] < 86400
    assert e.rate(np.linspace(0, 86400, 10001)).max() == pytest.approx(3.0, rel=1e-6)
    pairs = {(int(a), int(b)) for a, b in data[:, 1:]}
    assert pairs <= {(374, 44), (396, 109), (879, 55)}
    assert len(pairs) == 3
    # The daily swing survives: the middle hour is ~3x as busy as the first hour.
    first = np.count_nonzero(data[:, 0] < 3600)
    middle = np.count_nonzero((data[:, 0] >= 11.5 * 3600) & (data[:, 0] < 12.5 * 3600))
    assert 2.3 < middle / first < 3.7


def test_same_seed_same_file(small: tuple[Path, Path], tmp_path: Path) -> None:
    """The seed fixes every draw; another seed gives another trace."""
    env, tok = small
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    stitch.main(args(env, tok, a))
    stitch.main(args(env, tok, b))
    stitch.main(args(env, tok, c, seed=4))
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_more_days_than_envelope_repeats_whole_days(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two days from a one-day envelope: the daily shape repeats."""
    env, tok = small
    t, _, _, e = stitch.stitch(envelope=env, model="a/x", tokens=tok, days=2, peak_rps=3, seed=1)
    day1 = np.count_nonzero(t < 86400)
    day2 = np.count_nonzero(t >= 86400)
    assert abs(day1 - day2) < 4 * np.sqrt(day1)
    assert e.duration_s == 2 * 86400


def test_unknown_model_lists_models(small: tuple[Path, Path], tmp_path: Path) -> None:
    """A wrong --model names the models the file has."""
    env, tok = small
    with pytest.raises(
        errors.ConfigError, match=r"unknown model 'zzz'; models available: a/x, b/y"
    ):
        stitch.main(args(env, tok, tmp_path / "o.csv", model="zzz"))


@pytest.mark.parametrize(
    ("which", "content", "match"),
    [
        pytest.param(
            "env",
            "model,time,rate\na,0,1\n",
            r"env\.csv: missing column\(s\) timestamp",
            id="envelope-columns",
        ),
        pytest.param(
            "tok",
            "TIMESTAMP,ContextTokens\nx,1\n",
            r"tok\.csv: missing column\(s\) GeneratedTokens",
            id="token-columns",
        ),
    ],
)
def test_missing_columns_name_the_file(
    small: tuple[Path, Path], tmp_path: Path, which: str, content: str, match: str
) -> None:
    """Missing columns are reported with the file's path and the columns it has."""
    env, tok = small
    (env if which == "env" else tok).write_text(content)
    with pytest.raises(errors.ConfigError, match=match):
        stitch.main(args(env, tok, tmp_path / "o.csv"))


def test_cli_reports_errors_and_exit_code(
    small: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI: a problem is one stderr line and a non-zero exit."""
    env, tok = small
    rc = cli_main(
        [
            "trace",
            "stitch",
            "--envelope",
            str(env),
            "--model",
            "nope",
            "--tokens",
            str(tok),
            "--days",
            "1",
            "--peak-rps",
            "2",
            "--out",
            str(tmp_path / "o.csv"),
        ]
    )
    assert rc != 0
    assert "models available: a/x, b/y" in capsys.readouterr().err


@pytest.mark.skipif(shared_traces_missing(ENVELOPE, CONV), reason="shared traces absent")
def test_real_envelope_and_azure_lengths() -> None:
    """On the shared traces: count matches the integral; the 10-minute peak is near R; token
    lengths have the conversation trace's medians (prompt 1,020, output 129)."""
    t, p, o, e = stitch.stitch(
        envelope=ENVELOPE, model="language/m-large", tokens=CONV, days=1, peak_rps=5, seed=0
    )
    expected = e.expected_requests()
    assert abs(len(t) - expected) < 4 * np.sqrt(expected)
    counts = np.bincount((t // 600).astype(int)) / 600
    assert counts.max() == pytest.approx(5, rel=0.15)
    assert np.median(p) == pytest.approx(1020, rel=0.1)
    assert np.median(o) == pytest.approx(129, rel=0.1)


def test_bursts_keep_the_short_term_structure(small: tuple[Path, Path], tmp_path: Path) -> None:
    """--bursts: a pattern trace with all its requests in the first 10 s of every minute makes
    the stitched arrivals land there too (six times the mean rate), with the envelope's daily
    swing and request count kept; without it the same windows hold a sixth of the arrivals."""
    env, tok = small
    pattern = tmp_path / "pattern.csv"
    rows = [f"{m * 60 + k * 0.5:.3f},100,10" for m in range(60) for k in range(20)]
    pattern.write_text("timestamp_s,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    t, _, _, e = stitch.stitch(
        envelope=env, model="a/x", tokens=tok, days=1, peak_rps=3, seed=3, bursts=pattern
    )
    expected = e.expected_requests()
    assert abs(len(t) - expected) < 0.05 * expected
    pat = stitch.BurstPattern(
        np.array([float(r.split(",")[0]) for r in rows]), window_s=10.0
    )
    assert (pat.m > 0).mean() == pytest.approx(1 / 6, abs=0.01)  # 10 s of every minute
    in_burst = pat.at(t) > 0
    assert in_burst.mean() > 0.97
    first = np.count_nonzero(t < 3600)
    middle = np.count_nonzero((t >= 11.5 * 3600) & (t < 12.5 * 3600))
    assert 2.3 < middle / first < 3.7
    plain, _, _, _ = stitch.stitch(envelope=env, model="a/x", tokens=tok, days=1, peak_rps=3)
    assert 0.13 < (pat.at(plain) > 0).mean() < 0.2


def test_bursts_offset_shifts_the_pattern(tmp_path: Path) -> None:
    """The multiplier is arrivals per window over their mean, cycled from the offset."""
    p = stitch.BurstPattern(np.array([0.0, 1.0, 2.0, 25.0]), window_s=10.0)
    assert p.m.tolist() == pytest.approx([9 / 4, 0.0, 3 / 4])
    shifted = stitch.BurstPattern(np.array([0.0, 1.0, 2.0, 25.0]), window_s=10.0, offset_s=20.0)
    assert shifted.at(np.array([0.0, 10.0, 20.0, 35.0])).tolist() == pytest.approx(
        [3 / 4, 9 / 4, 0.0, 3 / 4]
    )
    with pytest.raises(errors.ConfigError, match="burst-window-s"):
        stitch.BurstPattern(np.array([0.0, 1.0]), window_s=0.0)
