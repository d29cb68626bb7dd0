"""`pd-autoscaler sim serve`: simulated vLLM pods' `/metrics` over HTTP, in (scaled) wall time.

A P/D pool (namespace `sim`, Deployments `sim-prefill` and `sim-decode`, `--replicas` each;
with `--aggregated`, one Deployment `sim` of `--replicas` pods serving whole requests) is
simulated by `sim.engine` and advanced to `speedup x` elapsed wall time every 100 ms. Each
replica is a pod with its own address, as a vLLM pod is: it listens on its own port of `--host`
and answers `GET /metrics` there, so a scrape config written for vLLM pods works unchanged. The
control port serves:

    GET  /targets                          live pods as file_sd / http_sd JSON: each pod's
                                           host:port, with `namespace`, `pod` (named as a
                                           ReplicaSet names pods) and `role` labels
    GET  /pods/<namespace>/<pod>/metrics   the same exposition by path (for a quick curl);
                                           <pod> is that name or `<deployment>-<index>`
    GET  /truth                            the simulator's own numbers (ground truth for tests)
    POST /pause, /resume                   freeze and thaw simulated time (gauges hold still)
    GET  /healthz

The exposition is always the classic text format, whatever Accept asks for: Prometheus 2.x
negotiates OpenMetrics first, and prometheus-client's OpenMetrics output escapes `vllm:` names
in a way older Prometheus versions drop (docs/prometheus.md). Starting replicas answer 503,
like a vLLM pod whose server is not up yet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
import zlib
from typing import Any

import structlog
from aiohttp import web

from autoscaler import profile
from autoscaler.sim import engine, traces, workload
from autoscaler.types import Role

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAMESPACE = "sim"
POOL = "sim"
# Default load when no trace is given: the Azure conversation shape at a rate one prefill and
# one decode replica of the default profile carry without queueing much.
DEFAULT_RATE_RPS = 4.0
DEFAULT_DURATION_S = 6 * 3600.0
ADVANCE_EVERY_S = 0.1


def build_simulation(
    *,
    trace: traces.Trace,
    prof: profile.Profile,
    replicas: int,
    aggregated: bool = False,
) -> engine.Simulation:
    sim = engine.Simulation()
    roles = (
        {Role.AGGREGATED: (NAMESPACE, POOL)}
        if aggregated
        else {
            Role.PREFILL: (NAMESPACE, f"{POOL}-prefill"),
            Role.DECODE: (NAMESPACE, f"{POOL}-decode"),
        }
    )
    sim.add_pool(
        POOL,
        profile=prof,
        deployments=roles,
        arrival_s=trace.arrival_s,
        prompt_tokens=trace.prompt_tokens,
        output_tokens=trace.output_tokens,
        initial_replicas=dict.fromkeys(roles, replicas),
        block_hashes=trace.block_hashes,
        block_tokens=trace.block_tokens,
    )
    return sim


# Kubernetes' alphabet for generated names (no vowels, no look-alike digits).
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def pod_name(deployment: str, idx: int) -> str:
    """The idx-th replica's pod name as a Deployment's ReplicaSet writes it,
    `<deployment>-<pod-template-hash>-<5 characters>`: the `pod` label `/targets` gives it,
    from which the metrics layer reads the Deployment back (`metrics/selectors.py`).
    Deterministic: the hash comes from the Deployment's name, the suffix from idx. The
    simulator's own short name (`<deployment>-<idx>`) still serves `/pods/.../metrics`, as
    the kind overlay's scrape annotations use it."""

    def encode(n: int, width: int) -> str:
        out = ""
        for _ in range(width):
            n, d = divmod(n, len(_SAFE))
            out += _SAFE[d]
        return out

    return f"{deployment}-{encode(zlib.crc32(deployment.encode()), 9)}-{encode(idx, 5)}"


