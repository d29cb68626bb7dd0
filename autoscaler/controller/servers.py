"""The adoption servers (docs/adoption.md), each off unless configured: the aggregated
external-metrics API over TLS and the KEDA external scaler over gRPC, plus KEDA's metrics-api
JSON route on the health port. Every replica serves (standbys answer "no data"), so a new
leader is reachable as soon as its Pod carries the leader label; only the label moves on
failover. A port that cannot be bound, or a missing certificate, is a configuration error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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


class AdoptionServers:
    """Starts and stops the configured adoption servers; they read `store`."""

    def __init__(self, settings: Settings, *, store: DecisionStore, api: ApiClient) -> None:
        self.settings = settings
        self._store = store
        self._api = api
        self.external_metrics: em.ExternalMetricsServer | None = None
        self.keda_scaler: keda.KedaScalerServer | None = None

    def keda_metrics_api(self, app: web.Application, store: DecisionStore) -> None:
        """`keda.metrics_api_plugin` with this controller's staleness limit."""
        from autoscaler.server import keda  # noqa: PLC0415

        app.add_routes(keda.metrics_api_routes(store,
                                               max_age_s=self.settings.serve_max_age_s))

    async def start(self) -> None:
        s = self.settings
        if s.external_metrics_port is None and s.keda_grpc_port is None:
            return
        from autoscaler.server import external_metrics as em  # noqa: PLC0415

        view = self._store
        cert = s.external_metrics_cert
        if s.external_metrics_port is not None and cert is not None:
            requestheader = await self._requestheader()
            server = em.ExternalMetricsServer(
                view,
                em.ExternalMetricsSettings(
                    cert_file=cert[0], key_file=cert[1], host=s.http_host,
                    port=s.external_metrics_port, authorize_with_sar=True,
                    options=em.ExternalMetricsOptions(max_age_s=s.serve_max_age_s)),
                api=self._api, requestheader=requestheader)
            self.external_metrics = server  # set first: _stop_servers cleans up a failed start
            await self._start_one("external_metrics_port", s.external_metrics_port, server.start)
        if s.keda_grpc_port is not None:
            from autoscaler.server import keda  # noqa: PLC0415

            tls = s.keda_grpc_cert
            scaler = keda.KedaScalerServer(view, keda.KedaScalerSettings(
                host=s.http_host, port=s.keda_grpc_port,
                cert_file=tls[0] if tls else None, key_file=tls[1] if tls else None,
                client_ca_file=s.keda_grpc_client_ca_file, max_age_s=s.serve_max_age_s))
            self.keda_scaler = scaler
            await self._start_one("keda_grpc_port", s.keda_grpc_port, scaler.start)

    async def _start_one(self, name: str, port: int, start: Callable[[], Any]) -> None:
        try:
            await start()
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
        if self.keda_scaler is not None:
            await self.keda_scaler.stop()
            self.keda_scaler = None
        if self.external_metrics is not None:
            await self.external_metrics.stop()
            self.external_metrics = None
