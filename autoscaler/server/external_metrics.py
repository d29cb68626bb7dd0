"""pd-autoscaler's numbers as an aggregated `external.metrics.k8s.io/v1beta1` API (opt-in).

Why: teams that already drive their Deployments with an HPA (or must, by policy) can let
pd-autoscaler decide and the HPA actuate. Each pool and role exposes `pd_desired_replicas` (the
final, already stabilized and limited decision) and the signal values behind it, labelled
`pool`, `role`, `namespace` and `deployment`. An HPA with an `External` metric
`pd_desired_replicas`, selector `pool=...,role=...` and an `AverageValue` target of 1 then sets
exactly our number (see docs/adoption.md for the tolerance arithmetic).

The pieces, from the inside out:
- `format_quantity`: float -> Kubernetes quantity string ("3", "750m"), never NaN or negative.
- `parse_selector`: the Kubernetes label-selector grammar, with limits, raising `SelectorError`.
- `LatestDecisionStore`: the latest `Decision` turned into `MetricPoint`s; a `Loop` hook fills it
  and the HTTP handlers, the KEDA scaler (server/keda.py) and tests read it.
- authentication as the aggregation layer requires it: a TLS client certificate from the
  requestheader CA (the "front proxy"), its CN in the allowed names, and only then the
  X-Remote-User/-Group/-Extra-* headers; optional delegated authorization through
  SubjectAccessReview.
- `ExternalMetricsServer`: the aiohttp app behind TLS, with request-size limits.

Only this module and server/keda.py read the store; the decision core never sees any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web

from autoscaler.spec import PolicyFile
from autoscaler.types import Decision, Role, SignalSample

log = structlog.get_logger(__name__)

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"

DESIRED = "pd_desired_replicas"
CURRENT = "pd_current_replicas"
RECOMMENDED = "pd_recommended_replicas"
# Signal and forecast values are exported as pd_<key>: the prefix keeps them apart from any
# other provider's names in HPA specs and makes them greppable.
PREFIX = "pd_"

# --- quantities ----------------------------------------------------------------------------------

# resource.Quantity's int64 scaled value: the HPA reads external metrics through MilliValue(),
# which saturates at int64; beyond this the milli form would overflow, so large values are
# printed as (clamped) integers.
_INT64_MAX = 2**63 - 1
_MILLI_LIMIT = _INT64_MAX // 1000


def format_quantity(value: float) -> str:
    """A Kubernetes quantity for `value`: plain integer when whole, else milli-units.

    Rounds to the nearest milli-unit (0.0004 -> "0", 0.75 -> "750m", 2.0004 -> "2"); negative
    values are clamped to "0" (no signal here can be negative; a negative would make the HPA
    compute nonsense) and values beyond int64 milli-units are printed as integers, clamped to
    int64. NaN and infinities are refused: callers drop missing data instead of inventing it.
    """
    if math.isnan(value) or math.isinf(value):
        msg = f"not a finite quantity: {value!r}"
        raise ValueError(msg)
    if value <= 0:
        return "0"
    if value >= _MILLI_LIMIT:
        return str(min(int(value), _INT64_MAX))
    # Integer and fractional parts separately: value * 1000 in floating point would turn a large
    # whole number into a non-whole milli count (72057594037929 -> ...992m). The fraction is
    # exact in a float; round half up (floor(x + 0.5), not Python's banker's rounding).
    whole = math.floor(value)
    frac_milli = math.floor((value - whole) * 1000 + 0.5)
    if frac_milli == 1000:
        whole, frac_milli = whole + 1, 0
    if frac_milli == 0:
        return str(whole)
    return f"{whole * 1000 + frac_milli}m"


# --- label selectors -----------------------------------------------------------------------------


class SelectorError(ValueError):
    """A label selector that does not parse; the message says where and why."""


# Limits: the HPA sends a handful of terms; anything far beyond is an attack or a mistake, and
# bounding it bounds the work per request.
MAX_SELECTOR_CHARS = 4096
MAX_SELECTOR_TERMS = 64
MAX_SET_VALUES = 64

_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS1123_SUBDOMAIN_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_INT_RE = re.compile(r"^-?[0-9]+$")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term: `key op values`; ops as in k8s.io/apimachinery/pkg/labels."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            # As in Kubernetes: a missing label satisfies != and notin.
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        # gt / lt compare integers; a label that is not an integer never matches.
        if value is None or not _INT_RE.match(value):
            return False
        bound = int(self.values[0])
        return int(value) > bound if self.op == "gt" else int(value) < bound


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _check_key(key: str) -> None:
    if not key:
        msg = "empty label key"
        raise SelectorError(msg)
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix)):
        msg = f"invalid label key prefix {prefix[:64]!r}"
        raise SelectorError(msg)
    if len(name) > 63 or not _NAME_RE.match(name):
        msg = f"invalid label key {key[:64]!r}"
        raise SelectorError(msg)


def _check_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        msg = f"invalid label value {value[:64]!r}"
        raise SelectorError(msg)


# Tokens of the selector grammar; anything else is an identifier (key or value) run.
_TOKEN_RE = re.compile(r"\s*(==|!=|=|!|\(|\)|,|<|>|[^\s=!(),<>]+)")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # only trailing whitespace remains
            if text[pos:].strip():
                msg = f"unexpected character at {pos}"
                raise SelectorError(msg)
            break
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def parse_selector(text: str) -> Selector:
    """Parse a Kubernetes label selector (`a=b,c!=d,e in (f,g),h notin (i),j,!k,l>3`).

    Raises `SelectorError` on malformed input or when the limits are exceeded.
    """
    if len(text) > MAX_SELECTOR_CHARS:
        msg = f"label selector longer than {MAX_SELECTOR_CHARS} characters"
        raise SelectorError(msg)
    if not text.strip():
        return Selector()
    tokens = _tokenize(text)
    reqs: list[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            msg = "unexpected end of selector"
            raise SelectorError(msg)
        tok = tokens[i]
        i += 1
        return tok

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    while True:
        if len(reqs) >= MAX_SELECTOR_TERMS:
            msg = f"more than {MAX_SELECTOR_TERMS} selector terms"
            raise SelectorError(msg)
        tok = take()
        if tok == "!":
            key = take()
            _check_key(key)
            reqs.append(Requirement(key, "!"))
        else:
            key = tok
            _check_key(key)
            nxt = peek()
            if nxt is None or nxt == ",":
                reqs.append(Requirement(key, "exists"))
            elif nxt in ("=", "==", "!="):
                take()
                nv = peek()
                # `key=` (empty value) is valid Kubernetes syntax and matches an empty label.
                value = "" if nv is None or nv == "," else take()
                if value in ("(", ")", "=", "!", "<", ">", "!=", "=="):
                    msg = f"unexpected {value!r} after {key}{nxt}"
                    raise SelectorError(msg)
                _check_value(value)
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
            elif nxt in ("<", ">"):
                take()
                value = take()
                if not _INT_RE.match(value) or len(value) > 19:
                    msg = f"{key}{nxt} needs an integer, got {value[:32]!r}"
                    raise SelectorError(msg)
                reqs.append(Requirement(key, "gt" if nxt == ">" else "lt", (value,)))
            elif nxt in ("in", "notin"):
                take()
                if take() != "(":
                    msg = f"expected '(' after {key} {nxt}"
                    raise SelectorError(msg)
                values: list[str] = []
                while True:
                    v = take()
                    if v == ")" and not values:
                        msg = f"empty value set for {key} {nxt}"
                        raise SelectorError(msg)
                    if v in ("(", ")", ",", "=", "==", "!=", "!", "<", ">"):
                        msg = f"unexpected {v!r} in value set of {key}"
                        raise SelectorError(msg)
                    _check_value(v)
                    values.append(v)
                    if len(values) > MAX_SET_VALUES:
                        msg = f"more than {MAX_SET_VALUES} values for {key}"
                        raise SelectorError(msg)
                    sep = take()
                    if sep == ")":
                        break
                    if sep != ",":
                        msg = f"expected ',' or ')' in value set of {key}, got {sep[:32]!r}"
                        raise SelectorError(msg)
                reqs.append(Requirement(key, nxt, tuple(values)))
            else:
                msg = f"unexpected {nxt[:32]!r} after key {key[:64]!r}"
                raise SelectorError(msg)
        following = peek()
        if following is None:
            break
        take()
        if following != ",":
            msg = f"expected ',' between terms, got {following[:32]!r}"
            raise SelectorError(msg)
    return Selector(tuple(reqs))


# --- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One value one pool/role exports under one metric name."""

    name: str
    labels: Mapping[str, str]
    value: float


