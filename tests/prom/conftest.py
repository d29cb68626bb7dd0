"""Session fixtures: one real Prometheus scraping a fleet of fake vLLM pods.

The fleet is registered once and shared, so the seconds of scraping that `rate()` needs are paid
once per session; tests that change what is scraped use namespaces of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prom import fleet as fleet_mod
from tests.prom.fakevllm import FakeVllmServer
from tests.prom.promserver import PromServer, ensure_prometheus


@pytest.fixture(scope="session")
def prom_binary() -> str:
    return ensure_prometheus()


@pytest.fixture(scope="session")
def fake_vllm() -> Iterator[FakeVllmServer]:
    server = FakeVllmServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def prom(tmp_path_factory: pytest.TempPathFactory, prom_binary: str) -> Iterator[PromServer]:
    server = PromServer(tmp_path_factory.mktemp("prometheus"), binary=prom_binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fleet(prom: PromServer, fake_vllm: FakeVllmServer) -> fleet_mod.Fleet:
    return fleet_mod.Fleet.start(prom, fake_vllm)


@pytest.fixture
def private_prom(tmp_path: Path, prom_binary: str) -> Iterator[PromServer]:
    """A Prometheus of the test's own, for tests that stop, restart or slow it down."""
    server = PromServer(tmp_path / "prometheus", binary=prom_binary)
    server.start()
    yield server
    server.stop()
