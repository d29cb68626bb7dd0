"""What one controller tick costs at 10 to 5,000 pools (issue 16).

The real `Loop` and `PrometheusSource` (aiohttp, the real query builder and answer judging)
run against a Prometheus-shaped HTTP server on 127.0.0.1, in a separate process so that its
CPU is not counted. The server answers `/api/v1/query` in Prometheus' JSON format with the rows
a Prometheus scraping the benchmark's fleet would return for the query's shape (one row per pod
for per-pod queries, the parts of a quantile per role), so request and response sizes are those
of a real cluster of that many pods. The actuator is the test kit's `FakeActuator` (2 replicas
per role): the Kubernetes side (Deployment reads) is not part of this figure.

Fleet: N prefill/decode pools, 2 pods per role, pools spread over 20 namespaces; prefill reads
queue_depth, batched_tokens, kv_cache and TTFT p90, decode running, kv_cache and ITL p50.

Per pool count, in a fresh process (peak RSS is per process): one warm-up tick (discovery),
then `--ticks` measured ticks. Printed per size: CPU-s per tick of the controller process
(`time.process_time`, median and p90), peak RSS, queries per tick, request bytes per tick (body
plus request line and headers, as the server received them), the largest single request, and
response bytes per tick.

    .venv/bin/python benchmarks/controller_scale.py [--pools 10 100 1000 5000] [--ticks 5]

With `--buckets B` (replica sharding, controller/shards.py), each pool count is split onto B
buckets by the controller's own hash, and each bucket's share is measured as one replica
ticking it (its policy is the controller's `_share` of the whole: the pools hashed onto that
bucket); printed per bucket, plus the balance of the split (largest share over the mean).

    .venv/bin/python benchmarks/controller_scale.py --pools 5000 --buckets 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

NAMESPACES = 20
PODS_PER_ROLE = 2


def policy_dict(pools: int) -> dict[str, Any]:
    def role(i: int, name: str, signals: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "deployment": {"namespace": f"ns-{i % NAMESPACES}", "name": f"pool-{i}-{name}"},
            "max_replicas": 16,
            "signals": signals,
        }

    return {
        "pools": [
            {
                "name": f"pool-{i}",
                "roles": {
                    "prefill": role(
                        i,
                        "prefill",
                        [
                            {"signal": "queue_depth", "target": 5},
                            {"signal": "batched_tokens", "target": 0.8},
                            {"signal": "kv_cache", "target": 0.8},
                            {"signal": "ttft", "target": 1.0, "quantile": 0.9},
                        ],
                    ),
                    "decode": role(
                        i,
                        "decode",
                        [
                            {"signal": "running", "target": 40},
                            {"signal": "kv_cache", "target": 0.8},
                            {"signal": "itl", "target": 0.1, "quantile": 0.5},
                        ],
                    ),
                },
            }
            for i in range(pools)
        ]
    }


# --- the Prometheus-shaped server -------------------------------------------------------------

_TAGGED = re.compile(r'"pd_pool", "([^"]*)", "", ""\), "pd_role", "([^"]*)"')
_PRESENT = [
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:iteration_tokens_total_sum",
    "vllm:iteration_tokens_total_count",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_count",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:inter_token_latency_seconds_count",
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
]


def _row(labels: dict[str, str], value: float, at: float) -> dict[str, Any]:
    return {"metric": labels, "value": [at, repr(value)]}


def answer(promql: str, at: float) -> list[dict[str, Any]]:
    """The rows Prometheus would return for `promql` over the benchmark's fleet."""
    if promql.startswith("count by (__name__)"):
        return [_row({"__name__": n}, 4.0, at) for n in _PRESENT]
    roles = dict.fromkeys(_TAGGED.findall(promql))
    rows: list[dict[str, Any]] = []
    for pool, role in roles:
        base = {"pd_pool": pool, "pd_role": role}
        if "histogram_quantile" in promql:
            for part, v in (("value", 0.4), ("rate", 3.0), ("replicas", PODS_PER_ROLE)):
                rows.append(_row({**base, "pd_part": part}, float(v), at))
            continue
        for k in range(PODS_PER_ROLE):
            pod = {**base, "pod": f"{pool}-{role}-5d8f7c9b4-x{k:04d}"}
            if '"age"' in promql:
                rows.append(_row({**pod, "pd_part": "value"}, 3.0, at))
                rows.append(_row({**pod, "pd_part": "age"}, 1.5, at))
            else:
                rows.append(_row(pod, 0.25, at))
    return rows


