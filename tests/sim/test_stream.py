"""Streaming trace replay: `iter_trace` reads a file chunk by chunk, in time order, and stops
at the end of a window; the result is the trace `load_trace` holds whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoscaler import errors
from autoscaler.sim.traces import Trace, iter_trace, load_trace, window
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
