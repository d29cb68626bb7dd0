"""pd-autoscaler's numbers for KEDA: the External Scaler gRPC service and a metrics-api endpoint.

Why KEDA first: `external.metrics.k8s.io` has one provider slot per cluster and KEDA's metrics
adapter already holds it wherever KEDA runs, so there our own APIService cannot be installed.
KEDA instead calls us as a scaler, and its HPA does the actuation.

Trigger metadata (the ScaledObject's `triggers[].metadata`, passed to us as `scalerMetadata`):
- `pool` (required), `role` (required unless the pool has one role, e.g. `aggregated`);
- `metric`: `pd_desired_replicas` (default) or any exported name (`pd_queue_depth`, ...);
- `namespace`: the Deployment's namespace; defaults to the ScaledObject's own namespace;
- `targetValue`: the HPA target for that metric; defaults to 1 for the replica counts (so the
  HPA's `ceil(value / target)` reproduces our number) and is required for the others;
- `activationValue`: IsActive is `value > activationValue` (default 0: active while we want at
  least one replica).

Missing or stale data is an error (UNAVAILABLE), never "inactive": KEDA then keeps the current
replicas (or applies the ScaledObject's `fallback`), which is what "never scale down on missing
data" means here. StreamIsActive sends only when the answer changes, and nothing while data is
missing.

The metrics-api endpoint (`GET /keda/v1/{pool}/{role}`) serves the same numbers as JSON for
KEDA's `metrics-api` trigger (`valueLocation: desiredReplicas` or `signals.pd_queue_depth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web

from autoscaler.server import points
from autoscaler.server._keda_pb import externalscaler_pb2 as pb
from autoscaler.server._keda_pb import externalscaler_pb2_grpc as pb_grpc
from autoscaler.server.points import MetricPoint, rfc3339
from autoscaler.server.store import DecisionStore, StoreSnapshot, fresh_points

log = structlog.get_logger(__name__)

_REPLICA_METRICS = frozenset({points.DESIRED, points.CURRENT, points.RECOMMENDED})
# How long a StreamIsActive waits for a new decision before re-checking (staleness, shutdown).
_STREAM_RECHECK_S = 5.0


class ScalerError(Exception):
    """A request we cannot answer; `code` is the gRPC status (HTTP status for metrics-api)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class TriggerRef:
    """What a trigger asks for, validated from its metadata."""

    pool: str
    role: str | None
    metric: str
    namespace: str | None
    target: float
    activation: float

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], *, default_namespace: str) -> TriggerRef:
        pool = meta.get("pool", "").strip()
        if not pool:
            raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, "trigger metadata needs `pool`")
        metric = meta.get("metric", points.DESIRED).strip() or points.DESIRED
        if metric not in _REPLICA_METRICS and not metric.startswith(points.PREFIX):
            # Accept the bare signal key users see in the policy file (queue_depth -> pd_...).
            metric = points.metric_name(metric)
        target = _number(meta, "targetValue", 1.0 if metric in _REPLICA_METRICS else None)
        if target is None or target <= 0:
            raise ScalerError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"metric {metric} needs a positive `targetValue` in the trigger metadata",
            )
        activation = _number(meta, "activationValue", 0.0)
        return cls(
            pool=pool,
            role=meta.get("role", "").strip() or None,
            metric=metric,
            namespace=meta.get("namespace", "").strip() or default_namespace or None,
            target=target,
            activation=activation if activation is not None else 0.0,
        )

    @property
    def metric_name(self) -> str:
        """The name KEDA puts in its HPA (it prefixes `s<index>-`); unique per pool and role so
        two triggers of one ScaledObject never collide."""
        return f"{self.metric}-{self.pool}-{self.role or 'any'}".replace("_", "-").lower()


def _number(meta: Mapping[str, str], key: str, default: float | None) -> float | None:
    raw = meta.get(key)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ScalerError(
            grpc.StatusCode.INVALID_ARGUMENT, f"`{key}` is not a number: {raw[:32]!r}"
        ) from None
    if math.isnan(value) or math.isinf(value):
        raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, f"`{key}` must be finite")
    return value


def lookup(
    store: DecisionStore,
    ref: TriggerRef,
    *,
    max_age_s: float | None,
    now_mono: float,
) -> tuple[MetricPoint, StoreSnapshot]:
    """The one point a trigger names, or a ScalerError saying why there is none."""
    fresh = fresh_points(store, max_age_s, now_mono=now_mono)
    if fresh is None:
        raise ScalerError(
            grpc.StatusCode.UNAVAILABLE,
            "no recent decision from pd-autoscaler (not started, or stopped ticking)",
        )
    snap, exported = fresh
    pool_points = [
        p
        for p in exported
        if p.labels.get("pool") == ref.pool
        and (ref.namespace is None or p.labels.get("namespace") == ref.namespace)
    ]
    if not pool_points:
        where = f" in namespace {ref.namespace}" if ref.namespace else ""
        raise ScalerError(grpc.StatusCode.NOT_FOUND, f"no pool {ref.pool!r}{where}")
    roles = sorted({p.labels["role"] for p in pool_points})
    role = ref.role
    if role is None:
        if len(roles) != 1:
            raise ScalerError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"pool {ref.pool!r} has roles {', '.join(roles)}: set `role`",
            )
        role = roles[0]
    if role not in roles:
        raise ScalerError(grpc.StatusCode.NOT_FOUND, f"pool {ref.pool!r} has no role {role!r}")
    for p in pool_points:
        if p.labels["role"] == role and p.name == ref.metric:
            return p, snap
    # Known pool and role but no value: a signal without data this tick, or not configured.
    raise ScalerError(
        grpc.StatusCode.UNAVAILABLE, f"no value for {ref.metric} of {ref.pool}/{role} this tick"
    )


