"""`pd-autoscaler sim serve` scraped by the real Prometheus: values read through PromQL match
the simulator's own numbers.

Aspects: the CLI starts and prints its URL; `/targets` is valid file_sd; rates and tokens per
step over a window match the simulator's counter deltas (scrape tolerance); with simulated time
paused, every gauge matches exactly.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from autoscaler.metrics.source import RoleTarget
from autoscaler.spec import PolicyFile
from autoscaler.types import Role
from tests.prom import fleet as fl
from tests.prom.promserver import PromServer, eventually

pytestmark = pytest.mark.prometheus

WINDOW_S = 10.0


@pytest.fixture(scope="module")
def sim_url(prom: PromServer) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "autoscaler", "--log-format", "json", "sim", "serve"),
            *("--port", "0", "--replicas", "2", "--speedup", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    entries = requests.get(f"{url}/targets", timeout=5).json()
    prom.set_targets("vllm", "simserve", entries)
    eventually(lambda: len(prom.query('up{namespace="sim"} == 1')) == 4)
    time.sleep(WINDOW_S + 2)
    yield url
    prom.set_targets("vllm", "simserve", [])
    proc.terminate()
    proc.wait(timeout=10)
    proc.stdout.close()


def targets() -> list[RoleTarget]:
    pf = PolicyFile.model_validate(
        {
            "pools": [
                {
                    "name": "sim",
                    "roles": {
                        "prefill": fl.role("sim", "sim-prefill"),
                        "decode": fl.role("sim", "sim-decode"),
                    },
                }
            ]
        }
    )
    return [RoleTarget(pool="sim", role=r, spec=s) for r, s in pf.pools[0].roles.items()]


def _get(url: str) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(url, timeout=5).json()
    return body


def _post(url: str) -> None:
    requests.post(url, timeout=5).raise_for_status()


async def truth(url: str) -> dict[str, Any]:
    return await asyncio.to_thread(_get, f"{url}/truth")


def by_role(t: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [r for r in t["replicas"] if r["role"] == role and r["status"] == "ready"]


async def test_rates_match_simulator_counters(prom: PromServer, sim_url: str) -> None:
    """Per role, request/token rates and tokens per step over the window equal the
    simulator's own counter deltas over the same span, within scrape tolerance."""
    src = fl.source(prom.url, rate_window_s=WINDOW_S)
    try:
        a = await truth(sim_url)
        await asyncio.sleep(WINDOW_S)
        b = await truth(sim_url)
        samples = await src.fetch(targets(), now=0.0)
    finally:
        src.close()
    span = b["sim_time_s"] - a["sim_time_s"]
    for role in ("prefill", "decode"):
        got = samples[("sim", Role(role))]
        before = {r["pod"]: r for r in by_role(a, role)}
        after = by_role(b, role)
        checks = {
            key: sum(r[field] - before[r["pod"]][field] for r in after) / span
            for key, field in (
                ("request_rate", "success"),
                ("prompt_tokens_rate", "prompt_tokens"),
                ("generation_tokens_rate", "generation_tokens"),
            )
        }
        for key, want in checks.items():
            assert got[key].value == pytest.approx(want, rel=0.35, abs=0.5), (role, key, got[key])
            assert got[key].replicas == 2
        per_pod = []
        for r in after:
            steps = r["iteration_tokens_count"] - before[r["pod"]]["iteration_tokens_count"]
            tokens = r["iteration_tokens_sum"] - before[r["pod"]]["iteration_tokens_sum"]
            per_pod.append(tokens / steps / r["max_num_batched_tokens"] if steps else 0.0)
        want_bt = sum(per_pod) / len(per_pod)
        bt = got["batched_tokens"]
        assert bt.value == pytest.approx(want_bt, rel=0.35, abs=0.02), (role, bt, per_pod)


async def test_paused_gauges_match_exactly(prom: PromServer, sim_url: str) -> None:
    """With simulated time frozen, queue depth, running and KV usage read through PromQL are
    the simulator's per-replica means."""
    await asyncio.to_thread(_post, f"{sim_url}/pause")
    src = fl.source(prom.url, rate_window_s=WINDOW_S)
    try:
        await asyncio.sleep(2.5)  # two scrapes of the frozen state
        t = await truth(sim_url)
        samples = await src.fetch(targets(), now=0.0)
    finally:
        src.close()
        await asyncio.to_thread(_post, f"{sim_url}/resume")
    for role in ("prefill", "decode"):
        reps = by_role(t, role)
        got = samples[("sim", Role(role))]
        for key, field in (
            ("queue_depth", "waiting"),
            ("running", "running"),
            ("kv_cache", "kv_usage"),
        ):
            want = sum(r[field] for r in reps) / len(reps)
            assert got[key].value == pytest.approx(want, abs=1e-9), (role, key, json.dumps(reps))
            assert got[key].replicas == len(reps)


async def test_every_pod_has_its_own_address(prom: PromServer, sim_url: str) -> None:
    """Like vLLM pods, each simulated pod answers GET /metrics on its own host:port; the
    service-discovery file lists those addresses, and Prometheus scrapes the V1 families there
    (the per-request histograms and the prefix-cache counters included) under each pod."""
    entries = await asyncio.to_thread(_get_list, f"{sim_url}/targets")
    addrs = [e["targets"][0] for e in entries]
    assert len(addrs) == len(set(addrs)) == 4
    assert all("__metrics_path__" not in e["labels"] for e in entries)
    for e in entries:
        body = await asyncio.to_thread(_text, f"http://{e['targets'][0]}/metrics")
        assert "vllm:prefix_cache_queries_total" in body
        assert "vllm:request_queue_time_seconds_bucket" in body
    # Other tests' fake pods share this Prometheus: look at the simulated namespace only.
    success = prom.query('vllm:request_success_total{namespace="sim"}')
    assert {s["metric"]["pod"] for s in success} == {e["labels"]["pod"] for e in entries}
    assert {s["metric"]["finished_reason"] for s in success} == {"stop", "length", "abort"}
    assert prom.query('vllm:request_prefill_time_seconds_count{namespace="sim"}')


def _get_list(url: str) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = requests.get(url, timeout=5).json()
    return body


def _text(url: str) -> str:
    r = requests.get(url, timeout=5)
    r.raise_for_status()
    return r.text
