"""The shared fleet: pools of fake vLLM pods with known ground truth, and their policy.

Each pool lives in its own namespace and exercises one thing: P/D with the new names (alpha),
the old names (beta), the escaped `vllm_` spelling (gamma), both generations at once with data
parallelism (delta), idle pods (idle), no pods at all (empty), a NaN pod (nanpool), a pod with
frozen timestamps (stale), and selection by an extra label (labels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.metrics.settings import PrometheusSettings
from autoscaler.metrics.source import RoleTarget
from autoscaler.spec import PolicyFile
from tests.prom.fakevllm import FakePod, FakeVllmServer, rs_pod
from tests.prom.promserver import PromServer, eventually

# Short windows for a 1 s scrape interval: rate() needs >= 2 samples, 6 s gives ~6.
RATE_WINDOW_S = 6.0
MAX_AGE_S = 15.0
MNBT = 8192

ALL_SIGNALS: list[dict[str, Any]] = [
    {"signal": "queue_depth", "target": 5},
    {"signal": "batched_tokens", "target": 0.8},
    {"signal": "kv_cache", "target": 0.8},
    {"signal": "running", "target": 40},
    {"signal": "ttft", "target": 1.0, "quantile": 0.9},
    {"signal": "itl", "target": 0.1, "quantile": 0.5},
    # floor 0.5 s / slowdown 3: the divisor is clamped at 167 ms.
    {"signal": "ttft_relative", "target": 3.0, "quantile": 0.9},
]


def role(ns: str, deployment: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "deployment": {"namespace": ns, "name": deployment},
        "min_replicas": 1,
        "max_replicas": 16,
        "max_num_batched_tokens": MNBT,
        "signals": ALL_SIGNALS,
    }
    spec.update(extra)
    return spec


def policy_dict() -> dict[str, Any]:
    return {
        "pools": [
            {
                "name": "alpha",
                "roles": {
                    "prefill": role("alpha", "alpha-prefill"),
                    "decode": role("alpha", "alpha-decode"),
                },
            },
            {"name": "beta", "roles": {"aggregated": role("beta", "beta")}},
            {"name": "gamma", "roles": {"aggregated": role("gamma", "gamma")}},
            {"name": "delta", "roles": {"aggregated": role("delta", "delta")}},
            {"name": "idle", "roles": {"aggregated": role("idle", "idle")}},
            {"name": "empty", "roles": {"aggregated": role("empty", "empty")}},
            {"name": "nanpool", "roles": {"aggregated": role("nanpool", "nanpool")}},
            {"name": "stale", "roles": {"aggregated": role("stale", "stale")}},
            {
                "name": "labels",
                "roles": {
                    "aggregated": role(
                        "labels",
                        "labels",
                        metrics={"pod_regex": "srv-.*", "labels": {"model_name": "m1"}},
                    )
                },
            },
        ]
    }


def pods() -> list[FakePod]:
    busy: dict[str, Any] = {
        "request_rate": 2.0,
        "prompt_tokens_per_request": 1000,
        "generation_tokens_per_request": 11,
        "steps_per_s": 10.0,
        "tokens_per_step": 2048,
    }
    frozen = int((time.time() - 120) * 1000)
    return [
        # alpha prefill: waiting 4/6/8 -> mean 6; kv 0.3; TTFT all at 0.3 s; prompts 200 and
        # 1,800 tokens in equal shares (mean 1,000, CV 0.8)
        *(
            FakePod(rs_pod("alpha-prefill", i), "alpha", waiting=w, running=2, kv=0.3, ttft_s=0.3,
                    prompt_lengths=(200, 1800), **busy)
            for i, w in enumerate((4, 6, 8))
        ),
        # alpha decode: running 30/50 -> 40; kv 0.6/0.8 -> 0.7; ITL 0.03 s; 64 tokens/step
        FakePod(
            rs_pod("alpha-decode", 0), "alpha", running=30, kv=0.6, itl_s=0.03,
            **{**busy, "tokens_per_step": 64, "steps_per_s": 20},
        ),
        FakePod(
            rs_pod("alpha-decode", 1), "alpha", running=50, kv=0.8, itl_s=0.03,
            **{**busy, "tokens_per_step": 64, "steps_per_s": 20},
        ),
        # beta: vLLM < 0.9 names (gpu_cache_usage_perc, time_per_output_token_seconds)
        *(
            FakePod(rs_pod("beta", i), "beta", naming="old", waiting=1, kv=0.5, itl_s=0.045, **busy)
            for i in range(2)
        ),
        # gamma: everything under the escaped vllm_ spelling
        *(FakePod(rs_pod("gamma", i), "gamma", escaped=True, waiting=3, kv=0.4, **busy) for i in range(2)),
        # delta: both generations (old kv deliberately different) and 2 DP engines per pod
        *(
            FakePod(
                rs_pod("delta", i), "delta", naming="both", engines=2, waiting=10, kv=0.2, old_kv=0.9,
                **busy,
            )
            for i in range(2)
        ),
        # idle: no steps, no requests
        *(FakePod(rs_pod("idle", i), "idle", waiting=0, kv=0.05) for i in range(2)),
        # nanpool: one of three pods reports NaN gauges
        *(FakePod(rs_pod("nanpool", i), "nanpool", waiting=2, kv=0.5, **busy) for i in range(2)),
        FakePod(rs_pod("nanpool", 2), "nanpool", waiting=2, kv=0.5, nan=True, **busy),
        # stale: one of two pods serves samples with an explicit timestamp 2 minutes old
        FakePod(rs_pod("stale", 0), "stale", waiting=5, kv=0.5, **busy),
        FakePod(rs_pod("stale", 1), "stale", waiting=50, kv=0.9, frozen_ms=frozen, **busy),
        # labels: same pod prefix, two models; the role selects model m1 only
        FakePod("srv-a", "labels", model="m1", waiting=7, **busy),
        FakePod("srv-b", "labels", model="m2", waiting=100, **busy),
    ]  # fmt: skip


@dataclass
class Fleet:
    prom: PromServer
    server: FakeVllmServer
    policy: PolicyFile
    pods: dict[str, FakePod]

    @classmethod
    def start(cls, prom: PromServer, server: FakeVllmServer) -> Fleet:
        fleet = cls(
            prom=prom,
            server=server,
            policy=PolicyFile.model_validate(policy_dict()),
            pods={p.name: server.add(p) for p in pods()},
        )
        prom.set_targets("vllm", "fleet", [server.target(p) for p in fleet.pods.values()])
        # Every target up, then a full rate window of samples.
        eventually(
            lambda: len(prom.query('up{job="vllm",namespace="alpha"} == 1')) == 5, timeout=30
        )
        time.sleep(RATE_WINDOW_S + 2)
        return fleet

    def targets(self, *pools: str) -> list[RoleTarget]:
        return [
            RoleTarget(pool=p.name, role=r, spec=s)
            for p in self.policy.pools
            if not pools or p.name in pools
            for r, s in p.roles.items()
        ]


def settings(url: str, **overrides: Any) -> PrometheusSettings:
    values: dict[str, Any] = {
        "url": url,
        "rate_window_s": RATE_WINDOW_S,
        "max_sample_age_s": MAX_AGE_S,
        "timeout_s": 5.0,
        "retries": 1,
        "backoff_s": 0.1,
    }
    values.update(overrides)
    return PrometheusSettings(**values)


def source(url: str, **overrides: Any) -> PrometheusSource:
    return PrometheusSource(settings(url, **overrides))
