"""A minimal extension API server for aggregation-layer tests, and its APIService registration.

The server speaks just enough of the aggregated-API contract for kube-apiserver to route to it:
TLS with the cluster's extension cert, a required client cert from the front-proxy CA whose CN is
in the allowed names, identity taken from the X-Remote-* headers only after that check, and
discovery for one group/version. It serves `external.metrics.k8s.io/v1beta1` from a dict
(`external_metrics`) so the real HPA controller can read values a test sets, and any other
group's namespaced resources as a list that echoes who asked (for assertions on the proxying).

Registration (`registered_apiservice`) follows K8S-TESTENV.md section 5: an ExternalName Service
pointing at `ClusterInfo.ext_host` (localhost for the local cluster), so no kube-proxy, Service
network or Endpoints are needed.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from ..k8senv.cluster import ClusterInfo
from .support import manifest, wait_for

EXTERNAL_METRICS = ("external.metrics.k8s.io", "v1beta1")
MANAGED_BY = {"app.kubernetes.io/managed-by": "pd-autoscaler-e2e"}


@dataclasses.dataclass(frozen=True, slots=True)
class SeenRequest:
    """One request as the extension server saw it, after front-proxy authentication."""

    path: str
    query: dict[str, str]
    peer_cn: str
    user: str
    groups: tuple[str, ...]


class ExtensionApiServer:
    """Serve one API group/version over TLS on `cluster.ext_bind_host`, on a free port.

    Use as `async with ExtensionApiServer(cluster, group=..., version=...) as server:`; set
    `server.external_metrics["queue_depth"] = 30` to change what the HPA reads.
    """

    def __init__(self, cluster: ClusterInfo, *, group: str, version: str,
                 allowed_names: tuple[str, ...] = ("front-proxy-client",)) -> None:
        self.cluster = cluster
        self.group = group
        self.version = version
        self.allowed_names = allowed_names
        self.external_metrics: dict[str, float] = {}
        self.seen: list[SeenRequest] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ExtensionApiServer:
        app = web.Application()
        app.router.add_get(f"/apis/{self.group}/{self.version}", self._discovery)
        app.router.add_get(f"/apis/{self.group}/{self.version}/namespaces/{{ns}}/{{resource}}",
                           self._namespaced)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.cluster.ext_bind_host, 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, ssl_context=self._tls())
        await site.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                         cafile=str(self.cluster.front_proxy_ca))
        ctx.load_cert_chain(str(self.cluster.ext_cert), str(self.cluster.ext_key))
        # Only the aggregator (holding the front-proxy client cert) may talk to us; X-Remote-*
        # headers from anyone else would let them claim any identity.
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _authenticate(self, request: web.Request) -> SeenRequest:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        cn = ""
        for rdn in (peer or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = value
        if self.allowed_names and cn not in self.allowed_names:
            raise web.HTTPUnauthorized(text=f"client cert CN {cn!r} not allowed")
        seen = SeenRequest(path=request.path, query=dict(request.query), peer_cn=cn,
                           user=request.headers.get("X-Remote-User", ""),
                           groups=tuple(request.headers.getall("X-Remote-Group", [])))
        self.seen.append(seen)
        return seen

    async def _discovery(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        kind = "ExternalMetricValueList" if self._is_external_metrics else "EchoList"
        return web.json_response({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{self.group}/{self.version}",
            "resources": [{"name": "*" if self._is_external_metrics else "echoes",
                           "singularName": "", "namespaced": True, "kind": kind,
                           "verbs": ["get", "list"]}],
        })

    @property
    def _is_external_metrics(self) -> bool:
        return (self.group, self.version) == EXTERNAL_METRICS

    async def _namespaced(self, request: web.Request) -> web.Response:
        seen = self._authenticate(request)
        resource = request.match_info["resource"]
        if self._is_external_metrics:
            if resource not in self.external_metrics:
                raise web.HTTPNotFound(text=f"no external metric {resource!r}")
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            selector = _parse_selector(request.query.get("labelSelector", ""))
            return web.json_response({
                "kind": "ExternalMetricValueList", "apiVersion": f"{self.group}/{self.version}",
                "metadata": {},
                "items": [{"metricName": resource, "metricLabels": selector, "timestamp": now,
                           "value": _quantity(self.external_metrics[resource])}],
            })
        return web.json_response({
            "kind": "EchoList", "apiVersion": f"{self.group}/{self.version}", "metadata": {},
            "items": [{"namespace": request.match_info["ns"], "resource": resource,
                       "user": seen.user, "groups": list(seen.groups),
                       "peerCN": seen.peer_cn}],
        })


def _parse_selector(raw: str) -> dict[str, str]:
    """Equality terms of a label selector (`a=b,c=d`), echoed back as the metric's labels."""
    labels = {}
    for term in filter(None, raw.split(",")):
        key, sep, value = term.partition("=")
        if sep:
            labels[key.strip()] = value.lstrip("=").strip()
    return labels


