"""`profile fit|check --prometheus`: the selector and the range pieces (the fetch itself runs
against a real Prometheus in tests/prom/test_prom_export_roundtrip.py)."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from autoscaler import errors
from autoscaler.sim import prom_export
from autoscaler.sim.prom_fetch import MAX_POINTS, fetch_export, selector, windows


@pytest.mark.parametrize(
    ("match", "added"),
    [
        ("", ""),
        ('namespace="llm"', ', namespace="llm"'),
        ('{namespace="llm", pod=~"vllm-.*"}', ', namespace="llm", pod=~"vllm-.*"'),
        ('app!="x,y"', ', app!="x,y"'),
    ],
)
def test_matchers_are_added_to_the_export_selector(match: str, added: str) -> None:
    assert selector(match) == prom_export.QUERY[:-1] + added + "}"


@pytest.mark.parametrize("match", ["rate(x[5m])", 'namespace="llm"} or vector(1', "namespace=llm"])
def test_anything_but_label_matchers_is_refused(match: str) -> None:
    with pytest.raises(errors.ConfigError, match="--match"):
        selector(match)


@pytest.mark.parametrize(
    ("start", "end", "step", "pieces"),
    [
        (0.0, 3600.0, 15.0, 1),
        (0.0, 15.0 * (MAX_POINTS - 1), 15.0, 1),
        (0.0, 15.0 * MAX_POINTS, 15.0, 2),
        (0.0, 14 * 86400.0, 15.0, 9),
    ],
)
def test_long_ranges_are_cut_under_prometheus_resolution_limit(
    start: float, end: float, step: float, pieces: int
) -> None:
    got = windows(start, end, step)
    assert len(got) == pieces
    assert got[0][0] == start
    assert got[-1][1] == end
    for (_, hi), (lo, _) in itertools.pairwise(got):
        assert hi == lo  # shared edges: no counter increase lost between pieces
    assert all((hi - lo) / step + 1 <= MAX_POINTS for lo, hi in got)


def test_an_empty_range_is_refused() -> None:
    with pytest.raises(errors.ConfigError, match="must end after it starts"):
        windows(10.0, 10.0, 15.0)


def test_an_unreachable_server_is_named(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(errors.ConfigError, match=f"--prometheus {url}: the range query failed"):
        fetch_export(url, tmp_path / "x.json", start=0.0, end=60.0, timeout_s=2)
    assert not (tmp_path / "x.json").exists()