def metric_name(source: str) -> str:
    """Need source / sample key -> exported metric name: `queue_depth` -> `pd_queue_depth`,
    `forecast:request_rate` -> `pd_forecast_request_rate` (names stay path- and label-safe)."""
    return PREFIX + re.sub(r"[^a-z0-9_]", "_", source.lower())


def _finite(v: float | None) -> float | None:
    if v is None or math.isnan(v) or math.isinf(v):
        return None
    return v


def points_from_decision(
    decision: Decision,
    policy: PolicyFile,
    samples: Mapping[tuple[str, Role], Mapping[str, SignalSample]] | None = None,
) -> list[MetricPoint]:
    """Every metric point a decision yields: replica counts, each need's value (signals and
    forecasts), and optionally raw samples not already covered by a need (e.g. request rates).
    Missing values are left out, so a consumer sees "no data" rather than a made-up zero."""
    points: list[MetricPoint] = []
    for pool_name, pd in decision.pools.items():
        try:
            pool = policy.pool(pool_name)
        except KeyError:
            continue
        for role, rd in pd.roles.items():
            spec = pool.roles.get(role)
            if spec is None:
                continue
            labels = {
                "pool": pool_name,
                "role": role.value,
                "namespace": spec.deployment.namespace,
                "deployment": spec.deployment.name,
            }
            points.append(MetricPoint(DESIRED, labels, float(rd.desired)))
            points.append(MetricPoint(CURRENT, labels, float(rd.current)))
            points.append(MetricPoint(RECOMMENDED, labels, float(rd.recommended)))
            seen: set[str] = set()
            for need in rd.needs:
                value = _finite(need.value)
                name = metric_name(need.source)
                if value is None or name in seen:
                    continue
                seen.add(name)
                points.append(MetricPoint(name, labels, value))
            for key, sample in (samples or {}).get((pool_name, role), {}).items():
                name = metric_name(key)
                value = None if sample.missing else _finite(sample.value)
                if value is None or name in seen:
                    continue
                seen.add(name)
                points.append(MetricPoint(name, labels, value))
    return points


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What the store held at one update; immutable so readers need no lock."""

    version: int
    points: tuple[MetricPoint, ...]
    updated_wall: float  # time.time() of the update, for the API's timestamps
    updated_mono: float  # time.monotonic() of the update, for staleness
    decision: Decision
    policy: PolicyFile


class DecisionStore(Protocol):
    """What the servers read: the latest snapshot (None before the first tick), and a way to wait
    for the next one. The controller's own store can implement this instead of ours."""

    def snapshot(self) -> StoreSnapshot | None: ...

    async def wait_for_update(
        self, after_version: int, timeout_s: float
    ) -> StoreSnapshot | None: ...


