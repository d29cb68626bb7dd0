"""1,000 pools against a real Prometheus (issue 16): every per-tick query, whose text does not
grow with the pool count, is accepted and answered, and every one of the 2,000 roles reads its
own pods' values.

Ten exporter targets serve the series of 4,000 simulated vLLM pods (100 pools each; namespace
and pod labels in the exposition, scraped with honor_labels, as from a federating exporter).
The fleet is built to catch a wrong split:

- pool i's prefill Deployment is `m<i>` and its decode Deployment `m<i>-decode`: each prefill
  name is a prefix of its decode's (and `m1` of `m10`...), which the old `<deployment>-.*`
  default could not tell apart;
- 25 namespaces, more than MAX_NAMESPACES_IN_QUERY, so the queries read every namespace, and
  each namespace also holds an unmanaged Deployment's pods, which no role may pick up;
- every role has its own queue values and its TTFT in one of two buckets;
- 5 more pools are found by a custom pod_regex (StatefulSet-like pod names), the selector path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.metrics import queries
from autoscaler.metrics.source import RoleTarget
from autoscaler.spec import PolicyFile
from autoscaler.types import Role
from tests.prom import fleet as fl
from tests.prom.fakevllm import rs_pod
from tests.prom.promserver import TEXT_FORMAT, Answer, PromServer, eventually, serve_expositions

pytestmark = pytest.mark.prometheus

POOLS = 1000
CUSTOM = 5
SHARDS = 10
NAMESPACES = 25
PODS = 2
SCRAPE_S = 2.0
WINDOW_S = 10.0
TTFT_BOUNDS = (0.1, 0.5, 1.0, 5.0)


def namespace(i: int) -> str:
    return f"ns-{i % NAMESPACES}"


def deployment(i: int, role: Role) -> str:
    return f"m{i}" if role is Role.PREFILL else f"m{i}-decode"


def waiting(i: int, role: Role, k: int) -> int:
    """Pod k's queue: the role's mean is i % 50 + (1000 if decode) + 0.5."""
    return i % 50 + (1000 if role is Role.DECODE else 0) + k


def slow(i: int, role: Role) -> bool:
    """Whether the role's TTFT observations land in (0.5, 1] rather than (0.1, 0.5]."""
    return (i + (role is Role.DECODE)) % 2 == 1


def _pod_lines(ns: str, pod: str, queue: int, slow_ttft: bool, dt: float) -> list[str]:
    """One pod's series: counters grow at 1 request/s."""
    lab = f'namespace="{ns}",pod="{pod}",engine="0"'
    lines = [
        f"vllm:num_requests_waiting{{{lab}}} {queue}",
        f"vllm:request_success_total{{{lab}}} {dt:.3f}",
        f"vllm:prompt_tokens_total{{{lab}}} {dt * 100:.3f}",
        f"vllm:generation_tokens_total{{{lab}}} {dt * 10:.3f}",
    ]
    first = 1.0 if slow_ttft else 0.5  # every observation sits just under this bound
    for le in TTFT_BOUNDS:
        v = dt if le >= first else 0.0
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{{lab},le="{le}"}} {v:.3f}')
    lines.append(f'vllm:time_to_first_token_seconds_bucket{{{lab},le="+Inf"}} {dt:.3f}')
    lines.append(f"vllm:time_to_first_token_seconds_count{{{lab}}} {dt:.3f}")
    return lines


def exposition(shard: int, t0: float) -> str:
    dt = time.time() - t0
    lines: list[str] = []
    for i in range(shard, POOLS, SHARDS):
        for role in (Role.PREFILL, Role.DECODE):
            for k in range(PODS):
                pod = rs_pod(deployment(i, role), k)
                lines += _pod_lines(namespace(i), pod, waiting(i, role, k), slow(i, role), dt)
    for n in range(shard, NAMESPACES, SHARDS):
        # An unmanaged Deployment in every namespace, with a queue no role may read.
        lines += _pod_lines(f"ns-{n}", rs_pod("unmanaged", 0), 99_999, True, dt)
    if shard == 0:
        for c in range(CUSTOM):
            for k in range(PODS):
                lines += _pod_lines("custom", f"sts-{c}-{k}", 7 + c, False, dt)
    return "\n".join(lines) + "\n"