def serve(port_out: Any) -> None:
    """Run the server until killed; counts what it received and sent."""
    stats = {"requests": 0, "request_bytes": 0, "max_request_bytes": 0, "response_bytes": 0}

    async def query(request: web.Request) -> web.Response:
        body = await request.read()
        head = (
            len(request.method)
            + len(request.raw_path)
            + 11
            + sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        )
        size = head + len(body)
        stats["requests"] += 1
        stats["request_bytes"] += size
        stats["max_request_bytes"] = max(stats["max_request_bytes"], size)
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        promql = form.get("query") or request.query.get("query", "")
        doc = {
            "status": "success",
            "data": {"resultType": "vector", "result": answer(promql, time.time())},
        }
        text = json.dumps(doc, separators=(",", ":"))
        stats["response_bytes"] += len(text)
        return web.Response(text=text, content_type="application/json")

    async def read_stats(_: web.Request) -> web.Response:
        out = web.json_response(dict(stats))
        for k in stats:
            stats[k] = 0
        return out

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/v1/query", query)
        app.router.add_get("/stats", read_stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


# --- one pool count, in its own process -------------------------------------------------------


async def _stats(session: Any, url: str) -> dict[str, int]:
    async with session.get(url + "/stats") as resp:
        out: dict[str, int] = await resp.json()
        return out


async def measure(pools: int, ticks: int, bucket: int = 0, buckets: int = 1) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415
    import structlog  # noqa: PLC0415

    from autoscaler.controller.shards import bucket_of  # noqa: PLC0415
    from autoscaler.loop import Loop  # noqa: PLC0415
    from autoscaler.metrics.prometheus import PrometheusSource  # noqa: PLC0415
    from autoscaler.metrics.settings import PrometheusSettings  # noqa: PLC0415
    from autoscaler.spec import PolicyFile  # noqa: PLC0415
    from autoscaler.testing import FakeActuator  # noqa: PLC0415

    # The decision log line per role is part of a tick's cost; write it where it costs what
    # writing it costs, without flooding the terminal.
    sink = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - once, before the measured ticks
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(sink))
    ctx = multiprocessing.get_context("spawn")
    port_q = ctx.Queue()
    server = ctx.Process(target=serve, args=(port_q,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port_q.get(timeout=60)}"
        policy = PolicyFile.model_validate(policy_dict(pools))
        share = tuple(p for p in policy.pools if bucket_of(p.name, buckets) == bucket)
        policy = policy.model_copy(update={"pools": share})
        src = PrometheusSource(PrometheusSettings(url=url, timeout_s=60, max_concurrency=4))
        loop = Loop(policy, src, FakeActuator())
        cpu: list[float] = []
        queries: list[int] = []
        async with aiohttp.ClientSession() as session:
            await loop.tick(0.0)  # warm-up: discovery, first builds
            await _stats(session, url)
            for i in range(ticks):
                start = time.process_time()
                report = await loop.tick(15.0 * (i + 1))
                cpu.append(time.process_time() - start)
                queries.append(src.stats.last_tick_queries)
                assert report.metrics_error is None, report.metrics_error
            sent = await _stats(session, url)
        src.close()
    finally:
        server.kill()
    cpu.sort()
    return {
        "pools": pools,
        "share": len(policy.pools),
        "cpu_median": statistics.median(cpu),
        "cpu_p90": cpu[min(len(cpu) - 1, round(0.9 * (len(cpu) - 1)))],
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "queries": statistics.median(queries),
        "request_bytes": sent["request_bytes"] / ticks,
        "max_request_bytes": sent["max_request_bytes"],
        "response_bytes": sent["response_bytes"] / ticks,
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pools", type=int, nargs="+", default=[10, 100, 1000, 5000])
    ap.add_argument("--ticks", type=int, default=5)
    ap.add_argument("--buckets", type=int, default=1,
                    help="split each pool count onto this many buckets (replicas)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bucket", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(asyncio.run(measure(args.one, args.ticks, args.bucket, args.buckets))))
        return
    if args.buckets > 1:
        sharded(args.pools, args.ticks, args.buckets)
        return
    print(
        "| pools | CPU-s/tick median | p90 | peak RSS MB | queries/tick | request MB/tick "
        "| largest request MB | response MB/tick |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.pools:
        done = subprocess.run(  # noqa: S603 - this very script, by its own path
            [sys.executable, __file__, "--one", str(n), "--ticks", str(args.ticks)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"| {n} | failed: {done.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {n} | {r['cpu_median']:.3f} | {r['cpu_p90']:.3f} | {r['rss_mb']:.0f} "
            f"| {r['queries']:.0f} | {_mb(r['request_bytes'])} | {_mb(r['max_request_bytes'])} "
            f"| {_mb(r['response_bytes'])} |",
            flush=True,
        )


def _one(n: int, ticks: int, bucket: int = 0, buckets: int = 1) -> dict[str, Any] | str:
    done = subprocess.run(  # noqa: S603 - this very script, by its own path
        [sys.executable, __file__, "--one", str(n), "--ticks", str(ticks), "--bucket",
         str(bucket), "--buckets", str(buckets)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def sharded(pool_counts: list[int], ticks: int, buckets: int) -> None:
    """Each bucket's share as one replica's tick, in a fresh process per bucket."""
    print("| pools | bucket | pools in bucket | CPU-s/tick median | p90 | peak RSS MB "
          "| queries/tick | request MB/tick | response MB/tick |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in pool_counts:
        shares = []
        cpu = []
        for b in range(buckets):
            r = _one(n, ticks, b, buckets)
            if isinstance(r, str):
                print(f"| {n} | {b} | {r} |", flush=True)
                continue
            shares.append(r["share"])
            cpu.append(r["cpu_median"])
            print(f"| {n} | {b} | {r['share']} | {r['cpu_median']:.3f} | {r['cpu_p90']:.3f} "
                  f"| {r['rss_mb']:.0f} | {r['queries']:.0f} | {_mb(r['request_bytes'])} "
                  f"| {_mb(r['response_bytes'])} |", flush=True)
        if shares:
            mean = n / buckets
            print(f"\n{n} pools on {buckets} buckets: shares {min(shares)}-{max(shares)} "
                  f"(largest {max(shares) / mean:.2f} x the mean {mean:g}); slowest replica "
                  f"{max(cpu):.3f} CPU-s per tick\n", flush=True)


if __name__ == "__main__":
    main()
