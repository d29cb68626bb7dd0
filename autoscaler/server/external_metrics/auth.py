"""Authentication as the aggregation layer requires it, and authorization.

A TLS client certificate from the requestheader CA (the "front proxy"), its CN in the allowed
names, and only then the X-Remote-User/-Group/-Extra-* headers; optional delegated
authorization through SubjectAccessReview.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from autoscaler.server.external_metrics.api import GROUP, VERSION

log = structlog.get_logger(__name__)


CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "extension-apiserver-authentication"


@dataclass(frozen=True, slots=True)
class RequestHeaderConfig:
    """How to recognise the aggregator (front proxy) and read the identity it forwards.

    `client_ca_pem` verifies the proxy's client certificate; `allowed_names` restricts its CN
    (empty: any certificate from that CA). Header names come from the apiserver's
    --requestheader-* flags (published in the ConfigMap kube-system/
    extension-apiserver-authentication).
    """

    client_ca_pem: str
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_headers_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)

    @classmethod
    def from_configmap_data(cls, data: Mapping[str, str]) -> RequestHeaderConfig:
        """Parse the ConfigMap's `data` (list values are JSON arrays)."""
        ca = data.get("requestheader-client-ca-file", "")
        if "BEGIN CERTIFICATE" not in ca:
            msg = (
                f"{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} has no requestheader-client-ca-file: "
                "the apiserver runs without --requestheader-client-ca-file, so it cannot "
                "authenticate to extension API servers"
            )
            raise ValueError(msg)

        def lst(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = data.get(key)
            if raw is None or not raw.strip():
                return default
            value = json.loads(raw)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                msg = f"{key} in {CONFIGMAP_NAME} is not a JSON list of strings"
                raise ValueError(msg)
            return tuple(value)

        return cls(
            client_ca_pem=ca,
            allowed_names=lst("requestheader-allowed-names", ()),
            username_headers=lst("requestheader-username-headers", ("X-Remote-User",)),
            group_headers=lst("requestheader-group-headers", ("X-Remote-Group",)),
            extra_headers_prefixes=lst("requestheader-extra-headers-prefix", ("X-Remote-Extra-",)),
        )

    @classmethod
    def from_file(
        cls, ca_file: str | Path, *, allowed_names: Sequence[str] = ()
    ) -> RequestHeaderConfig:
        return cls(client_ca_pem=Path(ca_file).read_text(), allowed_names=tuple(allowed_names))


async def load_requestheader_config(api: Any) -> RequestHeaderConfig:
    """Read kube-system/extension-apiserver-authentication with a kubernetes_asyncio ApiClient
    (needs the `extension-apiserver-authentication-reader` Role in kube-system)."""
    from kubernetes_asyncio import client  # noqa: PLC0415 - I/O client only where it is used

    cm = await client.CoreV1Api(api).read_namespaced_config_map(CONFIGMAP_NAME, CONFIGMAP_NAMESPACE)
    return RequestHeaderConfig.from_configmap_data(cm.data or {})


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class Authorizer(Protocol):
    async def authorize(
        self, user: UserInfo, *, namespace: str | None, resource: str
    ) -> tuple[bool, str]:
        """(allowed, reason) for `list` of `resource` (a metric name, or "" for discovery)."""
        ...


class AllowAuthenticated:
    """Any user the front proxy vouches for may read (the apiserver already authorized the
    request to reach us through its own RBAC on the APIService's group)."""

    async def authorize(
        self, user: UserInfo, *, namespace: str | None, resource: str
    ) -> tuple[bool, str]:
        return True, "authenticated"


class SubjectAccessReviewAuthorizer:
    """Delegated authorization, as Kubernetes extension apiservers do it: ask the apiserver
    whether the forwarded user may `list` the metric (group external.metrics.k8s.io).

    Answers are cached for `ttl_s` (the apiserver's delegated-authz cache defaults to 10 s both
    ways) so an HPA polling every 15 s costs at most one review per metric and user. Errors fail
    closed: a review that cannot be made is a denial.
    """

    def __init__(self, api: Any, *, ttl_s: float = 10.0, max_entries: int = 4096) -> None:
        self._api = api
        self._ttl = ttl_s
        self._max = max_entries
        self._cache: dict[tuple[Any, ...], tuple[float, bool, str]] = {}

    async def authorize(
        self, user: UserInfo, *, namespace: str | None, resource: str
    ) -> tuple[bool, str]:
        key = (user.name, user.groups, tuple(sorted(user.extra.items())), namespace, resource)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1], hit[2]
        from kubernetes_asyncio import client  # noqa: PLC0415 - I/O client only where used

        attrs: dict[str, Any] = {"group": GROUP, "version": VERSION, "verb": "list"}
        if resource:
            attrs["resource"] = resource
        if namespace:
            attrs["namespace"] = namespace
        body: Any = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user.name,
                "groups": list(user.groups),
                "extra": {k: list(v) for k, v in user.extra.items()},
                "resourceAttributes": attrs,
            },
        }
        try:
            resp = await client.AuthorizationV1Api(self._api).create_subject_access_review(body)
        except Exception as exc:  # any failure denies: fail closed
            log.warning("subject_access_review_failed", error=str(exc))
            return False, "authorization check failed"
        allowed = bool(resp.status and resp.status.allowed)
        reason = (resp.status.reason if resp.status else "") or ("allowed" if allowed else "denied")
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[key] = (now, allowed, reason)
        return allowed, reason


def peer_cn(peercert: Mapping[str, Any] | None) -> str | None:
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    return None


def make_server_ssl_context(
    cert_file: str | Path, key_file: str | Path, client_ca_pem: str
) -> ssl.SSLContext:
    """TLS for the API: our serving cert, and client certs verified against the requestheader
    CA. CERT_OPTIONAL rather than REQUIRED so that a client without a certificate gets a
    readable 401 instead of a handshake failure; a certificate from another CA still fails the
    handshake (the TLS layer rejects it before any HTTP is spoken)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=client_ca_pem)
    return ctx


