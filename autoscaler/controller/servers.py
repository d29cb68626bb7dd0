"""The adoption servers (docs/adoption.md), each off unless configured: the aggregated
external-metrics API over TLS and the KEDA external scaler over gRPC, plus KEDA's metrics-api
JSON route on the health port. Every replica serves (standbys answer "no data"), so a new
leader is reachable as soon as the leader EndpointSlice holds its address (endpoint.py); only
that address moves on failover. A port that cannot be bound at start-up, or a missing
certificate, is a configuration error.

Their serving loops belong to aiohttp and grpc, so nothing of ours would notice if one ended
(a listener closed, a grpc server terminated): the port would refuse the HPA or KEDA while
every probe stayed 200. So each server is watched once started: every `probe_s` it is asked
whether its loop still serves and its port is dialled; a dead one is stopped, logged with why,
reported in /readyz and restarted on the same port with backoff, and reported recovered after
`healthy_probes` good probes in a row. The watcher itself runs under `backoff.supervise`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import structlog
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler.controller import backoff
from autoscaler.controller.leader import api_error
from autoscaler.controller.settings import Settings
from autoscaler.server.store import DecisionStore

if TYPE_CHECKING:
    from aiohttp import web

    # Imported at run time only when configured: the gRPC stack is not free to load.
    from autoscaler.server import external_metrics as em
    from autoscaler.server import keda

log = structlog.get_logger(__name__)

EXTERNAL_METRICS = "external-metrics"
KEDA_SCALER = "keda-scaler"


class Server(Protocol):
    """What the watcher needs of a server (`ExternalMetricsServer`, `KedaScalerServer`)."""

    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def serving(self) -> bool: ...


S = TypeVar("S", bound=Server)


class Served(Generic[S]):
    """One adoption server across restarts: `make(port)` builds it on a port (the configured
    one first, then the one it bound, so a restart comes back where clients dial)."""

    def __init__(self, name: str, make: Callable[[int], S], *, port: int) -> None:
        self.name = name
        self.make = make
        self.port = port
        self.server: S | None = None
        self.restarts = 0

    async def start(self) -> None:
        server = self.make(self.port)
        self.server = server  # set first: stop() cleans up a failed start
        await server.start()
        self.port = server.port

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    async def problem(self, host: str, *, timeout_s: float = 2.0) -> str | None:
        """Why this server is not serving, or None: its own loop's state, then a dial."""
        server = self.server
        if server is None:
            return "not running"
        if not server.serving():
            return "its serving loop ended"
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, self.port),
                                               timeout_s)
        except (OSError, TimeoutError) as exc:
            return f"port {self.port} does not accept connections: {exc!r}"[:300]
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None


def probe_host(bind_host: str) -> str:
    """Where to dial a server bound to `bind_host` from inside the Pod."""
    if bind_host in ("0.0.0.0", ""):  # noqa: S104 - the bind address, not one we listen on
        return "127.0.0.1"
    if bind_host == "::":
        return "::1"
    return bind_host


async def keep_serving(unit: Served[Any], *, host: str, report: backoff.Report,
                       probe_s: float = 5.0, healthy_probes: int = 3,
                       delays: backoff.Delays | None = None) -> None:
    """Probe a started server every `probe_s`; restart it with backoff when it is dead (see
    the module docstring). Every wait goes through `backoff.sleep` (tests run it on synthetic
    time); runs until cancelled."""
    delays = delays or backoff.Delays(initial_s=1.0, max_s=30.0)
    failures = 0
    good = 0
    while True:
        if unit.server is None:
            try:
                await unit.start()
            except Exception as exc:  # port taken meanwhile, cert unreadable: retried
                with contextlib.suppress(Exception):
                    await unit.stop()
                failures += 1
                delay = delays.next()
                why = f"restart failed: {type(exc).__name__}: {exc}"[:300]
                log.error("adoption_server_restart_failed", server=unit.name, port=unit.port,
                          error=why, failures=failures, retry_in_s=delay)
                report(unit.name, f"{why} ({failures} failures in a row, retrying in "
                                  f"{delay:g}s)")
                await backoff.sleep(delay)
                continue
            unit.restarts += 1
            good = 0
            log.warning("adoption_server_restarted", server=unit.name, port=unit.port,
                        restarts=unit.restarts)
        await backoff.sleep(probe_s)
        problem = await unit.problem(host)
        if problem is None:
            if failures:
                good += 1
                if good >= healthy_probes:
                    log.info("adoption_server_recovered", server=unit.name, port=unit.port,
                             after_failures=failures)
                    report(unit.name, None)
                    failures = 0
                    delays.reset()
            continue
        failures += 1
        delay = delays.next()
        log.error("adoption_server_died", server=unit.name, port=unit.port, error=problem,
                  failures=failures, restart_in_s=delay)
        report(unit.name, f"{problem}; restarting in {delay:g}s ({failures} failures in a row)")
        with contextlib.suppress(Exception):  # a dead server's cleanup may fail too
            await unit.stop()
        await backoff.sleep(delay)


