"""llm-d-inference-sim, an independent vLLM emitter, scraped by the real Prometheus and read by
PrometheusSource.

Aspects: `--fake-metrics` gauges are read exactly; real traffic gives TTFT/ITL quantiles in the
buckets the configured latencies fall in and a request rate near the one sent; what the sim
does not emit (`iteration_tokens_total`, hence batched_tokens) is reported missing, not zero.
Its label differences (no `engine`, `finish_reason`) must not matter to the queries.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.metrics.source import RoleTarget
from autoscaler.testing import pool_policy
from autoscaler.types import Role
from tests.prom import fleet as fl
from tests.prom import llmd
from tests.prom.fakevllm import rs_pod
from tests.prom.promserver import PromServer, eventually, free_port

pytestmark = pytest.mark.prometheus

A = Role.AGGREGATED
SENT_RPS = 4.0


@pytest.fixture(scope="module")
def sims(prom: PromServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    log = tmp_path_factory.mktemp("llmd") / "sim.log"
    fake = llmd.LlmdSim(
        free_port(),
        "--fake-metrics",
        json.dumps({"running-requests": 3, "waiting-requests": 7, "kv-cache-usage": 0.42}),
        log=log,
    )
    live = llmd.LlmdSim(
        free_port(),
        "--time-to-first-token",
        "200ms",
        "--inter-token-latency",
        "20ms",
        "--max-num-seqs",
        "8",
        log=log,
    )
    entries = [
        {
            "targets": [f"127.0.0.1:{sim.port}"],
            "labels": {"namespace": "llmd", "pod": rs_pod(name, 0)},
        }
        for name, sim in (("llmd-fake", fake), ("llmd-live", live))
    ]
    prom.set_targets("vllm", "llmd", entries)
    stop = threading.Event()

    def load() -> None:
        # Steady arrivals at SENT_RPS, each on its own thread so latency does not slow them.
        while not stop.is_set():
            threading.Thread(target=live.complete, kwargs={"max_tokens": 6}, daemon=True).start()
            stop.wait(1 / SENT_RPS)

    driver = threading.Thread(target=load, daemon=True)
    driver.start()
    eventually(lambda: len(prom.query('up{namespace="llmd"} == 1')) == 2)
    time.sleep(fl.RATE_WINDOW_S + 3)
    yield {"fake": fake.port, "live": live.port}
    stop.set()
    driver.join()
    prom.set_targets("vllm", "llmd", [])
    fake.stop()
    live.stop()


def targets(name: str) -> list[RoleTarget]:
    signals = [
        *fl.ALL_SIGNALS,
        {"signal": "ttft", "target": 1.0, "quantile": 0.5},
    ]
    pf = pool_policy(aggregated=fl.role("llmd", name, signals=signals), pool={"name": name})
    return [RoleTarget(pool=name, role=A, spec=pf.pools[0].roles[A])]


async def test_fake_metrics_gauges(prom: PromServer, sims: dict[str, int]) -> None:
    """--fake-metrics waiting/running/kv-cache are read as set; batched_tokens is missing
    (the sim has no engine-step histogram) with zero replicas."""
    src = fl.source(prom.url)
    try:
        s = (await src.fetch(targets("llmd-fake"), now=0.0))[("llmd-fake", A)]
    finally:
        src.close()
    assert (s["queue_depth"].value, s["queue_depth"].replicas) == (7, 1)
    assert (s["running"].value, s["running"].replicas) == (3, 1)
    assert s["kv_cache"].value == pytest.approx(0.42)
    assert s["batched_tokens"].missing
    assert s["batched_tokens"].replicas == 0


async def test_live_latency_and_rates(prom: PromServer, sims: dict[str, int]) -> None:
    """With TTFT 200 ms and ITL 20 ms configured, the quantiles land in the vLLM buckets
    (0.1, 0.25] and (0.01, 0.025]; the request rate is the rate sent."""
    src = fl.source(prom.url)
    try:
        s = (await src.fetch(targets("llmd-live"), now=0.0))[("llmd-live", A)]
    finally:
        src.close()
    for key in ("ttft_p90", "ttft_p50"):
        assert s[key].value is not None, s[key]
        assert 0.1 < s[key].value <= 0.25, s[key]
    assert s["itl_p50"].value is not None, s["itl_p50"]
    assert 0.01 < s["itl_p50"].value <= 0.025, s["itl_p50"]
    assert s["request_rate"].value == pytest.approx(SENT_RPS, rel=0.3), s["request_rate"]
    # Random mode stops each response at a random length of 1..max_tokens (6) tokens.
    gen = s["generation_tokens_rate"].value
    assert gen is not None
    assert SENT_RPS * 0.7 <= gen <= 6 * SENT_RPS * 1.3, s["generation_tokens_rate"]
    assert s["prompt_tokens_rate"].value is not None
    assert s["prompt_tokens_rate"].value > 0


def test_binary_is_cached(sims: dict[str, int]) -> None:
    """The build lands where the fixture looks first, so later sessions skip it."""
    assert Path(llmd.BINARY).exists()
    assert llmd.VERSION in str(llmd.BINARY)