@pytest.fixture
def exporter() -> Iterator[int]:
    t0 = time.time() - 60

    def answer(path: str, accept: str) -> Answer:
        shard = int(path.rsplit("/", 1)[-1])
        return exposition(shard, t0).encode(), TEXT_FORMAT

    httpd = serve_expositions(answer)
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _policy() -> PolicyFile:
    def role(ns: str, name: str, **metrics: str) -> dict[str, object]:
        return {
            "deployment": {"namespace": ns, "name": name},
            "max_replicas": 8,
            "signals": [
                {"signal": "queue_depth", "target": 5},
                {"signal": "ttft", "target": 1.0, "quantile": 0.9},
            ],
            "metrics": metrics,
        }

    pools: list[dict[str, object]] = [
        {
            "name": f"pool-{i}",
            "roles": {
                r.value: role(namespace(i), deployment(i, r)) for r in (Role.PREFILL, Role.DECODE)
            },
        }
        for i in range(POOLS)
    ]
    pools += [
        {
            "name": f"custom-{c}",
            "roles": {"aggregated": role("custom", f"sts-{c}", pod_regex=f"sts-{c}-[0-9]+")},
        }
        for c in range(CUSTOM)
    ]
    return PolicyFile.model_validate({"pools": pools})


async def test_thousand_pools_are_answered_per_role(
    tmp_path: Path, prom_binary: str, exporter: int
) -> None:
    prom = PromServer(tmp_path / "prometheus", binary=prom_binary, scrape_interval_s=SCRAPE_S)
    prom.start()
    try:
        prom.set_targets(
            "exporter",
            "fleet",
            [
                # One target per shard; `shard` keeps their `up` series apart (they share an
                # address), and the queries sum or max it away like any extra label.
                {
                    "targets": [f"127.0.0.1:{exporter}"],
                    "labels": {"__metrics_path__": f"/s/{k}", "shard": str(k)},
                }
                for k in range(SHARDS)
            ],
        )
        eventually(lambda: len(prom.query('up{job="exporter"} == 1')) == SHARDS, timeout=60)
        # Enough scrapes of every shard for rate() over the window.
        eventually(
            lambda: (
                len(prom.query("count_over_time(vllm:request_success_total[10s]) >= 3"))
                == 2 * PODS * POOLS + NAMESPACES + PODS * CUSTOM
            ),
            timeout=60,
        )
        policy = _policy()
        targets = [RoleTarget(p.name, r, s) for p in policy.pools for r, s in p.roles.items()]
        src = fl.source(prom.url, rate_window_s=WINDOW_S, max_sample_age_s=30.0, timeout_s=30.0)
        builder = queries.Builder(
            names=queries.Names.all(), rate_window_s=WINDOW_S, max_sample_age_s=30.0
        )
        plan = queries.plan(targets, builder)
        texts = [q.promql for q in plan.queries]
        try:
            samples = await src.fetch(targets, now=0.0)
        finally:
            src.close()
        # The histogram comes back summed per Deployment (value, rate, replicas), not per pod
        # and bucket: 3 rows for each of the 2,000 roles, the 25 unmanaged Deployments, the 5
        # custom roles and the custom pods' namespace as seen by the derived half (names that
        # are not a ReplicaSet's get no pd_deployment: one group, dropped in Python), where
        # per-pod buckets would be 6 x 4,000 rows.
        quantile = next(q for q in plan.queries if q.kind is queries.Kind.QUANTILE)
        rows = prom.query(quantile.promql)
        assert len(rows) == 3 * (2 * POOLS + NAMESPACES + CUSTOM + 1)
    finally:
        prom.stop()
    assert src.stats.problems == {}, src.stats.problems
    # queue, ttft and three rates (and the first tick's discovery): nothing per pool.
    assert src.stats.last_tick_queries == 5
    assert src.stats.queries == 5 + 1
    assert max(len(t.encode()) for t in texts) < 8_000
    assert len(samples) == 2 * POOLS + CUSTOM
    for i in range(POOLS):
        for role in (Role.PREFILL, Role.DECODE):
            s = samples[(f"pool-{i}", role)]
            q = s["queue_depth"]
            assert (q.value, q.replicas) == (waiting(i, role, 0) + 0.5, PODS), (i, role, q)
            ttft = s["ttft_p90"]
            lo, hi = (0.5, 1.0) if slow(i, role) else (0.1, 0.5)
            assert ttft.value is not None, (i, role, ttft)
            assert lo < ttft.value <= hi, (i, role, ttft)
            assert ttft.replicas == PODS
            # 1/s per pod; rate() extrapolates only to the series' first sample, so a series
            # a few scrapes old may read a little low: "answered, about 2" is asserted.
            rate = s["request_rate"]
            assert rate.value is not None, (i, role, rate)
            assert 1.0 < rate.value <= 3.0, (i, role, rate)
            assert rate.replicas == PODS
    for c in range(CUSTOM):
        s = samples[(f"custom-{c}", Role.AGGREGATED)]
        assert (s["queue_depth"].value, s["queue_depth"].replicas) == (7 + c, PODS)
        assert s["ttft_p90"].value is not None
