"""What one controller tick costs at 10 to 5,000 pools (issue 16).

The real `Loop` and `PrometheusSource` (aiohttp, the real query builder and answer judging)
run against a Prometheus-shaped HTTP server on 127.0.0.1, in a separate process so that its
CPU is not counted. The server answers `/api/v1/query` in Prometheus' JSON format with the rows
a Prometheus scraping the benchmark's fleet would return for the query's shape (one row per pod
for per-pod queries, the parts of a quantile per role; for roles found by pod name, every
Deployment of the namespaces the query reads, whichever roles asked), so request and response
sizes are those of a real cluster of that many pods.

The same server plays the Kubernetes API for the Deployments (GET, list, watch; each object a
realistic ~4 KB Deployment with its Pod template and managedFields), and the tick reads them
through the real `KubernetesActuator` and kubernetes_asyncio client: `--cluster gets` is one
GET per role and tick (the controller before the watch cache), `--cluster cache` the watch
cache (`controller/cluster_cache.py`: listed once before the measured ticks, then watches that
carry each scale write back as an event), `--cluster fake` the test kit's `FakeActuator` (no
Kubernetes cost at all). Scale writes are the real compare-and-swap PATCH; the server applies
them (every replica ready at once), so after the warm-up tick the fleet settles as a real one
would.

The controller's own metrics are part of the tick: its `Telemetry` is the decision hook and wraps
the source, and `/metrics` is rendered once per tick (one scrape per 15 s). So is the rest of
`Controller.tick_once`'s bookkeeping: the state's JSON (compared with the last saved one) and the
adoption servers' decision store; and, as the controller does after its first tick, the objects
alive then are frozen out of the garbage collector's scans.

Fleet: N prefill/decode pools, 2 replicas per role at start, pools spread over 20 namespaces.
`--load steady` (the default) answers what such a fleet reports: each role's load in replicas'
worth at its targets (1.9: two replicas at 95 %, inside the deadband), split over its current
replicas (one series per replica) with +-5 % noise per tick, and 2 % of the pools' load rising
or falling 1.6x each tick, so most roles hold and a few scale. `--load storm` keeps the fixed
answers the benchmark gave before (every gauge 3.0 per pod, KV usage included: far above its
0.8 target, so every role scales up each tick its rate rules allow): the worst case of writes
and decision lines. Prefill reads queue_depth, batched_tokens, kv_cache and TTFT p90, decode
running, kv_cache and ITL p50; every second pool's prefill also has a forecast policy (model
auto on prompt_tokens_rate), as in the issue. Refits are not in these ticks (the histories are
minutes old, below min_history): their cost per fit and amortised per pool is
`benchmarks/forecast_cost.py`'s, and with the default `REFIT_WORKERS` they run in worker processes,
outside this process' CPU.

Per pool count, in a fresh process (peak RSS is per process): one warm-up tick (discovery),
then `--ticks` measured ticks. Printed per size: CPU-s per tick of the controller process
(`time.process_time`, median and p90), the part of it spent in `PrometheusSource.fetch`
(median), peak RSS, queries per tick, request bytes per tick (body
plus request line and headers, as the server received them), the largest single request, and
response bytes per tick.

    .venv/bin/python benchmarks/controller_scale.py [--pools 10 100 1000 5000] [--ticks 5]
        [--cluster cache|gets|fake] [--load steady|storm] [--profile FILE]

With `--buckets B` (replica sharding, controller/shards.py), each pool count is split onto B
buckets by the controller's own hash, and each bucket's share is measured as one replica
ticking it (its policy is the controller's `_share` of the whole: the pools hashed onto that
bucket); printed per bucket, plus the balance of the split (largest share over the mean).

    .venv/bin/python benchmarks/controller_scale.py --pools 5000 --buckets 5
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import zlib
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

NAMESPACES = 20
PODS_PER_ROLE = 2


FORECAST = {"kind": "forecast", "model": "auto", "series": "prompt_tokens_rate",
            "quantile": 0.9, "capacity_per_replica": 29000, "refit_every_s": 3600}


def policy_dict(pools: int) -> dict[str, Any]:
    def role(i: int, name: str, signals: list[dict[str, Any]]) -> dict[str, Any]:
        out = {
            "deployment": {"namespace": f"ns-{i % NAMESPACES}", "name": f"pool-{i}-{name}"},
            "max_replicas": 16,
            "signals": signals,
        }
        if name == "prefill" and i % 2 == 1:
            out |= {"cold_start_s": 90, "policies": [FORECAST]}
        return out

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


_NAMESPACES = re.compile(r'\{namespace(=~|=|!=)"([^"]*)"\}')


def _deployments(pools: int, promql: str) -> list[tuple[str, str]]:
    """(namespace, Deployment) of every fleet Deployment the derived half of `promql` reads:
    all of them in the namespaces its selector names, whichever roles asked for the key (a
    real Prometheus answers for every pod that has the metric)."""
    m = _NAMESPACES.search(promql)
    if m is None:
        return []
    op, value = m.groups()
    if op == "!=":
        wanted = None
    elif op == "=":
        wanted = {value}
    else:
        # re.escape'd, then escaped again as a PromQL string: `ns\\-1` stands for `ns-1`.
        wanted = set(value.replace("\\", "").split("|"))
    out = []
    for i in range(pools):
        ns = f"ns-{i % NAMESPACES}"
        if wanted is None or ns in wanted:
            out += [(ns, f"pool-{i}-prefill"), (ns, f"pool-{i}-decode")]
    return out


# Per-replica value of each metric when a role runs exactly at the policy's target (`load`
# 1.0 per replica), found by a fragment of the metric's name; rates and latencies are what a
# Llama-8B pod at that load reports (their exact size does not matter to the cost).
LEVELS = (
    ("num_requests_waiting", 5.0),  # queue_depth target 5
    ("num_requests_running", 40.0),  # running target 40
    ("cache_usage_perc", 0.8),  # kv_cache target 0.8
    ("iteration_tokens_total", 0.8 * 8192),  # batched_tokens 0.8 of max_num_batched_tokens
    ("request_success_total", 4.0),
    ("e2e_request_latency", 4.0),
    ("prompt_tokens_total", 4000.0),
    ("generation_tokens_total", 800.0),
)
LATENCY = (("time_to_first_token", 0.4), ("inter_token_latency", 0.05),
           ("time_per_output_token", 0.05))  # p90 TTFT target 1 s, p50 ITL 0.1 s: below both
STEADY_LOAD = 1.9  # replicas' worth at target: 2 replicas at 95 %, inside the 10 % deadband
CHURN = 0.02  # share of pools whose load moves in a tick (x1.6 or /1.6)


def _hash(*key: object) -> int:
    """A hash that is the same in every run (str hashes are salted per process)."""
    return zlib.crc32(repr(key).encode())


def _noise(*key: object) -> float:
    """A deterministic +-5 % per pod and tick: values move every tick, as real ones do."""
    return 1.0 + ((_hash(*key) % 1001) / 1000.0 - 0.5) * 0.1


class Fleet:
    """The load behind the answers: per role, in replicas' worth at the policy's target.

    `steady`: every role starts at 1.9 (2 replicas at 95 % of target, so the fleet holds) and
    each tick 2 % of the pools see their load rise or fall by 1.6x (bounded to 0.5-12): a
    realistic fleet, where most roles hold and a few scale. Per-pod values are the role's load
    over its current replicas (the server's own scale records) with +-5 % noise, and a role
    reports one series per replica.

    `storm`: the fixed answers the benchmark gave before (every gauge 3.0 per pod, KV usage
    included, i.e. 375 % of the 0.8 target; 2 pods per role): every role scales up each tick
    its rate rules allow, until its maximum, the worst case of a tick's writes and logs."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.tick = 0
        self.load: dict[str, float] = {}

    def advance(self, tick: int, pools: int) -> None:
        self.tick = tick
        for i in range(pools):
            if (_hash("churn", i, tick) % 10_000) < CHURN * 10_000:
                for role in ("prefill", "decode"):
                    name = f"pool-{i}-{role}"
                    up = _hash("dir", i, tick) % 2 == 0
                    now = self.load.get(name, STEADY_LOAD)
                    self.load[name] = min(12.0, max(0.5, now * (1.6 if up else 1 / 1.6)))


FLEET = Fleet("steady")


def answer(
    promql: str, at: float, pools: int, replicas: dict[tuple[str, str], int] | None = None
) -> list[dict[str, Any]]:
    """The rows Prometheus would return for `promql` over the benchmark's fleet (`FLEET`).

    Before issue 16 every role was a tagged branch (pd_pool/pd_role); now roles without a
    custom `metrics:` section are read namespace-wide and carry `pd_deployment`. Both shapes
    are answered, so the same server measures either version of the source."""
    if promql.startswith("count by (__name__)"):
        return [_row({"__name__": n}, 4.0, at) for n in _PRESENT]
    groups: list[tuple[dict[str, str], str, str]] = [
        ({"pd_pool": pool, "pd_role": role}, f"{pool}-{role}", "")
        for pool, role in dict.fromkeys(_TAGGED.findall(promql))
    ]
    if "pd_deployment" in promql:
        groups += [
            ({"namespace": ns, "pd_deployment": dep}, dep, ns)
            for ns, dep in _deployments(pools, promql)
        ]
    # Age rows: every pod's, unless the query keeps only pods older than max_sample_age_s
    # (`...timestamp(...)) > 60.0)`; the benchmark's pods are all fresh).
    ages = '"age"' in promql and re.search(r"\)\) > [0-9.e+]+\)", promql) is None
    storm = FLEET.mode == "storm"
    level = next((v for frag, v in LEVELS if frag in promql), 1.0)
    latency = next((v for frag, v in LATENCY if frag in promql), 0.4)
    rows: list[dict[str, Any]] = []
    tick = FLEET.tick
    for base, prefix, ns in groups:
        n = PODS_PER_ROLE if storm or replicas is None else replicas.get((ns, prefix), 2)
        load = FLEET.load.get(prefix, STEADY_LOAD)
        if "histogram_quantile" in promql:
            value = 0.4 if storm else latency * _noise(prefix, tick)
            rate = 3.0 if storm else 4.0 * load
            for part, v in (("value", value), ("rate", rate), ("replicas", n)):
                rows.append(_row({**base, "pd_part": part}, float(v), at))
            continue
        for k in range(n):
            pod = {**base, "pod": f"{prefix}-5d8f7c9b4-x{k:04d}"}
            per_pod = level * load / n * _noise(prefix, k, tick)
            if '"age"' in promql:
                rows.append(_row({**pod, "pd_part": "value"}, 3.0 if storm else per_pod, at))
                if ages:
                    rows.append(_row({**pod, "pd_part": "age"}, 1.5, at))
            else:
                rows.append(_row(pod, 0.25 if storm else per_pod, at))
    return rows


def deployment(ns: str, name: str, replicas: int = 2) -> dict[str, Any]:
    """A Deployment as the API server returns it, about the size of a real vLLM one."""
    labels = {"app": name, "pd-autoscaler.io/pool": name.rsplit("-", 1)[0]}
    container = {
        "name": "vllm", "image": "vllm/vllm-openai:v0.11.0",
        "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--port", "8000",
                 "--max-num-batched-tokens", "8192", "--gpu-memory-utilization", "0.9"],
        "env": [{"name": f"VLLM_VAR_{k}", "value": str(k)} for k in range(8)],
        "ports": [{"containerPort": 8000, "name": "http", "protocol": "TCP"}],
        "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "64Gi"},
                      "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000, "scheme": "HTTP"},
                           "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1,
                           "failureThreshold": 3},
        "volumeMounts": [{"name": "cache", "mountPath": "/root/.cache"},
                         {"name": "shm", "mountPath": "/dev/shm"}],  # noqa: S108 - a mount path
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "resourceVersion": "100",
            "generation": 3, "creationTimestamp": "2026-11-01T00:00:00Z", "labels": labels,
            "annotations": {"deployment.kubernetes.io/revision": "3"},
            "managedFields": [
                {"manager": m, "operation": "Update", "apiVersion": "apps/v1",
                 "time": "2026-11-01T00:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {
                     "f:containers": {'k:{"name":"vllm"}': {".": {}, "f:image": {}}}}}}}}
                for m in ("kubectl", "kube-controller-manager", "pd-autoscaler")],
        },
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [container], "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                "schedulerName": "default-scheduler",
                "volumes": [{"name": "cache", "emptyDir": {}},
                            {"name": "shm", "emptyDir": {"medium": "Memory"}}]}},
        },
        "status": {
            "observedGeneration": 3, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                {"type": t, "status": "True", "lastUpdateTime": "2026-11-01T00:00:00Z",
                 "lastTransitionTime": "2026-11-01T00:00:00Z", "reason": r, "message": "ok"}
                for t, r in (("Available", "MinimumReplicasAvailable"),
                             ("Progressing", "NewReplicaSetAvailable"))],
        },
    }


