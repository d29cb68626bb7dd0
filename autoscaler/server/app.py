"""The controller's HTTP endpoints: /healthz, /readyz, /metrics, plus plug-ins.

One aiohttp application per process (aiohttp already comes with kubernetes-asyncio). Other
servers of the project add their routes through `plugins` (see `server/store.py` for the
`DecisionStore` they read); they run on the same port, behind the same Service.

Probe semantics (what Kubernetes does with each answer):
- /healthz (liveness): 200 while the event loop answers and, on the leader, the tick loop has
  completed a tick within `stall_after_s`. A wedged tick loop gets the Pod restarted, which
  also hands the lease to the standby.
- /readyz (readiness): 200 once a valid policy is in force and the API server answered once.
  Standbys are ready too: readiness gates the Service (metrics scraping), not leadership, and an
  unready standby would stall a rolling update of the two replicas.
- /metrics: `Telemetry.render()` (the controller's own `pd_autoscaler_*` series).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from autoscaler import telemetry as telemetry_mod
from autoscaler.server import limits as limits_mod
from autoscaler.server.store import DecisionStore

Plugin = Callable[[web.Application, DecisionStore], None]

STORE_KEY = web.AppKey("store", DecisionStore)


@dataclass(slots=True)
class Health:
    """What the probes report; the controller updates it, the handlers only read it."""

    stall_after_s: float = 60.0
    policy_loaded: bool = False
    api_reachable: bool = False
    leader: bool = False
    last_tick: float | None = None
    """time.monotonic() at the end of the leader's last tick."""
    leading_since: float | None = None
    problem: str = ""
    """Why the last policy load or API call failed, for the /readyz body."""
    failing: dict[str, str] = field(default_factory=dict)
    """Long-lived tasks that keep failing (the policy watch, the leader EndpointSlice, the
    elector, the leader's ticks), by name, with why: each makes /readyz 503 until it
    recovers."""

    def report(self, task: str, why: str | None) -> None:
        """`why` the task named `task` keeps failing; None: it recovered."""
        if why is None:
            self.failing.pop(task, None)
        else:
            self.failing[task] = why

    def live(self, now: float) -> tuple[bool, str]:
        if not self.leader:
            return True, "standby"
        since = self.last_tick if self.last_tick is not None else self.leading_since
        if since is not None and now - since > self.stall_after_s:
            return False, f"no tick completed for {now - since:.0f}s"
        return True, "leading"

    def ready(self) -> tuple[bool, str]:
        if not self.policy_loaded:
            return False, f"no valid policy yet{': ' + self.problem if self.problem else ''}"
        if not self.api_reachable:
            return False, f"API server not reached yet{': ' + self.problem if self.problem else ''}"
        if self.failing:
            return False, "; ".join(f"{name} failing: {why}"
                                    for name, why in sorted(self.failing.items()))
        return True, "leader" if self.leader else "standby"


def create_app(
    *,
    health: Health,
    store: DecisionStore,
    telemetry: telemetry_mod.Telemetry | None = None,
    plugins: Sequence[Plugin] = (),
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    app = web.Application()
    app[STORE_KEY] = store
    tel = telemetry or telemetry_mod.DEFAULT

    def probe(ok: bool, detail: str) -> web.Response:
        body = json.dumps({"ok": ok, "detail": detail, "leader": health.leader})
        return web.Response(status=200 if ok else 503, text=body,
                            content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return probe(*health.live(clock()))

    async def readyz(_: web.Request) -> web.Response:
        return probe(*health.ready())

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=tel.render())
        resp.headers["Content-Type"] = telemetry_mod.CONTENT_TYPE
        return resp

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    for plugin in plugins:
        plugin(app, store)
    return app


# The health port's clients are the kubelet's probes, Prometheus and KEDA's metrics-api trigger:
# fewer than the external-metrics API's, hence a smaller cap; the same deadlines (see
# `limits.ConnectionLimits` for why). A slowloris here would otherwise starve the probes and get
# the Pod restarted.
HTTP_LIMITS = limits_mod.ConnectionLimits(max_connections=128)


async def start(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: limits_mod.ConnectionLimits = HTTP_LIMITS,
) -> web.AppRunner:
    """Serve `app` in the background behind `limits`; the caller owns `await runner.cleanup()`."""
    runner = web.AppRunner(app, access_log=None, **limits.runner_kwargs())
    await runner.setup()
    try:
        await limits_mod.serve(runner, host=host, port=port, limits=limits, name="http")
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (tests start on port 0)."""
    for site in runner.sites:
        if isinstance(site, limits_mod.GuardedSite):
            return site.port
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    msg = "runner has no bound site"
    raise RuntimeError(msg)
