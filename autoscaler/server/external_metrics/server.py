"""The API behind TLS: `ExternalMetricsServer` starts the app of `app.py` with request-size
and connection limits (`server.limits`: a connection cap, a request-head deadline, TLS handshake
and keep-alive timeouts), the requestheader CA and (optionally) SubjectAccessReview authorization.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from autoscaler.server import limits as limits_mod
from autoscaler.server.external_metrics.app import ExternalMetricsOptions, make_app
from autoscaler.server.external_metrics.auth import (
    AllowAuthenticated,
    Authorizer,
    RequestHeaderConfig,
    SubjectAccessReviewAuthorizer,
    load_requestheader_config,
    make_server_ssl_context,
)
from autoscaler.server.store import DecisionStore

log = structlog.get_logger(__name__)

# aiohttp's parser answers 400 beyond these; the aggregator's requests are far smaller.
MAX_REQUEST_LINE = 8190
MAX_HEADER_FIELD = 8190
MAX_HEADERS = 128


@dataclass(frozen=True, slots=True)
class ExternalMetricsSettings:
    """How the controller starts the API. `port=0` picks a free port (tests)."""

    cert_file: Path
    key_file: Path
    host: str = "0.0.0.0"  # noqa: S104 - the aggregator dials the pod IP
    port: int = 6443
    requestheader_ca_file: Path | None = None  # None: read the ConfigMap
    requestheader_allowed_names: tuple[str, ...] = ()  # with the file; the ConfigMap has its own
    authorize_with_sar: bool = True
    options: ExternalMetricsOptions = field(default_factory=ExternalMetricsOptions)
    limits: limits_mod.ConnectionLimits = field(default_factory=limits_mod.ConnectionLimits)
    """Connection cap, head deadline, TLS handshake and keep-alive timeouts (see `ConnectionLimits`
    for the defaults and their reasons)."""


class ExternalMetricsServer:
    """The external-metrics API on its own TLS port.

    `start()` binds and serves; `stop()` closes. `api` (a kubernetes_asyncio ApiClient) is needed
    when the requestheader CA comes from the ConfigMap or SubjectAccessReview is on.
    """

    def __init__(
        self,
        store: DecisionStore,
        settings: ExternalMetricsSettings,
        *,
        api: Any = None,
        requestheader: RequestHeaderConfig | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._api = api
        self._requestheader = requestheader
        self._authorizer = authorizer
        self._runner: web.AppRunner | None = None
        self.site: limits_mod.GuardedSite | None = None
        self.port = settings.port

    async def _resolve(self) -> tuple[RequestHeaderConfig, Authorizer]:
        s = self.settings
        rh = self._requestheader
        if rh is None:
            if s.requestheader_ca_file is not None:
                rh = RequestHeaderConfig.from_file(
                    s.requestheader_ca_file, allowed_names=s.requestheader_allowed_names
                )
            elif self._api is not None:
                rh = await load_requestheader_config(self._api)
            else:
                msg = "external metrics: no requestheader CA file and no API client to read it"
                raise ValueError(msg)
        authz = self._authorizer
        if authz is None:
            if s.authorize_with_sar:
                if self._api is None:
                    msg = "external metrics: SubjectAccessReview needs an API client"
                    raise ValueError(msg)
                authz = SubjectAccessReviewAuthorizer(self._api)
            else:
                authz = AllowAuthenticated()
        return rh, authz

    async def start(self) -> None:
        rh, authz = await self._resolve()
        s = self.settings
        app = make_app(self.store, rh, authorizer=authz, options=s.options)
        tls = make_server_ssl_context(s.cert_file, s.key_file, rh.client_ca_pem)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            max_line_size=MAX_REQUEST_LINE,
            max_field_size=MAX_HEADER_FIELD,
            max_headers=MAX_HEADERS,
            **s.limits.runner_kwargs(),
        )
        await self._runner.setup()
        try:
            self.site = await limits_mod.serve(
                self._runner, host=s.host, port=s.port, limits=s.limits, ssl_context=tls,
                name="external_metrics")
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = self.site.port
        log.info(
            "external_metrics_serving",
            host=s.host,
            port=self.port,
            allowed_names=list(rh.allowed_names),
            max_connections=s.limits.max_connections,
            head_timeout_s=s.limits.head_timeout_s,
        )

    def serving(self) -> bool:
        """True while started and its listener is open (the controller restarts it if not)."""
        return self._runner is not None and self.site is not None and self.site.serving()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ExternalMetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