class SimServer:
    """The HTTP face of a running Simulation."""

    def __init__(self, sim: engine.Simulation, *, naming: str = "new", speedup: float = 1.0):
        if naming not in ("new", "old"):
            msg = f"naming must be new or old, got {naming!r}"
            raise ValueError(msg)
        self.sim = sim
        self.naming = naming
        self.speedup = speedup
        self.paused = False
        self._anchor_wall = time.monotonic()
        self._anchor_sim = sim.now
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0
        self.host = "127.0.0.1"
        # One listener per pod (replica): its runner and port.
        self._pods: dict[tuple[str, str], tuple[web.AppRunner, int]] = {}
        app = web.Application()
        app.router.add_get("/pods/{namespace}/{pod}/metrics", self._metrics)
        app.router.add_get("/targets", self._targets)
        app.router.add_get("/truth", self._truth)
        app.router.add_post("/pause", self._pause)
        app.router.add_post("/resume", self._resume)
        app.router.add_get("/healthz", self._healthz)
        self.app = app

    # --- time -------------------------------------------------------------------------------

    def advance(self) -> None:
        """Bring simulated time to the scaled wall clock (no-op while paused)."""
        if self.paused:
            return
        target = self._anchor_sim + (time.monotonic() - self._anchor_wall) * self.speedup
        if target > self.sim.now:
            self.sim.advance_to(target)

    async def _ticker(self) -> None:
        while True:
            self.advance()
            await asyncio.sleep(ADVANCE_EVERY_S)

    # --- handlers ---------------------------------------------------------------------------

    def _replica(self, namespace: str, pod: str) -> engine.Replica | None:
        for r in self.sim.replicas():
            if r.dep.namespace == namespace and pod in (r.name, pod_name(r.dep.name, r.idx)):
                return r
        return None

    async def _metrics(self, request: web.Request) -> web.Response:
        return self._exposition(
            self._replica(request.match_info["namespace"], request.match_info["pod"])
        )

    def _exposition(self, rep: engine.Replica | None) -> web.Response:
        self.advance()
        if rep is None or rep.status == engine.STOPPED:
            raise web.HTTPNotFound
        if rep.status == engine.STARTING:
            raise web.HTTPServiceUnavailable(text="starting")
        body = rep.metrics.render_text(self.naming)  # type: ignore[arg-type]
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def _targets(self, request: web.Request) -> web.Response:
        self.advance()
        await self.ensure_pods()
        entries = [
            {
                "targets": [f"{self.host}:{self._pods[(r.dep.namespace, r.name)][1]}"],
                "labels": {
                    "namespace": r.dep.namespace,
                    "pod": pod_name(r.dep.name, r.idx),
                    "role": r.role.value,
                },
            }
            for r in self.sim.replicas()
        ]
        return web.json_response(entries)

    async def ensure_pods(self) -> None:
        """Give every live replica its own listener (new replicas appear as pods do)."""
        for r in self.sim.replicas():
            key = (r.dep.namespace, r.name)
            if key in self._pods:
                continue
            app = web.Application()

            async def pod_metrics(request: web.Request, rep: engine.Replica = r) -> web.Response:
                return self._exposition(rep)

            app.router.add_get("/metrics", pod_metrics)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, self.host, 0)
            await site.start()
            self._pods[key] = (runner, _bound_port(site))

    def pod_address(self, namespace: str, pod: str) -> str:
        """host:port of a pod's listener (after ensure_pods)."""
        return f"{self.host}:{self._pods[(namespace, pod)][1]}"

    async def _truth(self, request: web.Request) -> web.Response:
        self.advance()
        reps: list[dict[str, Any]] = []
        for r in self.sim.replicas():
            m = r.metrics.scrape()
            reps.append(
                {
                    "namespace": r.dep.namespace,
                    "pod": pod_name(r.dep.name, r.idx),
                    "role": r.role.value,
                    "status": r.status,
                    "waiting": m.waiting,
                    "running": m.running,
                    "kv_usage": m.kv_usage,
                    "prompt_tokens": m.prompt_tokens,
                    "generation_tokens": m.generation_tokens,
                    "success": m.success,
                    "iteration_tokens_sum": m.iteration_tokens.sum,
                    "iteration_tokens_count": m.iteration_tokens.count,
                    "max_num_batched_tokens": r.budget,
                }
            )
        return web.json_response(
            {"sim_time_s": self.sim.now, "paused": self.paused, "replicas": reps}
        )

    async def _pause(self, request: web.Request) -> web.Response:
        self.advance()
        self.paused = True
        return web.json_response({"sim_time_s": self.sim.now, "paused": True})

    async def _resume(self, request: web.Request) -> web.Response:
        if self.paused:
            self._anchor_wall = time.monotonic()
            self._anchor_sim = self.sim.now
            self.paused = False
        return web.json_response({"sim_time_s": self.sim.now, "paused": False})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._anchor_wall = time.monotonic()
        self._anchor_sim = self.sim.now
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.host = host
        self.port = _bound_port(site) or port
        await self.ensure_pods()
        self._task = asyncio.create_task(self._ticker())
        return self.port

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for runner, _ in self._pods.values():
            await runner.cleanup()
        self._pods.clear()
        if self._runner is not None:
            await self._runner.cleanup()


def _bound_port(site: web.TCPSite) -> int:
    """The port a site bound (aiohttp exposes it for port=0 only on the private server)."""
    sockets = getattr(site._server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0


def _trace(args: argparse.Namespace) -> traces.Trace:
    if args.trace is not None:
        return traces.load_trace(args.trace)
    spec = workload.AZURE_CONV.with_rate(DEFAULT_RATE_RPS)
    return workload.generate(spec, duration_s=DEFAULT_DURATION_S, diurnal=False)


async def _serve(args: argparse.Namespace) -> int:
    sim = build_simulation(
        trace=_trace(args),
        prof=profile.resolve_profile(args.profile),
        replicas=args.replicas,
        aggregated=bool(getattr(args, "aggregated", False)),
    )
    server = SimServer(sim, naming=args.naming, speedup=args.speedup)
    port = await server.start(args.host, args.port)
    # The first stdout line is the URL, so a parent process (or a test) can use --port 0.
    print(f"http://{args.host}:{port}", flush=True)
    log.info("sim_serve_started", host=args.host, port=port, naming=args.naming)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    """Entry point of `pd-autoscaler sim serve` (see autoscaler/cli.py)."""
    if args.replicas < 1:
        print("--replicas must be >= 1")
        return 2
    return asyncio.run(_serve(args))
