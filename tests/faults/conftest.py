"""The fault suite (issue 17): hostile and broken input replayed against the real components.

Prometheus faults go through `faultproxy.FaultProxy` in front of a real Prometheus scraping fake
vLLM pods (the fixtures of tests/prom, re-registered here). Counts (fault modes replayed, ticks,
wrong scale-downs, crashed ticks, documents fuzzed) are collected in `COUNTS` and printed in
pytest's terminal summary, so a CI log states them.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest

from tests.prom.conftest import fake_vllm, prom, prom_binary

__all__ = ["COUNTS", "fake_vllm", "prom", "prom_binary"]

COUNTS: collections.Counter[str] = collections.Counter()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if COUNTS:
        terminalreporter.write_sep("-", "fault suite counts (issue 17)")
        for key in sorted(COUNTS):
            terminalreporter.write_line(f"{key}: {COUNTS[key]}")


@pytest.fixture
def counts() -> collections.Counter[str]:
    return COUNTS
