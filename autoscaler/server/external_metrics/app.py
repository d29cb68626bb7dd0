"""The aiohttp application of the external-metrics API: discovery, the metric list per
namespace and selector, authentication on every request (see `auth.py`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from autoscaler.server.external_metrics import api
from autoscaler.server.external_metrics.api import GROUP, GROUP_VERSION, VERSION
from autoscaler.server.external_metrics.auth import (
    AllowAuthenticated,
    Authorizer,
    RequestHeaderConfig,
    UserInfo,
    peer_cn,
)
from autoscaler.server.external_metrics.quantity import format_quantity
from autoscaler.server.external_metrics.selector import SelectorError, parse_selector
from autoscaler.server.points import rfc3339
from autoscaler.server.store import DecisionStore, fresh_points

log = structlog.get_logger(__name__)


# Paths the kubelet and load balancers may probe without a client certificate; they reveal
# nothing but liveness.
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/livez", "/readyz"})

_DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_METRIC_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,253}$")
_USER_KEY = web.RequestKey("user", UserInfo)



@dataclass(frozen=True, slots=True)
class ExternalMetricsOptions:
    """Behaviour of the API beyond authentication.

    `namespaced`: a request for namespace N only sees pools whose Deployment lives in N (as
    prometheus-adapter does), so reading metrics needs rights in the workload's namespace.
    `max_age_s`: serve nothing once the latest decision is older (the controller stopped
    ticking); None disables the check. Set it to a few tick periods.
    """

    namespaced: bool = True
    max_age_s: float | None = 120.0


def make_app(
    store: DecisionStore,
    requestheader: RequestHeaderConfig,
    *,
    authorizer: Authorizer | None = None,
    options: ExternalMetricsOptions | None = None,
    mono_clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The aiohttp application; TLS and the listening socket are `ExternalMetricsServer`'s job,
    but authentication reads the peer certificate, so the app only works behind TLS."""
    authz: Authorizer = authorizer or AllowAuthenticated()
    opts = options or ExternalMetricsOptions()
    allowed_names = frozenset(requestheader.allowed_names)

    def authenticate(request: web.Request) -> UserInfo | web.Response:
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        cn = peer_cn(peercert)
        if cn is None:
            # No verified certificate: nobody vouches for the X-Remote-* headers, ignore them.
            return api.status(
                401, "Unauthorized", "a client certificate from the front proxy CA is required"
            )
        if allowed_names and cn not in allowed_names:
            return api.status(
                403,
                "Forbidden",
                f"client certificate CN {cn[:64]!r} is not an allowed requestheader name",
            )
        name = next(
            (request.headers[h] for h in requestheader.username_headers if request.headers.get(h)),
            None,
        )
        if not name:
            return api.status(401, "Unauthorized", "no user in the requestheader username headers")
        groups = tuple(
            g for h in requestheader.group_headers for g in request.headers.getall(h, ())
        )
        extra: dict[str, list[str]] = {}
        for header, value in request.headers.items():
            for prefix in requestheader.extra_headers_prefixes:
                if header.lower().startswith(prefix.lower()) and len(header) > len(prefix):
                    # Keys are percent-encoded by the proxy (client-go) and case-insensitive.
                    from urllib.parse import unquote  # noqa: PLC0415

                    key = unquote(header[len(prefix) :]).lower()
                    extra.setdefault(key, []).append(value)
        return UserInfo(name, groups, {k: tuple(v) for k, v in extra.items()})

    @web.middleware
    async def auth_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in UNAUTHENTICATED_PATHS:
            return await handler(request)
        who = authenticate(request)
        if isinstance(who, web.Response):
            return who
        request[_USER_KEY] = who
        return await handler(request)

    @web.middleware
    async def error_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # aiohttp's own 404/405 bodies are plain text; the apiserver relays our body to kubectl,
        # so answer with a Status object everywhere.
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status, "BadRequest")
            return api.status(exc.status, reason, exc.reason)

    async def user_allowed(
        request: web.Request, namespace: str | None, resource: str
    ) -> web.Response | None:
        user = request[_USER_KEY]  # set by auth_middleware
        ok, reason = await authz.authorize(user, namespace=namespace, resource=resource)
        if ok:
            return None
        where = f' in namespace "{namespace}"' if namespace else ""
        return api.status(
            403,
            "Forbidden",
            f'{resource or "discovery"}.{GROUP} is forbidden: User "{user.name[:128]}" cannot list '
            f"{resource or 'resources'}{where}: {reason}",
        )

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def apis(request: web.Request) -> web.Response:
        # Legacy discovery document; the aggregator falls back to it when the response is not the
        # aggregated discovery type it asked for first.
        denied = await user_allowed(request, None, "")
        if denied:
            return denied
        gv = {"groupVersion": GROUP_VERSION, "version": VERSION}
        return web.json_response(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [{"name": GROUP, "versions": [gv], "preferredVersion": gv}],
            }
        )

    async def group(request: web.Request) -> web.Response:
        denied = await user_allowed(request, None, "")
        if denied:
            return denied
        gv = {"groupVersion": GROUP_VERSION, "version": VERSION}
        return web.json_response(
            {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": GROUP,
                "versions": [gv],
                "preferredVersion": gv,
            }
        )

    async def resources(request: web.Request) -> web.Response:
        denied = await user_allowed(request, None, "")
        if denied:
            return denied
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": GROUP_VERSION,
                "resources": [
                    {
                        "name": "*",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "ExternalMetricValueList",
                        "verbs": ["get", "list"],
                    }
                ],
            }
        )

    async def values(request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        metric = request.match_info["metric"]
        if len(namespace) > 63 or not _DNS1123_LABEL_RE.match(namespace):
            return api.status(400, "BadRequest", f"invalid namespace {namespace[:64]!r}")
        if not _METRIC_RE.match(metric):
            return api.status(400, "BadRequest", f"invalid metric name {metric[:64]!r}")
        raw = request.query.getall("labelSelector", [])
        if len(raw) > 1:
            return api.status(400, "BadRequest", "labelSelector given more than once")
        try:
            selector = parse_selector(raw[0] if raw else "")
        except SelectorError as exc:
            return api.status(400, "BadRequest", f"invalid labelSelector: {exc}")
        denied = await user_allowed(request, namespace, metric)
        if denied:
            return denied
        items: list[dict[str, Any]] = []
        fresh = fresh_points(store, opts.max_age_s, now_mono=mono_clock())
        if fresh is not None:
            snap, points = fresh
            stamp = rfc3339(snap.updated_wall)
            for p in points:
                if p.name != metric:
                    continue
                if opts.namespaced and p.labels.get("namespace") != namespace:
                    continue
                if not selector.matches(p.labels):
                    continue
                items.append(
                    {
                        "metricName": p.name,
                        "metricLabels": dict(p.labels),
                        "timestamp": stamp,
                        "value": format_quantity(p.value),
                    }
                )
        return web.json_response(
            {
                "kind": "ExternalMetricValueList",
                "apiVersion": GROUP_VERSION,
                "metadata": {},
                "items": items,
            }
        )

    app = web.Application(
        middlewares=[error_middleware, auth_middleware], client_max_size=64 * 1024
    )
    base = f"/apis/{GROUP}/{VERSION}"
    app.router.add_get("/healthz", health)
    app.router.add_get("/livez", health)
    app.router.add_get("/readyz", health)
    app.router.add_get("/apis", apis)
    app.router.add_get(f"/apis/{GROUP}", group)
    app.router.add_get(base, resources)
    app.router.add_get(base + "/namespaces/{namespace}/{metric}", values)
    return app