class AdoptionServers:
    """Starts, watches (restarts) and stops the configured adoption servers; they read
    `store`."""

    def __init__(self, settings: Settings, *, store: DecisionStore, api: ApiClient,
                 probe_s: float = 5.0, healthy_probes: int = 3) -> None:
        self.settings = settings
        self._store = store
        self._api = api
        self.probe_s = probe_s
        self.healthy_probes = healthy_probes
        self._external: Served[em.ExternalMetricsServer] | None = None
        self._keda: Served[keda.KedaScalerServer] | None = None
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def external_metrics(self) -> em.ExternalMetricsServer | None:
        """The external-metrics server running now (a restart replaces it)."""
        return None if self._external is None else self._external.server

    @property
    def keda_scaler(self) -> keda.KedaScalerServer | None:
        """The KEDA gRPC scaler running now (a restart replaces it)."""
        return None if self._keda is None else self._keda.server

    @property
    def served(self) -> list[Served[Any]]:
        return [u for u in (self._external, self._keda) if u is not None]

    def keda_metrics_api(self, app: web.Application, store: DecisionStore) -> None:
        """`keda.metrics_api_plugin` with this controller's staleness limit."""
        from autoscaler.server import keda  # noqa: PLC0415

        app.add_routes(keda.metrics_api_routes(store,
                                               max_age_s=self.settings.serve_max_age_s))

    async def start(self, report: backoff.Report | None = None) -> None:
        """Start the configured servers (a failure is a ConfigError: exit 2), then watch each
        one (`report` gets the watchers' state: the controller's /readyz)."""
        s = self.settings
        if s.external_metrics_port is None and s.keda_grpc_port is None:
            return
        from autoscaler.server import external_metrics as em  # noqa: PLC0415

        view = self._store
        cert = s.external_metrics_cert
        if s.external_metrics_port is not None and cert is not None:
            requestheader = await self._requestheader()

            def external(port: int) -> em.ExternalMetricsServer:
                assert cert is not None
                return em.ExternalMetricsServer(
                    view,
                    em.ExternalMetricsSettings(
                        cert_file=cert[0], key_file=cert[1], host=s.http_host, port=port,
                        authorize_with_sar=True,
                        options=em.ExternalMetricsOptions(max_age_s=s.serve_max_age_s)),
                    api=self._api, requestheader=requestheader)

            self._external = Served(EXTERNAL_METRICS, external, port=s.external_metrics_port)
            await self._start_one("external_metrics_port", self._external)
        if s.keda_grpc_port is not None:
            from autoscaler.server import keda  # noqa: PLC0415

            tls = s.keda_grpc_cert

            def scaler(port: int) -> keda.KedaScalerServer:
                return keda.KedaScalerServer(view, keda.KedaScalerSettings(
                    host=s.http_host, port=port,
                    cert_file=tls[0] if tls else None, key_file=tls[1] if tls else None,
                    client_ca_file=s.keda_grpc_client_ca_file, max_age_s=s.serve_max_age_s))

            self._keda = Served(KEDA_SCALER, scaler, port=s.keda_grpc_port)
            await self._start_one("keda_grpc_port", self._keda)
        report = report or (lambda _name, _why: None)
        host = probe_host(s.http_host)
        for unit in self.served:
            watch = functools.partial(keep_serving, unit, host=host, report=report,
                                      probe_s=self.probe_s, healthy_probes=self.healthy_probes)
            self._watchers.append(asyncio.create_task(
                backoff.supervise(f"{unit.name}-watch", watch, report=report),
                name=f"{unit.name}-watch"))

    async def _start_one(self, name: str, unit: Served[Any]) -> None:
        port = unit.port
        try:
            await unit.start()
        except (OSError, RuntimeError) as exc:
            # Port taken, unreadable or mismatched cert/key (ssl errors are OSErrors; grpc
            # raises RuntimeError when it cannot bind): a configuration problem, exit 2.
            msg = f"settings: {name}: cannot serve on {self.settings.http_host}:{port}: {exc}"
            raise errors.ConfigError([msg]) from exc

    async def _requestheader(self) -> em.RequestHeaderConfig:
        """The aggregator's client CA and allowed names, from kube-system/
        extension-apiserver-authentication. Transient API errors are retried (a standby that
        exits here would crash-loop through an API server restart); RBAC or a cluster without
        a front proxy is a configuration error."""
        from autoscaler.server import external_metrics as em  # noqa: PLC0415

        where = f"{em.CONFIGMAP_NAMESPACE}/{em.CONFIGMAP_NAME}"

        async def once() -> em.RequestHeaderConfig:
            try:
                return await asyncio.wait_for(em.load_requestheader_config(self._api),
                                              self.settings.api_timeout_s)
            except ApiException as exc:
                if exc.status in (401, 403, 404):
                    msg = (f"settings: external_metrics_port: cannot read {where}: "
                           f"{api_error(exc)} (the overlay binds extension-apiserver-"
                           "authentication-reader in kube-system to the ServiceAccount)")
                    raise errors.ConfigError([msg]) from exc
                raise
            except ValueError as exc:  # no requestheader CA: the cluster has no aggregator
                raise errors.ConfigError([f"settings: external_metrics_port: {exc}"]) from exc

        def failed(exc: Exception, delay: float) -> None:
            log.warning("requestheader_config_failed", configmap=where, error=api_error(exc),
                        retry_in_s=delay)

        return await backoff.retry(once, retry_on=(ApiException, OSError, TimeoutError),
                                   on_error=failed)

    async def stop(self) -> None:
        for task in self._watchers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers.clear()
        for unit in (self._keda, self._external):
            if unit is not None:
                await unit.stop()
        self._keda = self._external = None