class ExternalScaler(pb_grpc.ExternalScalerServicer):
    """KEDA's External Scaler over a `DecisionStore`."""

    def __init__(
        self,
        store: DecisionStore,
        *,
        max_age_s: float | None = 120.0,
        mono_clock: Callable[[], float] = time.monotonic,
        stream_recheck_s: float = _STREAM_RECHECK_S,
    ) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self._mono = mono_clock
        self._recheck = stream_recheck_s

    def _ref(self, obj: Any) -> TriggerRef:
        return TriggerRef.from_metadata(
            dict(obj.scalerMetadata), default_namespace=str(obj.namespace)
        )

    def _point(self, ref: TriggerRef) -> MetricPoint:
        return lookup(self.store, ref, max_age_s=self.max_age_s, now_mono=self._mono())[0]

    async def _abort(self, context: Any, exc: ScalerError, rpc: str) -> None:
        log.info("keda_request_failed", rpc=rpc, code=exc.code.name, error=str(exc))
        await context.abort(exc.code, str(exc))

    async def IsActive(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
        try:
            ref = self._ref(request)
            point = self._point(ref)
        except ScalerError as exc:
            await self._abort(context, exc, "IsActive")
            raise AssertionError from exc  # unreachable: abort raises
        return pb.IsActiveResponse(result=point.value > ref.activation)

    async def StreamIsActive(  # noqa: N802 - gRPC name
        self, request: Any, context: Any
    ) -> AsyncIterator[Any]:
        try:
            ref = self._ref(request)
        except ScalerError as exc:
            await self._abort(context, exc, "StreamIsActive")
            return
        last: bool | None = None
        version = 0
        while True:
            try:
                point = self._point(ref)
            except ScalerError:
                point = None  # no data: say nothing rather than "inactive"
            if point is not None:
                active = point.value > ref.activation
                if active != last:
                    last = active
                    yield pb.IsActiveResponse(result=active)
            snap = await self.store.wait_for_update(version, self._recheck)
            if snap is not None:
                version = snap.version

    async def GetMetricSpec(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
        try:
            ref = self._ref(request)
        except ScalerError as exc:
            await self._abort(context, exc, "GetMetricSpec")
            raise AssertionError from exc
        target = ref.target
        return pb.GetMetricSpecResponse(
            metricSpecs=[
                pb.MetricSpec(
                    metricName=ref.metric_name,
                    targetSize=max(1, round(target)),
                    targetSizeFloat=target,
                )
            ]
        )

    async def GetMetrics(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
        try:
            ref = self._ref(request.scaledObjectRef)
            point = self._point(ref)
        except ScalerError as exc:
            await self._abort(context, exc, "GetMetrics")
            raise AssertionError from exc
        value = max(0.0, point.value)
        # KEDA uses metricValueFloat when it is > 0, else the integer field: fill both.
        return pb.GetMetricsResponse(
            metricValues=[
                pb.MetricValue(
                    metricName=request.metricName or ref.metric_name,
                    metricValue=min(math.ceil(value), 2**63 - 1),
                    metricValueFloat=value,
                )
            ]
        )


@dataclass(frozen=True, slots=True)
class KedaScalerSettings:
    """How the controller starts the gRPC scaler. Without cert/key it serves plaintext (inside
    the cluster network, as KEDA's own examples do); with `client_ca_file` it requires mTLS
    (KEDA's `tlsClientCert`/`tlsClientKey` auth parameters)."""

    host: str = "0.0.0.0"  # noqa: S104 - KEDA dials the Service
    port: int = 9090
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    max_age_s: float | None = 120.0
    # Limits (issue 17): any pod that can reach the port could otherwise hold streams open
    # without bound. KEDA needs one StreamIsActive per external-push trigger and short unary
    # calls per poll, so these sit far above a real cluster's use.
    max_concurrent_rpcs: int = 512
    """RPCs in flight at once, open StreamIsActive streams included; beyond it a call fails
    with RESOURCE_EXHAUSTED at once instead of queueing."""
    max_streams_per_connection: int = 128
    """HTTP/2 streams one connection may hold open (SETTINGS_MAX_CONCURRENT_STREAMS)."""
    max_message_bytes: int = 64 * 1024
    """Largest request: a ScaledObjectRef with its trigger metadata is a few hundred bytes."""
    max_connection_idle_s: float = 300.0
    """A connection with no RPC for this long is closed (KEDA reconnects on its next poll)."""
    max_connection_age_s: float = 3600.0
    """Every connection is closed after this long (streams get `max_connection_grace_s` to
    finish; KEDA re-opens them), so no client can pin one for ever."""
    max_connection_grace_s: float = 30.0


class KedaScalerServer:
    """grpc.aio server for `ExternalScaler`; `start()` binds (port 0 = free port), `stop()`."""

    def __init__(self, store: DecisionStore, settings: KedaScalerSettings) -> None:
        self.store = store
        self.settings = settings
        self.port = settings.port
        self._server: Any = None
        self._terminated: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        s = self.settings
        ms = 1000
        server = grpc.aio.server(
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
            options=[
                ("grpc.max_concurrent_streams", s.max_streams_per_connection),
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_connection_idle_ms", round(s.max_connection_idle_s * ms)),
                ("grpc.max_connection_age_ms", round(s.max_connection_age_s * ms)),
                ("grpc.max_connection_age_grace_ms", round(s.max_connection_grace_s * ms)),
            ],
        )
        # The generated registration function is untyped (grpcio ships no stubs).
        register: Any = pb_grpc.add_ExternalScalerServicer_to_server
        register(ExternalScaler(self.store, max_age_s=s.max_age_s), server)
        address = f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
        if s.cert_file is not None and s.key_file is not None:
            ca = s.client_ca_file.read_bytes() if s.client_ca_file else None
            creds = grpc.ssl_server_credentials(
                [(s.key_file.read_bytes(), s.cert_file.read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        # Done when the server stops, whoever stops it: what `serving()` reports.
        self._terminated = asyncio.ensure_future(server.wait_for_termination())
        log.info("keda_scaler_serving", host=s.host, port=self.port, tls=s.cert_file is not None)

    def serving(self) -> bool:
        """True while started and not terminated (the controller restarts it if not)."""
        return (self._server is not None and self._terminated is not None
                and not self._terminated.done())

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self._terminated is not None:
            self._terminated.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._terminated
            self._terminated = None

    async def __aenter__(self) -> KedaScalerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --- metrics-api (JSON) ---------------------------------------------------------------------------

_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def metrics_api_routes(
    store: DecisionStore,
    *,
    max_age_s: float | None = 120.0,
    prefix: str = "/keda/v1",
    mono_clock: Callable[[], float] = time.monotonic,
) -> list[web.RouteDef]:
    """Routes for KEDA's `metrics-api` trigger, to mount on the controller's HTTP app:
    `app.add_routes(metrics_api_routes(store))`.

    `GET {prefix}/{pool}/{role}[?namespace=ns]` ->
    `{"pool", "role", "namespace", "deployment", "desiredReplicas", "currentReplicas",
    "recommendedReplicas", "timestamp", "signals": {"pd_queue_depth": 4.2, ...}}`;
    404 for an unknown pool/role, 503 while there is no fresh decision (KEDA then counts a
    failure and applies the ScaledObject's fallback, if any).
    """

    async def handler(request: web.Request) -> web.Response:
        pool = request.match_info["pool"]
        role = request.match_info["role"]
        ns = request.query.get("namespace") or None
        ref = TriggerRef(pool, role, points.DESIRED, ns, 1.0, 0.0)
        try:
            point, snap = lookup(store, ref, max_age_s=max_age_s, now_mono=mono_clock())
        except ScalerError as exc:
            return web.json_response({"error": str(exc)}, status=_HTTP.get(exc.code, 500))
        labels = point.labels
        mine = [
            p
            for p in snap.points
            if p.labels.get("pool") == pool
            and p.labels.get("role") == role
            and p.labels.get("namespace") == labels.get("namespace")
        ]
        by_name = {p.name: p.value for p in mine}
        body = {
            "pool": pool,
            "role": role,
            "namespace": labels.get("namespace"),
            "deployment": labels.get("deployment"),
            "desiredReplicas": int(by_name[points.DESIRED]),
            "currentReplicas": int(by_name.get(points.CURRENT, 0)),
            "recommendedReplicas": int(by_name.get(points.RECOMMENDED, 0)),
            "timestamp": rfc3339(snap.updated_wall),
            "signals": {n: v for n, v in by_name.items() if n not in _REPLICA_METRICS},
        }
        return web.json_response(body)

    return [web.get(prefix + "/{pool}/{role}", handler)]


def make_metrics_api_app(store: DecisionStore, **kwargs: Any) -> web.Application:
    """A stand-alone app with only the metrics-api routes (tests, or a separate port)."""
    app = web.Application()
    app.add_routes(metrics_api_routes(store, **kwargs))
    return app


def metrics_api_plugin(app: web.Application, store: Any) -> None:
    """A `server.app.Plugin`: mounts the metrics-api routes on the controller's HTTP app, reading
    the controller's `server.store.DecisionStore`."""
    app.add_routes(metrics_api_routes(store))