POOLS = [0]  # the fleet's size, set in the server process


def serve(port_out: Any, pools: int = 0, load: str = "steady") -> None:
    """Run the server until killed; counts what it received and sent."""
    POOLS[0] = pools
    FLEET.mode = load
    stats = {"requests": 0, "request_bytes": 0, "max_request_bytes": 0, "response_bytes": 0,
             "kube_requests": 0}

    # The API server's side: replicas per Deployment (2 at start, every replica ready at once),
    # a resourceVersion, and the open watches per namespace, which see every scale write.
    replicas: dict[tuple[str, str], int] = {}
    version = [100]
    watches: dict[str, list[asyncio.Queue[str]]] = {}

    def dep(ns: str, name: str) -> dict[str, Any]:
        d = deployment(ns, name, replicas.get((ns, name), 2))
        d["metadata"]["resourceVersion"] = str(version[0])
        return d

    async def get_deployment(request: web.Request) -> web.Response:
        stats["kube_requests"] += 1
        m = request.match_info
        return web.json_response(dep(m["ns"], m["name"]))

    def scale_doc(ns: str, name: str) -> dict[str, Any]:
        n = replicas.get((ns, name), 2)
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": name, "namespace": ns,
                             "resourceVersion": str(version[0])},
                "spec": {"replicas": n}, "status": {"replicas": n}}

    async def scale(request: web.Request) -> web.Response:
        stats["kube_requests"] += 1
        ns, name = request.match_info["ns"], request.match_info["name"]
        if request.method == "PATCH":
            ops = json.loads(await request.read())
            now = replicas.get((ns, name), 2)
            if any(op["op"] == "test" and op["value"] != now for op in ops):
                return web.json_response({"kind": "Status", "code": 422}, status=422)
            replicas[(ns, name)] = next(op["value"] for op in ops if op["op"] == "replace")
            version[0] += 1
            line = json.dumps({"type": "MODIFIED", "object": dep(ns, name)}) + "\n"
            for q in watches.get(ns, []):
                q.put_nowait(line)
        return web.json_response(scale_doc(ns, name))

    async def list_deployments(request: web.Request) -> web.StreamResponse:
        stats["kube_requests"] += 1
        ns = request.match_info["ns"]
        if request.query.get("watch") in ("true", "1", "True"):
            # Open until the watch's timeout; every scale write in the namespace is an event.
            resp = web.StreamResponse()
            resp.content_type = "application/json"
            await resp.prepare(request)
            q: asyncio.Queue[str] = asyncio.Queue()
            watches.setdefault(ns, []).append(q)
            end = time.monotonic() + float(request.query.get("timeoutSeconds", "300"))
            try:
                while (left := end - time.monotonic()) > 0:
                    try:
                        line = await asyncio.wait_for(q.get(), left)
                    except TimeoutError:
                        break
                    await resp.write(line.encode())
            finally:
                watches[ns].remove(q)
            return resp
        field = request.query.get("fieldSelector", "")
        if field.startswith("metadata.name="):
            names = [field.split("=", 1)[1]]
        else:  # the benchmark's namespace: every Deployment of its pools
            k = int(ns.rsplit("-", 1)[1])
            names = [f"pool-{i}-{r}" for i in range(k, POOLS[0], NAMESPACES)
                     for r in ("prefill", "decode")]
        return web.json_response({"apiVersion": "apps/v1", "kind": "DeploymentList",
                                  "metadata": {"resourceVersion": str(version[0])},
                                  "items": [dep(ns, n) for n in names]})

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
            "data": {"resultType": "vector",
                     "result": answer(promql, time.time(), pools, replicas)},
        }
        text = json.dumps(doc, separators=(",", ":"))
        stats["response_bytes"] += len(text)
        return web.Response(text=text, content_type="application/json")

    async def next_tick(request: web.Request) -> web.Response:
        FLEET.advance(int(await request.text()), pools)
        return web.Response(text="ok")

    async def read_stats(_: web.Request) -> web.Response:
        out = web.json_response(dict(stats))
        for k in stats:
            stats[k] = 0
        return out

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/v1/query", query)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", get_deployment)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments", list_deployments)
        app.router.add_route("*", "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale", scale)
        app.router.add_get("/stats", read_stats)
        app.router.add_post("/tick", next_tick)
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