def _quantity(value: float) -> str:
    # Kubernetes quantities: integers as-is, fractions in milli-units ("1500m").
    return str(int(value)) if value == int(value) else f"{round(value * 1000)}m"


@contextlib.asynccontextmanager
async def registered_apiservice(api: ApiClient, cluster: ClusterInfo, *, group: str,
                                version: str, port: int, service: str | None = None,
                                timeout_s: float = 60.0) -> AsyncIterator[dict[str, Any]]:
    """Register `group/version` to the server on `port`; wait until the aggregator reports it
    Available; on exit delete the APIService first, then the Service.

    The order matters: while an APIService is unavailable, discovery is partial and namespace
    deletion stalls, so it must be gone before the test's namespace is deleted.
    Refuses to replace an APIService it did not create (a real metrics adapter, say).
    """
    name = f"{version}.{group}"
    svc_name = service or cluster.ext_service
    core = client.CoreV1Api(api)
    reg = client.ApiregistrationV1Api(api)
    with contextlib.suppress(ApiException):
        existing = await reg.read_api_service(name)
        if (existing.metadata.labels or {}).get("app.kubernetes.io/managed-by") != \
                MANAGED_BY["app.kubernetes.io/managed-by"]:
            raise RuntimeError(f"APIService {name} exists and was not created by these tests")
        await reg.delete_api_service(name)
    svc: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": svc_name, "namespace": cluster.ext_namespace,
                        "labels": MANAGED_BY},
           "spec": {"type": "ExternalName", "externalName": cluster.ext_host}}
    try:
        await core.create_namespaced_service(cluster.ext_namespace, manifest(svc))
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = await core.read_namespaced_service(svc_name, cluster.ext_namespace)
        svc["metadata"]["resourceVersion"] = current.metadata.resource_version
        await core.replace_namespaced_service(svc_name, cluster.ext_namespace, manifest(svc))
    ca_bundle = base64.b64encode(cluster.ext_ca_cert.read_bytes()).decode()
    await reg.create_api_service(manifest({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": name, "labels": MANAGED_BY},
        "spec": {"group": group, "version": version, "groupPriorityMinimum": 100,
                 "versionPriority": 100, "caBundle": ca_bundle,
                 "service": {"name": svc_name, "namespace": cluster.ext_namespace,
                             "port": port}},
    }))
    try:

        async def available() -> list[Any]:
            obj = await reg.read_api_service(name)
            return [c for c in (obj.status.conditions or []) if c.type == "Available"]

        conds = await wait_for(available, until=lambda cs: any(c.status == "True" for c in cs),
                               timeout_s=timeout_s, what=f"APIService {name} Available")
        yield {"name": name, "service": svc_name, "conditions": conds}
    finally:
        with contextlib.suppress(ApiException):
            await reg.delete_api_service(name)
        with contextlib.suppress(ApiException):
            await core.delete_namespaced_service(svc_name, cluster.ext_namespace)