class LatestDecisionStore:
    """Holds the latest decision as metric points; a `Loop` hook (call the store itself).

    Thread-safe: `update` may run in any thread (the loop's, or a worker's) and wakes readers
    waiting in any asyncio loop. Snapshots are immutable and swapped atomically.
    """

    def __init__(
        self,
        *,
        wall_clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._snap: StoreSnapshot | None = None
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._wall = wall_clock
        self._mono = mono_clock

    def __call__(self, decision: Decision, policy: PolicyFile) -> None:
        """The `DecisionHook` signature of `autoscaler.loop.Loop`."""
        self.update(decision, policy)

    def update(
        self,
        decision: Decision,
        policy: PolicyFile,
        samples: Mapping[tuple[str, Role], Mapping[str, SignalSample]] | None = None,
    ) -> StoreSnapshot:
        points = tuple(points_from_decision(decision, policy, samples))
        with self._lock:
            version = self._snap.version + 1 if self._snap else 1
            snap = StoreSnapshot(version, points, self._wall(), self._mono(), decision, policy)
            self._snap = snap
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(event.set)
        return snap

    def snapshot(self) -> StoreSnapshot | None:
        return self._snap

    def age_s(self) -> float | None:
        snap = self._snap
        return None if snap is None else self._mono() - snap.updated_mono

    async def wait_for_update(self, after_version: int, timeout_s: float) -> StoreSnapshot | None:
        """The first snapshot newer than `after_version`, or the current one after `timeout_s`."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            snap = self._snap
            if snap is not None and snap.version > after_version:
                return snap
            self._waiters.add(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        finally:
            with self._lock:
                self._waiters.discard(entry)
        return self._snap


class ControllerStoreView:
    """Our `DecisionStore` protocol over the controller's `server.store.DecisionStore`, so the
    servers here read what `Controller.tick_once` records (including the raw signal samples,
    which a plain Loop hook does not see). Conversions are cached per recorded tick."""

    def __init__(
        self,
        store: Any,
        *,
        wall_clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._wall = wall_clock
        self._mono = mono_clock
        self._cache: StoreSnapshot | None = None

    def snapshot(self) -> StoreSnapshot | None:
        latest = self._store.latest
        if latest is None:
            return None
        cached = self._cache
        if cached is not None and cached.version == latest.seq:
            return cached
        samples: dict[tuple[str, Role], Mapping[str, SignalSample]] = {}
        if latest.snapshot is not None:
            for pool, obs in latest.snapshot.pools.items():
                for role, ro in obs.roles.items():
                    samples[(pool, role)] = ro.signals
        # The controller records wall time only; translate it to our monotonic clock.
        mono = self._mono() - max(0.0, self._wall() - latest.wall_time)
        snap = StoreSnapshot(
            version=latest.seq,
            points=tuple(points_from_decision(latest.decision, latest.policy, samples)),
            updated_wall=latest.wall_time,
            updated_mono=mono,
            decision=latest.decision,
            policy=latest.policy,
        )
        self._cache = snap
        return snap

    async def wait_for_update(self, after_version: int, timeout_s: float) -> StoreSnapshot | None:
        await self._store.wait_newer(after_version, timeout_s=timeout_s)
        return self.snapshot()


def fresh_points(
    store: DecisionStore, max_age_s: float | None, *, now_mono: float
) -> tuple[StoreSnapshot, tuple[MetricPoint, ...]] | None:
    """The store's points, or None when there is no decision yet or it is older than
    `max_age_s`: a stopped controller must not keep an HPA pinned to an old number; with no
    metric the HPA holds its current replicas (and reports the condition)."""
    snap = store.snapshot()
    if snap is None:
        return None
    if max_age_s is not None and now_mono - snap.updated_mono > max_age_s:
        return None
    return snap, snap.points


# --- authentication and authorization ------------------------------------------------------------

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


def _peer_cn(peercert: Mapping[str, Any] | None) -> str | None:
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


# --- HTTP ---------------------------------------------------------------------------------------

# Paths the kubelet and load balancers may probe without a client certificate; they reveal
# nothing but liveness.
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/livez", "/readyz"})

_DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_METRIC_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,253}$")
_USER_KEY = web.RequestKey("user", UserInfo)


def _status(code: int, reason: str, message: str) -> web.Response:
    """A metav1.Status body, which kubectl and client-go print as the error message."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        cn = _peer_cn(peercert)
        if cn is None:
            # No verified certificate: nobody vouches for the X-Remote-* headers, ignore them.
            return _status(
                401, "Unauthorized", "a client certificate from the front proxy CA is required"
            )
        if allowed_names and cn not in allowed_names:
            return _status(
                403,
                "Forbidden",
                f"client certificate CN {cn[:64]!r} is not an allowed requestheader name",
            )
        name = next(
            (request.headers[h] for h in requestheader.username_headers if request.headers.get(h)),
            None,
        )
        if not name:
            return _status(401, "Unauthorized", "no user in the requestheader username headers")
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
            return _status(exc.status, reason, exc.reason)

    async def user_allowed(
        request: web.Request, namespace: str | None, resource: str
    ) -> web.Response | None:
        user = request[_USER_KEY]  # set by auth_middleware
        ok, reason = await authz.authorize(user, namespace=namespace, resource=resource)
        if ok:
            return None
        where = f' in namespace "{namespace}"' if namespace else ""
        return _status(
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
            return _status(400, "BadRequest", f"invalid namespace {namespace[:64]!r}")
        if not _METRIC_RE.match(metric):
            return _status(400, "BadRequest", f"invalid metric name {metric[:64]!r}")
        raw = request.query.getall("labelSelector", [])
        if len(raw) > 1:
            return _status(400, "BadRequest", "labelSelector given more than once")
        try:
            selector = parse_selector(raw[0] if raw else "")
        except SelectorError as exc:
            return _status(400, "BadRequest", f"invalid labelSelector: {exc}")
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
        )
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.host, s.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=tls).start()
        log.info(
            "external_metrics_serving",
            host=s.host,
            port=self.port,
            allowed_names=list(rh.allowed_names),
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ExternalMetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


__all__ = [
    "DESIRED",
    "DecisionStore",
    "ExternalMetricsOptions",
    "ExternalMetricsServer",
    "ExternalMetricsSettings",
    "LatestDecisionStore",
    "MetricPoint",
    "RequestHeaderConfig",
    "SelectorError",
    "StoreSnapshot",
    "SubjectAccessReviewAuthorizer",
    "format_quantity",
    "parse_selector",
]