async def _actuator(cluster: str, url: str, policy: Any) -> tuple[Any, Any, Any]:
    """(actuator, ApiClient or None, cache or None) for `--cluster`."""
    from kubernetes_asyncio import client  # noqa: PLC0415

    from autoscaler.actuator.kubernetes import KubernetesActuator  # noqa: PLC0415
    from autoscaler.testing import FakeActuator  # noqa: PLC0415

    if cluster == "fake":
        return FakeActuator(), None, None
    cfg = client.Configuration()
    cfg.host = url
    api = client.ApiClient(configuration=cfg)
    if cluster == "gets":
        return KubernetesActuator(api, timeout_s=60), api, None
    from autoscaler.controller.cluster_cache import (  # noqa: PLC0415
        DeploymentCache,
        KubeDeploymentApi,
    )

    cache = DeploymentCache(KubeDeploymentApi(client.AppsV1Api(api), timeout_s=60))
    cache.set_targets([r.deployment for p in policy.pools for r in p.roles.values()])
    while not cache.synced():  # noqa: ASYNC110 - the cache has no "synced" event to wait on
        await asyncio.sleep(0.05)
    return KubernetesActuator(api, reader=cache, timeout_s=60), api, cache


async def measure(
    pools: int, ticks: int, cluster: str, bucket: int = 0, buckets: int = 1, *,
    profile: str | None = None, load: str = "steady",
) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415
    import structlog  # noqa: PLC0415

    # The decision log line per role is part of a tick's cost; write it where it costs what
    # writing it costs, without flooding the terminal.
    # The controller's own configuration (`logs.configure`: JSON lines, as in the cluster), with
    # the lines going to /dev/null instead of stderr.
    from autoscaler import logs  # noqa: PLC0415
    from autoscaler.controller.app import _freeze_startup_objects  # noqa: PLC0415
    from autoscaler.controller.shards import bucket_of  # noqa: PLC0415
    from autoscaler.loop import Loop  # noqa: PLC0415
    from autoscaler.metrics.prometheus import PrometheusSource  # noqa: PLC0415
    from autoscaler.metrics.settings import PrometheusSettings  # noqa: PLC0415
    from autoscaler.server.store import DecisionStore  # noqa: PLC0415
    from autoscaler.spec import PolicyFile  # noqa: PLC0415
    from autoscaler.telemetry import InstrumentedSource, Telemetry  # noqa: PLC0415

    sink = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - once, before the measured ticks
    logs.configure(fmt="json")
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(sink))
    ctx = multiprocessing.get_context("spawn")
    port_q = ctx.Queue()
    server = ctx.Process(target=serve, args=(port_q, pools, load), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port_q.get(timeout=60)}"
        policy = PolicyFile.model_validate(policy_dict(pools))
        share = tuple(p for p in policy.pools if bucket_of(p.name, buckets) == bucket)
        policy = policy.model_copy(update={"pools": share})
        src = PrometheusSource(PrometheusSettings(url=url, timeout_s=60, max_concurrency=4))
        fetch_cpu: list[float] = []
        fetch = src.fetch

        async def timed_fetch(targets: Any, *, now: float) -> Any:
            # Nothing else runs in this process during the tick's fetch (the server is
            # another process), so the CPU it takes is the source's: build, send, parse, judge.
            start = time.process_time()
            try:
                return await fetch(targets, now=now)
            finally:
                fetch_cpu.append(time.process_time() - start)

        src.fetch = timed_fetch  # type: ignore[method-assign]
        tel = Telemetry()
        t0 = time.process_time()
        actuator, api, cache = await _actuator(cluster, url, policy)
        list_cpu = time.process_time() - t0
        loop = Loop(policy, InstrumentedSource(src, tel), actuator, hooks=[tel.record_decision])
        cpu: list[float] = []
        queries: list[int] = []
        scrape_bytes = 0
        scrape_cpu: list[float] = []
        scales: list[int] = []
        async with aiohttp.ClientSession() as session:
            await loop.tick(0.0)  # warm-up: discovery, first builds
            _freeze_startup_objects()  # as the controller does after its first tick
            store = DecisionStore()
            saved = ""
            await _stats(session, url)
            fetch_cpu.clear()
            prof = cProfile.Profile() if profile else None
            if prof is not None:
                prof.enable()
            for i in range(ticks):
                # The fleet's load moves (outside the measured CPU: the server is another
                # process, and this request is made before the tick's clock starts).
                async with session.post(url + "/tick", data=str(i + 1)) as resp:
                    resp.raise_for_status()
                start = time.process_time()
                report = await loop.tick(15.0 * (i + 1))
                # The controller's bookkeeping per tick (Controller.tick_once): the state's JSON
                # compared with the last saved (the shards' gzip and write only on change are
                # benchmarks/state_shards.py's) and the adoption servers' decision store.
                state_json = loop.state.to_json()
                if state_json != saved:
                    saved = state_json
                store.record(report.decision, loop.policy, snapshot=report.snapshot,
                             applied=report.applied)
                mid = time.process_time()
                scrape_bytes = len(tel.render())  # one /metrics scrape per tick
                end = time.process_time()
                cpu.append(end - start)
                scrape_cpu.append(end - mid)
                queries.append(src.stats.last_tick_queries)
                scales.append(len(report.applied))
                assert report.metrics_error is None, report.metrics_error
                assert not report.unobserved, list(report.unobserved.items())[:2]
            if prof is not None:
                prof.disable()
                prof.dump_stats(str(profile))
            sent = await _stats(session, url)
        src.close()
        if cache is not None:
            await cache.stop()
        if api is not None:
            await api.close()
    finally:
        server.kill()
    cpu.sort()
    return {
        "pools": pools,
        "share": len(policy.pools),
        "cpu_median": statistics.median(cpu),
        "cpu_p90": cpu[min(len(cpu) - 1, round(0.9 * (len(cpu) - 1)))],
        "fetch_median": statistics.median(fetch_cpu),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "queries": statistics.median(queries),
        "request_bytes": sent["request_bytes"] / ticks,
        "max_request_bytes": sent["max_request_bytes"],
        "response_bytes": sent["response_bytes"] / ticks,
        "kube_requests": sent["kube_requests"] / ticks,
        "scales": sum(scales) / ticks,
        "list_cpu": list_cpu,
        "scrape_bytes": scrape_bytes,
        "scrape_cpu": statistics.median(scrape_cpu),
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pools", type=int, nargs="+", default=[10, 100, 1000, 5000])
    ap.add_argument("--ticks", type=int, default=5)
    ap.add_argument("--cluster", choices=("cache", "gets", "fake"), default="cache")
    ap.add_argument("--load", choices=("steady", "storm"), default="steady",
                    help="steady: most roles hold, 2 %% of pools change load per tick; storm: "
                         "every role scales up each tick (the fixed answers of before)")
    ap.add_argument("--buckets", type=int, default=1,
                    help="split each pool count onto this many buckets (replicas)")
    ap.add_argument("--profile", metavar="FILE",
                    help="with one --pools value: cProfile the measured ticks into FILE "
                         "(the CPU figures then include the profiler's overhead)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bucket", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None or args.profile:
        n = args.one if args.one is not None else args.pools[0]
        print(json.dumps(asyncio.run(measure(
            n, args.ticks, args.cluster, args.bucket, args.buckets, profile=args.profile,
            load=args.load))))
        return
    if args.buckets > 1:
        sharded(args.pools, args.ticks, args.buckets, args.cluster, args.load)
        return
    print(f"cluster reads: {args.cluster}; load: {args.load}")
    print(
        "| pools | CPU-s/tick median | p90 | of which fetch (median) | peak RSS MB | queries/tick "
        "| request MB/tick | largest request MB | response MB/tick | API requests/tick "
        "| initial list CPU-s | /metrics MB | of the tick: /metrics render CPU-s "
        "| scale writes/tick |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.pools:
        done = subprocess.run(  # noqa: S603 - this very script, by its own path
            [sys.executable, __file__, "--one", str(n), "--ticks", str(args.ticks),
             "--cluster", args.cluster, "--load", args.load],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"| {n} | failed: {done.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {n} | {r['cpu_median']:.3f} | {r['cpu_p90']:.3f} | {r['fetch_median']:.3f} "
            f"| {r['rss_mb']:.0f} "
            f"| {r['queries']:.0f} | {_mb(r['request_bytes'])} | {_mb(r['max_request_bytes'])} "
            f"| {_mb(r['response_bytes'])} | {r['kube_requests']:.0f} | {r['list_cpu']:.2f} "
            f"| {_mb(r['scrape_bytes'])} | {r['scrape_cpu']:.3f} | {r['scales']:.0f} |",
            flush=True,
        )


def _one(
    n: int, ticks: int, bucket: int = 0, buckets: int = 1, *, cluster: str = "cache",
    load: str = "steady",
) -> dict[str, Any] | str:
    done = subprocess.run(  # noqa: S603 - this very script, by its own path
        [sys.executable, __file__, "--one", str(n), "--ticks", str(ticks), "--bucket",
         str(bucket), "--buckets", str(buckets), "--cluster", cluster, "--load", load],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def sharded(
    pool_counts: list[int], ticks: int, buckets: int, cluster: str, load: str = "steady"
) -> None:
    """Each bucket's share as one replica's tick, in a fresh process per bucket."""
    print("| pools | bucket | pools in bucket | CPU-s/tick median | p90 | peak RSS MB "
          "| queries/tick | request MB/tick | response MB/tick |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in pool_counts:
        shares = []
        cpu = []
        for b in range(buckets):
            r = _one(n, ticks, b, buckets, cluster=cluster, load=load)
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
