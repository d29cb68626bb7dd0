"""The in-cluster controller: `Loop.tick` on a clock, behind a Lease, with policy hot reload.

Wiring (every box is replaceable in tests):

    policy: --policy FILE (polled for changes)  |  ConfigMaps labelled pd-autoscaler.io/policy
                   \\ validated per document, last good kept; applied on the next tick
    leader election (coordination.k8s.io Lease) -> only the leader ticks and writes
    on leading (and when a reload adds forecast roles): forecast history refilled from the
          source's range queries before the next tick (bounded, never fatal)
    tick: Loop(policy, MetricsSource, KubernetesActuator) -> TickReport
          -> Events on scaled Deployments; state + last decision saved to the state ConfigMap;
             DecisionStore (in-process servers) and Telemetry (/metrics) updated
    aiohttp: /healthz /readyz /metrics (+ server plug-ins, e.g. KEDA metrics-api) on every replica
    adoption servers when configured (external.metrics.k8s.io over TLS, KEDA gRPC scaler) on
    every replica; standbys answer "no data", and the leader labels its Pod
    pd-autoscaler.io/leader=true so the overlays' Services reach it alone

Why the state lives in a ConfigMap of the controller's namespace (`pd-autoscaler-state`) and not
in Deployment annotations: writing an annotation needs `patch deployments`, and RBAC cannot limit
a patch to metadata, so that grant would also allow rewriting the Pod template of every model
server. The controller's Role instead allows `deployments/scale` (replicas only) on named
Deployments, and `update`/`patch` on one named ConfigMap and one named Lease of its own. Not the
Lease itself either: the elector replaces the Lease every retry period from its cached copy,
so a second writer there would make renewals fail with 409s.

Restart safety: `ScaleState` timestamps are monotonic seconds; they are saved as wall-clock
(`shifted(time.time() - monotonic())`) and shifted back on restore, so a new leader keeps the
stabilization windows and rate-limit history of the old one (it does not scale down a pool
that was scaled up a minute ago). The state is saved after every tick whose state changed.

Only the leader writes: the tick loop runs as the elector's leading task (cancelled when the
lease is lost), and every scale passes a fence that re-checks the lease was renewed within the
renew deadline. Standbys watch the policy (so they are ready to take over) and serve probes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from autoscaler import errors
from autoscaler import telemetry as telemetry_mod
from autoscaler.actuator import kubernetes as kube
from autoscaler.actuator.base import Actuator, WorkloadStatus
from autoscaler.decision.state import ScaleState
from autoscaler.loop import Loop, TickReport
from autoscaler.metrics.source import MetricsSource
from autoscaler.policy.config import DeploymentRef, PolicyFile, parse_policy
from autoscaler.server import app as app_mod
from autoscaler.server.store import DecisionStore
from autoscaler.types import Decision

if TYPE_CHECKING:
    from aiohttp import web

    from autoscaler.forecast.backfill import RangeRates

    # Imported at run time only when configured: the gRPC stack is not free to load.
    from autoscaler.server import external_metrics as em
    from autoscaler.server import keda

log = structlog.get_logger(__name__)

ENV_PREFIX = "PD_AUTOSCALER_"
POLICY_LABEL = "pd-autoscaler.io/policy"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
STATE_KEY = "state.json"
LAST_DECISION_KEY = "last-decision.json"
LAST_SCALE_KEY = "last-scale.json"
POLICY_SUFFIXES = (".yaml", ".yml")


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything `pd-autoscaler run` needs; flags win over PD_AUTOSCALER_* variables."""

    namespace: str
    """Where the Lease, the state ConfigMap and the policy ConfigMaps live."""
    identity: str
    """Leader-election identity; the Pod name in a cluster (unique per replica)."""
    kubeconfig: Path | None = None
    policy_file: Path | None = None
    """A policy file instead of ConfigMaps (polled for changes every `policy_poll_s`)."""
    policy_selector: str = f"{POLICY_LABEL}=true"
    prometheus_url: str | None = None
    prometheus_token_file: str | None = None
    prometheus_ca_file: str | None = None
    dry_run: bool = False
    """Shadow mode: full decisions, logged and exported, no writes to Deployments."""
    tick_s: float = 15.0
    """Seconds between ticks; matches a typical Prometheus scrape interval."""
    leader_election: bool = True
    lease_name: str = "pd-autoscaler"
    lease_duration_s: int = 15
    """How long a standby waits after the leader's last renewal before taking over (whole
    seconds: Lease.spec.leaseDurationSeconds is an integer)."""
    renew_deadline_s: float = 10.0
    """The leader stops (and stops writing) when it could not renew for this long."""
    retry_period_s: float = 2.0
    state_configmap: str = "pd-autoscaler-state"
    http_host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the Pod
    http_port: int = 8080
    api_timeout_s: float = 10.0
    """Per-request timeout for API calls."""
    policy_poll_s: float = 5.0
    # Adoption servers (docs/adoption.md); each is off unless configured. They bind `http_host`.
    external_metrics_port: int | None = None
    """Serve external.metrics.k8s.io/v1beta1 over TLS on this port (0: a free port)."""
    external_metrics_cert_dir: Path | None = None
    """Directory with the serving cert `tls.crt` and key `tls.key` (a mounted TLS Secret)."""
    keda_grpc_port: int | None = None
    """Serve the KEDA External Scaler (gRPC) on this port (0: a free port)."""
    keda_grpc_cert_dir: Path | None = None
    """`tls.crt`/`tls.key` for the gRPC scaler; unset: plaintext inside the cluster."""
    keda_grpc_client_ca_file: Path | None = None
    """Require client certificates signed by this CA (mTLS); needs `keda_grpc_cert_dir`."""
    keda_metrics_api: bool = False
    """Mount KEDA's metrics-api JSON endpoint (`/keda/v1/<pool>/<role>`) on the HTTP port."""
    serve_max_age_s: float = 120.0
    """The adoption servers answer "no data" once the latest decision is older than this."""
    leader_label: bool = False
    """Label this replica's Pod `pd-autoscaler.io/leader=true` while it leads (the adoption
    overlays' Services select it); needs `pod_name` and `pods` get/patch in `pod_namespace`."""
    pod_name: str | None = None
    """This replica's Pod (`POD_NAME` from the downward API)."""
    pod_namespace: str | None = None
    """The Pod's namespace (`POD_NAMESPACE`); defaults to `namespace`."""
    # Forecast history backfill (docs/prometheus.md): range queries before the first tick.
    forecast_backfill_s: float = 8 * 86400.0
    """History refilled per forecast policy on gaining leadership or adding forecast roles
    (also capped by each policy's history_s); 0 turns the backfill off."""
    forecast_backfill_timeout_s: float = 30.0
    """Bound on one backfill round; the first tick waits for it, so it must stay well inside
    the liveness probe's stall limit (max(60 s, 4 ticks))."""

    @property
    def external_metrics_cert(self) -> tuple[Path, Path] | None:
        d = self.external_metrics_cert_dir
        return None if d is None else (d / "tls.crt", d / "tls.key")

    @property
    def keda_grpc_cert(self) -> tuple[Path, Path] | None:
        d = self.keda_grpc_cert_dir
        return None if d is None else (d / "tls.crt", d / "tls.key")

    def validate(self) -> None:
        problems = []
        if self.tick_s <= 0:
            problems.append(f"tick_s: must be > 0 (got {self.tick_s})")
        if not self.lease_duration_s > self.renew_deadline_s > 1.2 * self.retry_period_s:
            problems.append(
                "lease_duration_s > renew_deadline_s > 1.2 x retry_period_s must hold (got "
                f"{self.lease_duration_s}, {self.renew_deadline_s}, {self.retry_period_s})"
            )
        if min(self.lease_duration_s, self.renew_deadline_s, self.retry_period_s) < 1:
            problems.append("lease durations must be >= 1 s (the elector's own limit)")
        for name in ("http_port", "external_metrics_port", "keda_grpc_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                problems.append(f"{name}: must be 0-65535 (got {port})")
        if self.external_metrics_port is not None and self.external_metrics_cert_dir is None:
            # The aggregator only speaks TLS and verifies the name; there is no plaintext mode.
            problems.append("external_metrics_cert_dir: required with external_metrics_port "
                            "(a directory with tls.crt and tls.key)")
        if self.keda_grpc_client_ca_file is not None and self.keda_grpc_cert_dir is None:
            problems.append("keda_grpc_client_ca_file: needs keda_grpc_cert_dir (mTLS is TLS)")
        # Checked at start-up so a missing Secret mount is one clear line, not a TLS traceback.
        for name, files in (("external_metrics_cert_dir", self.external_metrics_cert),
                            ("keda_grpc_cert_dir", self.keda_grpc_cert),
                            ("keda_grpc_client_ca_file",
                             (self.keda_grpc_client_ca_file,) if self.keda_grpc_client_ca_file
                             else None)):
            for f in files or ():
                if not f.is_file():
                    problems.append(f"{name}: {f} is not a readable file")
        if self.serve_max_age_s <= self.tick_s:
            problems.append(f"serve_max_age_s: must be > tick_s (got {self.serve_max_age_s}, "
                            f"tick {self.tick_s}): every answer would be stale between ticks")
        if self.leader_label and not self.pod_name:
            problems.append("leader_label: needs the Pod name (set POD_NAME from the downward "
                            "API: fieldRef metadata.name)")
        if self.forecast_backfill_s < 0:
            problems.append(f"forecast_backfill_s: must be >= 0 (got {self.forecast_backfill_s})")
        # Half the stall limit of Health (Controller.__init__): a slow Prometheus must not make
        # the liveness probe restart a new leader before its first tick.
        stall_s = max(60.0, 4 * self.tick_s)
        if not 0 < self.forecast_backfill_timeout_s <= stall_s / 2:
            problems.append(f"forecast_backfill_timeout_s: must be > 0 and <= {stall_s / 2:g} "
                            f"(got {self.forecast_backfill_timeout_s}): the first tick waits "
                            "for it")
        if problems:
            raise errors.ConfigError([f"settings: {p}" for p in problems])


# (field, type, parser) for every PD_AUTOSCALER_* variable; docs/controller.md lists them.
def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    msg = "expected true/false"
    raise ValueError(msg)


_ENV: dict[str, Callable[[str], Any]] = {
    "namespace": str,
    "identity": str,
    "kubeconfig": Path,
    "policy_file": Path,
    "policy_selector": str,
    "prometheus_url": str,
    "prometheus_token_file": str,
    "prometheus_ca_file": str,
    "dry_run": _bool,
    "tick_s": float,
    "leader_election": _bool,
    "lease_name": str,
    "lease_duration_s": int,
    "renew_deadline_s": float,
    "retry_period_s": float,
    "state_configmap": str,
    "http_host": str,
    "http_port": int,
    "api_timeout_s": float,
    "policy_poll_s": float,
    "external_metrics_port": int,
    "external_metrics_cert_dir": Path,
    "keda_grpc_port": int,
    "keda_grpc_cert_dir": Path,
    "keda_grpc_client_ca_file": Path,
    "keda_metrics_api": _bool,
    "serve_max_age_s": float,
    "leader_label": _bool,
    "forecast_backfill_s": float,
    "forecast_backfill_timeout_s": float,
}
# The downward API's conventional names, unprefixed (as client-go tools read them).
_POD_ENV = {"pod_name": "POD_NAME", "pod_namespace": "POD_NAMESPACE"}
# `run` flag (argparse dest) -> field; flags win over the environment.
_FLAGS = {"kubeconfig": "kubeconfig", "namespace": "namespace", "policy": "policy_file",
          "prometheus_url": "prometheus_url", "dry_run": "dry_run",
          "external_metrics_port": "external_metrics_port",
          "external_metrics_cert_dir": "external_metrics_cert_dir",
          "keda_grpc_port": "keda_grpc_port", "keda_metrics_api": "keda_metrics_api",
          "leader_label": "leader_label"}


def settings_from(args: argparse.Namespace | None, env: Mapping[str, str]) -> Settings:
    """Settings from PD_AUTOSCALER_* variables, then the `run` flags on top."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, parse in _ENV.items():
        var = ENV_PREFIX + name.upper()
        if var in env:
            try:
                values[name] = parse(env[var])
            except ValueError as exc:
                problems.append(f"env {var}: {exc} (got {env[var]!r})")
    for name, var in _POD_ENV.items():
        if env.get(var):
            values[name] = env[var]
    if args is not None:
        for flag, name in _FLAGS.items():
            value = getattr(args, flag, None)
            if value is not None:
                values[name] = value
    if problems:
        raise errors.ConfigError(problems)
    if "namespace" not in values:
        # In a Pod, the ServiceAccount's namespace is the natural home of the controller.
        try:
            values["namespace"] = SA_NAMESPACE_FILE.read_text().strip()
        except OSError:
            values["namespace"] = "default"
    if "identity" not in values:
        pod = env.get("POD_NAME") or socket.gethostname()
        values["identity"] = f"{pod}-{secrets.token_hex(3)}"
    settings = Settings(**values)
    settings.validate()
    return settings


# --- policy documents ---------------------------------------------------------------------


class PolicyDocs:
    """The policy documents in force (one per ConfigMap key, or the file), last good each.

    Several documents are merged into one PolicyFile (pools concatenated, cross-document rules
    such as "one Deployment, one role" re-validated). File-level fields: `dry_run` holds for all
    pools if any document asks for it (a document that wants shadow mode must never be acted
    on); `gpu_budget` is only allowed in a single document.
    """

    def __init__(self) -> None:
        self.docs: dict[str, PolicyFile] = {}

    def merged(self, docs: Mapping[str, PolicyFile] | None = None) -> PolicyFile | None:
        docs = self.docs if docs is None else docs
        if not docs:
            return None
        if len(docs) == 1:
            return next(iter(docs.values()))
        ordered = [docs[k] for k in sorted(docs)]
        budgets = [k for k in sorted(docs) if docs[k].gpu_budget is not None]
        if budgets:
            raise errors.ConfigError([
                f"{k}: gpu_budget: a file-level budget needs a single policy document; "
                f"{len(docs)} are loaded (use pools[].gpu_budget)" for k in budgets
            ])
        data = {
            "dry_run": any(d.dry_run for d in ordered),
            "pools": [p.model_dump(mode="json") for d in ordered for p in d.pools],
        }
        try:
            return PolicyFile.model_validate(data)
        except ValueError as exc:
            raise errors.ConfigError([f"merged policy documents {sorted(docs)}: {exc}"]) from exc

    def propose(self, updates: Mapping[str, str], removed: Sequence[str] = ()
                ) -> tuple[dict[str, PolicyFile], list[str]]:
        """Validate `updates` (key -> YAML text) on top of the current documents; return the
        candidate set and the problems. Invalid documents keep their last good version."""
        docs = {k: v for k, v in self.docs.items() if k not in removed}
        problems: list[str] = []
        for key, text in updates.items():
            try:
                docs[key] = parse_policy(text, source=key)
            except errors.ConfigError as exc:
                problems.extend(exc.problems)
        try:
            self.merged(docs)
        except errors.ConfigError as exc:
            problems.extend(exc.problems)
            return dict(self.docs), problems
        return docs, problems


# --- state persistence --------------------------------------------------------------------


def _rfc3339(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def decision_status(decision: Decision, *, wall: float) -> dict[str, Any]:
    """The last decision per pool and role, as saved next to the state (kubectl-readable)."""
    return {
        pool: {
            role.value: {
                "current": rd.current,
                "desired": rd.desired,
                "recommended": rd.recommended,
                "ready": rd.ready,
                "pending": rd.pending,
                "driver": rd.driver,
                "clipped_by": list(rd.clipped_by),
                "needs": [n.describe() for n in rd.needs],
                "dry_run": pd.dry_run,
                "time": _rfc3339(wall),
            }
            for role, rd in pd.roles.items()
        }
        for pool, pd in decision.pools.items()
    }


class StateStore:
    """The state ConfigMap: `state.json` (ScaleState, wall clock), `last-decision.json`,
    `last-scale.json`. Read on gaining leadership, written by the leader only."""

    def __init__(self, api: ApiClient, *, namespace: str, name: str, timeout_s: float) -> None:
        self._core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self._timeout_s = timeout_s
        self._exists: bool | None = None
        self.last_scale: dict[str, Any] = {}

    async def load(self, *, mono_now: float, wall_now: float) -> ScaleState:
        """The saved state on the monotonic clock; a fresh one if none or unreadable."""
        try:
            cm = await self._core.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=self._timeout_s
            )
        except ApiException as exc:
            if exc.status == 404:
                self._exists = False
                log.info("state_none", configmap=self.name)
                return ScaleState()
            raise
        self._exists = True
        data: Mapping[str, str] = cm.data or {}
        with contextlib.suppress(ValueError):
            self.last_scale = dict(json.loads(data.get(LAST_SCALE_KEY, "{}")))
        raw = data.get(STATE_KEY)
        if not raw:
            return ScaleState()
        try:
            saved = ScaleState.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("state_unreadable", configmap=self.name, error=str(exc))
            return ScaleState()
        state = saved.shifted(mono_now - wall_now)
        log.info("state_restored", configmap=self.name, pools=sorted(state.pools))
        return state

    async def save(self, state: ScaleState, decision: Decision, *, mono_now: float,
                   wall_now: float, identity: str) -> None:
        data = {
            STATE_KEY: state.shifted(wall_now - mono_now).to_json(),
            LAST_DECISION_KEY: json.dumps(decision_status(decision, wall=wall_now),
                                          sort_keys=True),
            LAST_SCALE_KEY: json.dumps(self.last_scale, sort_keys=True),
        }
        annotations = {"pd-autoscaler.io/saved-by": identity,
                       "pd-autoscaler.io/saved-at": _rfc3339(wall_now)}
        if self._exists is not False:
            try:
                await self._core.patch_namespaced_config_map(
                    self.name, self.namespace,
                    {"metadata": {"annotations": annotations}, "data": data},
                    _request_timeout=self._timeout_s,
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
            else:
                self._exists = True
                return
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name=self.name, namespace=self.namespace, annotations=annotations,
                labels={"app.kubernetes.io/name": "pd-autoscaler",
                        "app.kubernetes.io/component": "state"},
            ),
            data=data,
        )
        try:
            await self._core.create_namespaced_config_map(
                self.namespace, body, _request_timeout=self._timeout_s
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._exists = True


# --- the fence ----------------------------------------------------------------------------


class FencedActuator:
    """Passes reads through; refuses writes unless `may_write()` (the lease is still ours)."""

    def __init__(self, inner: Actuator, may_write: Callable[[], bool]) -> None:
        self.inner = inner
        self._may_write = may_write

    async def status(self, ref: DeploymentRef) -> WorkloadStatus:
        return await self.inner.status(ref)

    async def scale(self, ref: DeploymentRef, replicas: int, *, reason: str) -> None:
        if not self._may_write():
            msg = "not the leader (lease not renewed within the renew deadline): write refused"
            raise errors.ActuationError(msg)
        await self.inner.scale(ref, replicas, reason=reason)


# --- the leader label ---------------------------------------------------------------------

LEADER_LABEL = "pd-autoscaler.io/leader"


class LeaderLabeler:
    """Keeps `pd-autoscaler.io/leader=true` on this replica's Pod exactly while it leads.

    Why: only the leader ticks, so only it has numbers; the adoption overlays' Services
    (external metrics, KEDA) select this label to reach it alone. `set()` never blocks the
    caller (leadership changes happen inside the elector's callbacks): a background task
    converges the Pod to the wanted state and retries with backoff, since a label left behind
    by a failed removal would route the HPA to a standby (which answers "no data" only).
    The first pass removes a label a previous run of this Pod may have left (a crash, or a
    container restart keeps the Pod and its labels).
    """

    def __init__(self, api: ApiClient, *, pod: str, namespace: str, timeout_s: float,
                 max_backoff_s: float = 30.0) -> None:
        self._core = client.CoreV1Api(api)
        self.pod = pod
        self.namespace = namespace
        self._timeout_s = timeout_s
        self._max_backoff_s = max_backoff_s
        self.want = False
        self.has: bool | None = None  # unknown until the first successful patch
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def set(self, *, leader: bool) -> None:
        self.want = leader
        self._changed.set()

    def start(self) -> None:
        self._changed.set()
        self._task = asyncio.create_task(self._converge(), name="leader-label")

    async def _apply(self, leader: bool) -> None:
        # Strategic merge patch: null deletes the key, so removal needs no read first.
        body = {"metadata": {"labels": {LEADER_LABEL: "true" if leader else None}}}
        await self._core.patch_namespaced_pod(self.pod, self.namespace, body,
                                              _request_timeout=self._timeout_s)
        self.has = leader
        log.info("leader_label_set" if leader else "leader_label_removed", pod=self.pod)

    async def _converge(self) -> None:
        delay = 1.0
        while True:
            await self._changed.wait()
            self._changed.clear()
            want = self.want
            if want == self.has:
                continue
            try:
                await self._apply(want)
            except (ApiException, OSError, TimeoutError) as exc:
                log.warning("leader_label_failed", pod=self.pod, namespace=self.namespace,
                            leader=want, error=_api_error(exc), retry_in_s=delay)
                # Wake early if leadership flips meanwhile; otherwise retry after the delay.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)
                self._changed.set()
                delay = min(delay * 2, self._max_backoff_s)
                continue
            delay = 1.0

    async def stop(self) -> None:
        """Stop converging and make one last attempt to remove the label (shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.want = False
        if self.has is not False:
            try:
                await self._apply(False)
            except (ApiException, OSError, TimeoutError) as exc:
                # The Pod is going away anyway; a restarted container removes it on start.
                log.warning("leader_label_failed", pod=self.pod, leader=False,
                            error=_api_error(exc))


def _api_error(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return repr(exc)


# --- the controller -----------------------------------------------------------------------


@dataclass(slots=True)
class _PolicyState:
    docs: PolicyDocs = field(default_factory=PolicyDocs)
    current: PolicyFile | None = None
    version: int = 0
    resource_versions: dict[str, str] = field(default_factory=dict)


class Controller:
    """One controller replica. `run()` until cancelled; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        api: ApiClient,
        source: MetricsSource,
        telemetry: telemetry_mod.Telemetry | None = None,
        store: DecisionStore | None = None,
        plugins: Sequence[app_mod.Plugin] = (),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        serve_http: bool = True,
        release_on_exit: bool = True,
    ) -> None:
        self.settings = settings
        self.api = api
        self.telemetry = telemetry or telemetry_mod.DEFAULT
        self.source = source
        self.store = store or DecisionStore()
        self.health = app_mod.Health(stall_after_s=max(60.0, 4 * settings.tick_s))
        self.events = kube.EventRecorder(api, instance=settings.identity,
                                         timeout_s=settings.api_timeout_s)
        self.actuator = kube.KubernetesActuator(api, events=self.events,
                                                timeout_s=settings.api_timeout_s, clock=clock)
        self.state_store = StateStore(api, namespace=settings.namespace,
                                      name=settings.state_configmap,
                                      timeout_s=settings.api_timeout_s)
        self.loop: Loop | None = None
        self.ticks = 0
        self._plugins: tuple[app_mod.Plugin, ...] = tuple(plugins)
        if settings.keda_metrics_api:
            self._plugins += (self._keda_metrics_api,)
        # The adoption servers (docs/adoption.md), started by run() when configured.
        self.external_metrics: em.ExternalMetricsServer | None = None
        self.keda_scaler: keda.KedaScalerServer | None = None
        self.leader_labeler: LeaderLabeler | None = None
        if settings.leader_label and settings.pod_name:
            self.leader_labeler = LeaderLabeler(
                api, pod=settings.pod_name, namespace=settings.pod_namespace or settings.namespace,
                timeout_s=settings.api_timeout_s)
        self._clock = clock
        self._wall = wall
        self._serve_http = serve_http
        # False only in tests that simulate a crash (a killed Pod releases nothing).
        self._release_on_exit = release_on_exit
        self._policy = _PolicyState()
        self._policy_changed = asyncio.Event()
        self._elector: leaderelection.LeaderElection | None = None
        self._lead_task: asyncio.Task[None] | None = None
        self._runner: Any = None
        self.http_port: int | None = None
        self._saved_state: str | None = None

    @property
    def policy(self) -> PolicyFile | None:
        return self._policy.current

    # -- top level ---------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        log.info("controller_start", identity=s.identity, namespace=s.namespace,
                 dry_run=s.dry_run, tick_s=s.tick_s, leader_election=s.leader_election,
                 policy=str(s.policy_file) if s.policy_file else f"configmaps {s.policy_selector}")
        if self._serve_http:
            app = app_mod.create_app(health=self.health, store=self.store,
                                     telemetry=self.telemetry, plugins=self._plugins)
            self._runner = await app_mod.start(app, host=s.http_host, port=s.http_port)
            self.http_port = app_mod.bound_port(self._runner)
        policy_task = asyncio.create_task(self._watch_policy(), name="policy")
        try:
            # Every replica serves (standbys answer "no data"), so a new leader is reachable as
            # soon as its Pod carries the leader label; only the label moves on failover.
            await self._start_servers()
            if self.leader_labeler is not None:
                self.leader_labeler.start()
            if s.leader_election:
                await self._elect_forever()
            else:
                await self._lead()
        finally:
            policy_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await policy_task
            if self._lead_task is not None and self._lead_task is not asyncio.current_task():
                await self._stop_leading_task()
            if self.leader_labeler is not None:
                # Before the lease goes: the leader Services must stop routing here first.
                await self.leader_labeler.stop()
            if self._release_on_exit:
                await self._release_lease()
            await self._stop_servers()
            if self._runner is not None:
                await self._runner.cleanup()
            log.info("controller_stop", identity=s.identity)

    # -- adoption servers --------------------------------------------------------------------

    def _keda_metrics_api(self, app: web.Application, store: DecisionStore) -> None:
        """`keda.metrics_api_plugin` with this controller's staleness limit."""
        from autoscaler.server import external_metrics as em  # noqa: PLC0415
        from autoscaler.server import keda  # noqa: PLC0415

        app.add_routes(keda.metrics_api_routes(em.ControllerStoreView(store),
                                               max_age_s=self.settings.serve_max_age_s))

    async def _start_servers(self) -> None:
        s = self.settings
        if s.external_metrics_port is None and s.keda_grpc_port is None:
            return
        from autoscaler.server import external_metrics as em  # noqa: PLC0415

        view = em.ControllerStoreView(self.store)
        cert = s.external_metrics_cert
        if s.external_metrics_port is not None and cert is not None:
            requestheader = await self._requestheader()
            server = em.ExternalMetricsServer(
                view,
                em.ExternalMetricsSettings(
                    cert_file=cert[0], key_file=cert[1], host=s.http_host,
                    port=s.external_metrics_port, authorize_with_sar=True,
                    options=em.ExternalMetricsOptions(max_age_s=s.serve_max_age_s)),
                api=self.api, requestheader=requestheader)
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
        delay = 1.0
        while True:
            try:
                return await asyncio.wait_for(em.load_requestheader_config(self.api),
                                              self.settings.api_timeout_s)
            except ApiException as exc:
                if exc.status in (401, 403, 404):
                    msg = (f"settings: external_metrics_port: cannot read {where}: "
                           f"{_api_error(exc)} (the overlay binds extension-apiserver-"
                           "authentication-reader in kube-system to the ServiceAccount)")
                    raise errors.ConfigError([msg]) from exc
                error = _api_error(exc)
            except (OSError, TimeoutError) as exc:
                error = repr(exc)
            except ValueError as exc:  # no requestheader CA: the cluster has no aggregator
                raise errors.ConfigError([f"settings: external_metrics_port: {exc}"]) from exc
            log.warning("requestheader_config_failed", configmap=where, error=error,
                        retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _stop_servers(self) -> None:
        if self.keda_scaler is not None:
            await self.keda_scaler.stop()
            self.keda_scaler = None
        if self.external_metrics is not None:
            await self.external_metrics.stop()
            self.external_metrics = None

    # -- leader election ---------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True while the lease is ours and was renewed within the renew deadline."""
        if not self.settings.leader_election:
            return True
        el = self._elector
        if el is None or el.observed_record is None:
            return False
        if el.observed_record.holder_identity != self.settings.identity:
            return False
        age_ms = self._wall() * 1000 - el.observed_time_milliseconds
        return age_ms < self.settings.renew_deadline_s * 1000

    async def _elect_forever(self) -> None:
        s = self.settings
        while True:
            lock = LeaseLock(s.lease_name, s.namespace, s.identity, self.api)
            cfg = electionconfig.Config(
                lock,
                lease_duration=s.lease_duration_s,
                renew_deadline=s.renew_deadline_s,
                retry_period=s.retry_period_s,
                onstarted_leading=self._lead,
                onstopped_leading=self._stopped_leading,
            )
            self._elector = leaderelection.LeaderElection(cfg)
            try:
                await self._elector.run()
            except Exception as exc:  # the elector lets network errors escape
                log.warning("leader_election_error", error=repr(exc))
                self.health.problem = f"leader election: {exc!r}"
            # The elector returned (lease lost) or failed; make sure the leading task is gone
            # before contending again (the library does not cancel it when it raises).
            await self._stop_leading_task()
            await asyncio.sleep(s.retry_period_s)

    async def _stop_leading_task(self) -> None:
        task = self._lead_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_leader(leader=False)

    async def _stopped_leading(self) -> None:
        log.warning("leadership_lost", identity=self.settings.identity)
        await self._stop_leading_task()

    def _set_leader(self, *, leader: bool) -> None:
        self.health.leader = leader
        self.store.leader = leader
        self.telemetry.set_leader(leader=leader)
        if self.leader_labeler is not None:
            self.leader_labeler.set(leader=leader)
        if leader:
            self.health.leading_since = self._clock()
            self.health.last_tick = None
        else:
            self.loop = None
            # A standby serves nothing: its last numbers as leader would go stale unnoticed
            # behind a Service that still (or again) routes to it.
            self.store.clear()

    async def _release_lease(self) -> None:
        """On shutdown, hand the lease over at once (as client-go's ReleaseOnCancel does): an
        empty holder lets the standby acquire on its next retry instead of after the lease
        duration."""
        if not self.settings.leader_election or not self.is_leader():
            return
        s = self.settings
        coord = client.CoordinationV1Api(self.api)
        try:
            await coord.patch_namespaced_lease(
                s.lease_name, s.namespace,
                {"spec": {"holderIdentity": None, "leaseDurationSeconds": 1}},
                _request_timeout=s.api_timeout_s,
            )
        except (ApiException, OSError, TimeoutError) as exc:
            log.warning("lease_release_failed", error=repr(exc))
        else:
            log.info("lease_released", identity=s.identity)
        self._set_leader(leader=False)

    # -- leading: the tick loop --------------------------------------------------------------

    async def _lead(self) -> None:
        self._lead_task = asyncio.current_task()
        self._set_leader(leader=True)
        log.info("leadership_acquired", identity=self.settings.identity)
        try:
            await self._tick_forever()
        finally:
            self._set_leader(leader=False)

    async def _restore_state(self) -> ScaleState:
        delay = 1.0
        while True:
            try:
                state = await self.state_store.load(mono_now=self._clock(), wall_now=self._wall())
            except (ApiException, OSError, TimeoutError) as exc:
                # Starting fresh could undo a recent scale-up; waiting is the safe side.
                log.warning("state_load_failed", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.health.api_reachable = True
            self._saved_state = state.to_json()
            return state

    async def _wait_policy(self) -> PolicyFile:
        while self._policy.current is None:
            self._policy_changed.clear()
            await self._policy_changed.wait()
        return self._policy.current

    async def _tick_forever(self) -> None:
        state = await self._restore_state()
        policy = await self._wait_policy()
        version = self._policy.version
        loop = Loop(policy, self.source, FencedActuator(self.actuator, self.is_leader),
                    state=state, hooks=[self.telemetry.record_decision])
        self.loop = loop
        await self._backfill_forecasts(loop)
        tick_s = self.settings.tick_s
        failures = 0
        next_at = self._clock()
        while True:
            if self._policy.version != version:
                version = self._policy.version
                if self._policy.current is None:
                    # Every policy document was deleted: nothing is ours to scale any more.
                    log.warning("policy_none", action="idle until a policy ConfigMap appears")
                    await self._wait_policy()
                    continue
                self._apply_policy(loop, self._policy.current)
                await self._backfill_forecasts(loop)
            try:
                await self.tick_once(loop)
            except Exception as exc:  # the loop survives; cancellation propagates
                failures += 1
                delay = min(tick_s * 2 ** min(failures, 6), 300.0)
                log.exception("tick_failed", error=repr(exc), failures=failures,
                              retry_in_s=delay)
                await asyncio.sleep(delay)
                next_at = self._clock()
                continue
            failures = 0
            next_at += tick_s
            now = self._clock()
            # Fell behind (a slow API call): skip the missed ticks rather than bursting.
            next_at = max(next_at, now)
            await asyncio.sleep(next_at - now)

    def _apply_policy(self, loop: Loop, policy: PolicyFile) -> None:
        try:
            loop.set_policy(policy)
        except errors.AutoscalerError as exc:
            # A plug-in could not be built from a document that validated; keep the old one.
            log.error("policy_apply_failed", error=str(exc))
            self.telemetry.config_reload(ok=False)
            return
        log.info("policy_applied", pools=[p.name for p in policy.pools], dry_run=policy.dry_run)

    async def _backfill_forecasts(self, loop: Loop) -> None:
        """Refill the history of forecast policies that have none yet (a new leader, or roles a
        reload added) from Prometheus range queries, so a restart keeps the daily shape. Bounded
        by forecast_backfill_timeout_s; a failure only logs (those roles learn live)."""
        from autoscaler.forecast import backfill  # noqa: PLC0415 - only forecast users pay
        from autoscaler.policy.forecast import ForecastPolicy  # noqa: PLC0415

        fetch = range_rates_of(self.source)
        s = self.settings
        if fetch is None or s.forecast_backfill_s <= 0:
            return
        empty = {key: [p for p in ps if isinstance(p, ForecastPolicy)
                       and p.forecaster.history.end_bin is None]
                 for key, ps in loop.policies.items()}
        todo = {key: ps for key, ps in empty.items() if ps}
        if not todo:
            return
        targets = [t for t in loop.targets() if (t.pool, t.role) in todo]
        t0 = self._clock()
        try:
            async with asyncio.timeout(s.forecast_backfill_timeout_s):
                filled = await backfill.backfill(todo, targets, fetch, now=self._clock(),
                                                 wall_now=self._wall(),
                                                 max_history_s=s.forecast_backfill_s)
        except TimeoutError:
            # Roles filled before the deadline keep their history (each load is atomic).
            log.warning("forecast_backfill_timeout", timeout_s=s.forecast_backfill_timeout_s,
                        roles=len(todo))
            return
        except Exception as exc:  # never fatal: the forecast learns live instead
            log.warning("forecast_backfill_failed", error=repr(exc))
            return
        log.info("forecast_backfill_done", policies=len(filled),
                 bins=sum(f.bins for f in filled), failed=sum(1 for f in filled if f.error),
                 seconds=round(self._clock() - t0, 3))

    async def tick_once(self, loop: Loop) -> TickReport:
        """One tick plus its side effects (Events, saved state, store, telemetry)."""
        t0 = self._clock()
        report = await loop.tick(t0)
        self.ticks += 1
        wall = self._wall()
        if len(report.unobserved) < len(loop.policy.pools) or not loop.policy.pools:
            self.health.api_reachable = True
        await self._record_scales(loop, report, wall=wall)
        state_json = loop.state.to_json()
        if state_json != self._saved_state:
            try:
                await self.state_store.save(loop.state, report.decision, mono_now=self._clock(),
                                            wall_now=self._wall(),
                                            identity=self.settings.identity)
            except (ApiException, OSError, TimeoutError) as exc:
                # Next tick retries (the state still differs); scaling goes on meanwhile.
                log.warning("state_save_failed", error=repr(exc))
            else:
                self._saved_state = state_json
        self.store.record(report.decision, loop.policy, snapshot=report.snapshot,
                          applied=report.applied)
        self.health.last_tick = self._clock()
        self.telemetry.observe_tick(self._clock() - t0)
        return report

    async def _record_scales(self, loop: Loop, report: TickReport, *, wall: float) -> None:
        for (pool, role), replicas in report.applied.items():
            rd = report.decision.pools[pool].roles[role]
            ref = loop.policy.pool(pool).roles[role].deployment
            self.state_store.last_scale.setdefault(pool, {})[role.value] = {
                "from": rd.current, "to": replicas, "driver": rd.driver,
                "clipped_by": list(rd.clipped_by), "time": _rfc3339(wall),
            }
            await self.events.record(
                kube.ObjectRef.deployment(ref, self.actuator.uid(ref)),
                reason="ScaledUp" if replicas > rd.current else "ScaledDown",
                message=f"New size: {replicas}; pool {pool} {role.value}: {rd.reason}",
            )

    # -- policy sources ----------------------------------------------------------------------

    def _publish_policy(self, policy: PolicyFile | None) -> None:
        if policy is not None and self.settings.dry_run and not policy.dry_run:
            policy = policy.model_copy(update={"dry_run": True})
        self._policy.current = policy
        self._policy.version += 1
        self.health.policy_loaded = policy is not None
        self._policy_changed.set()

    async def _watch_policy(self) -> None:
        if self.settings.policy_file is not None:
            await self._poll_policy_file(self.settings.policy_file)
        else:
            await self._watch_configmaps()

    async def _poll_policy_file(self, path: Path) -> None:
        seen: tuple[float, int] | None = None
        key = str(path)
        while True:
            try:
                # A stat and a small read: not worth a thread.
                st = path.stat()  # noqa: ASYNC240
                stamp = (st.st_mtime, st.st_size)
            except OSError as exc:
                stamp = None
                self.health.problem = f"{path}: {exc.strerror or exc}"
            if stamp is not None and stamp != seen:
                seen = stamp
                try:
                    text = path.read_text(encoding="utf-8")  # noqa: ASYNC240
                except (OSError, UnicodeDecodeError) as exc:
                    self._reject([f"{path}: cannot read: {exc}"], source=key)
                else:
                    self._offer({key: text}, (), source=key)
            await asyncio.sleep(self.settings.policy_poll_s)

    def _offer(self, updates: Mapping[str, str], removed: Sequence[str], *, source: str
               ) -> list[str]:
        docs, problems = self._policy.docs.propose(updates, removed)
        if problems:
            self._reject(problems, source=source)
        if docs != self._policy.docs.docs or self._policy.current is None:
            self._policy.docs.docs = docs
            merged = self._policy.docs.merged()
            if merged != self._policy.current or merged is None:
                self._publish_policy(merged)
                if merged is not None:
                    self.telemetry.config_reload(ok=True)
                    log.info("policy_loaded", source=source,
                             pools=[p.name for p in merged.pools], dry_run=merged.dry_run)
        return problems

    def _reject(self, problems: Sequence[str], *, source: str) -> None:
        self.health.problem = problems[0] if problems else ""
        self.telemetry.config_reload(ok=False)
        log.error("policy_rejected", source=source, problems=list(problems),
                  kept="last good policy" if self._policy.current is not None else "none")

    async def _watch_configmaps(self) -> None:
        """List + watch labelled ConfigMaps; re-list on 410 Gone or any watch failure."""
        core = client.CoreV1Api(self.api)
        s = self.settings
        delay = 1.0
        while True:
            try:
                listing = await core.list_namespaced_config_map(
                    s.namespace, label_selector=s.policy_selector,
                    _request_timeout=s.api_timeout_s,
                )
                self.health.api_reachable = True
                await self._sync_configmaps(listing.items)
                rv = listing.metadata.resource_version
                delay = 1.0
                w = watch.Watch()
                async with w.stream(core.list_namespaced_config_map, s.namespace,
                                    label_selector=s.policy_selector, resource_version=rv,
                                    timeout_seconds=300) as stream:
                    async for event in stream:
                        kind = event["type"]
                        obj = event["object"]
                        if kind == "ERROR":
                            # A raw Status object: 410 Gone means our resourceVersion is too old.
                            log.info("policy_watch_error", status=getattr(obj, "code", obj))
                            break
                        if kind == "DELETED":
                            await self._drop_configmap(obj.metadata.name)
                        elif kind in ("ADDED", "MODIFIED"):
                            await self._sync_configmap(obj)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("policy_watch_expired")
                    continue
                log.warning("policy_watch_failed", status=exc.status, error=exc.reason,
                            retry_in_s=delay)
                self.health.problem = f"policy ConfigMaps: HTTP {exc.status} {exc.reason}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except (OSError, TimeoutError) as exc:
                log.warning("policy_watch_failed", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    @staticmethod
    def _doc_key(cm_name: str, key: str) -> str:
        return f"configmap/{cm_name}/{key}"

    async def _sync_configmaps(self, items: Sequence[Any]) -> None:
        present = {cm.metadata.name for cm in items}
        for name in {k.split("/")[1] for k in self._policy.docs.docs} - present:
            await self._drop_configmap(name)
        for cm in items:
            await self._sync_configmap(cm)
        if not items and self._policy.current is None:
            self.health.problem = (f"no ConfigMap labelled {self.settings.policy_selector} in "
                                   f"{self.settings.namespace}")

    async def _drop_configmap(self, name: str) -> None:
        prefix = self._doc_key(name, "")
        gone = [k for k in self._policy.docs.docs if k.startswith(prefix)]
        self._policy.resource_versions.pop(name, None)
        if gone:
            log.warning("policy_removed", configmap=name, documents=gone)
            self._offer({}, gone, source=f"configmap/{name}")

    async def _sync_configmap(self, cm: Any) -> None:
        name = cm.metadata.name
        rv = cm.metadata.resource_version
        if self._policy.resource_versions.get(name) == rv:
            return  # a re-list replays objects we have already judged
        self._policy.resource_versions[name] = rv
        data: Mapping[str, str] = cm.data or {}
        prefix = self._doc_key(name, "")
        updates = {self._doc_key(name, k): v for k, v in data.items()
                   if k.endswith(POLICY_SUFFIXES)}
        ignored = sorted(k for k in data if not k.endswith(POLICY_SUFFIXES))
        if ignored:
            log.warning("policy_keys_ignored", configmap=name, keys=ignored,
                        hint=f"policy keys must end in {' or '.join(POLICY_SUFFIXES)}")
        removed = [k for k in self._policy.docs.docs if k.startswith(prefix) and k not in updates]
        problems = self._offer(updates, removed, source=f"configmap/{name}")
        if not self.is_leader():
            return  # only the leader writes, Events included; every replica logs
        ref = kube.ObjectRef("ConfigMap", name, self.settings.namespace, "v1",
                             cm.metadata.uid)
        if problems:
            await self.events.record(
                ref, reason="PolicyRejected", warning=True,
                message="invalid policy, last good policy kept: " + "; ".join(problems),
            )
        else:
            await self.events.record(ref, reason="PolicyApplied",
                                     message=f"policy from {name} validated and applied")


# --- entry point --------------------------------------------------------------------------


def range_rates_of(source: MetricsSource) -> RangeRates | None:
    """The source's range queries for the forecast backfill (PrometheusSource's
    `range_rates`, also behind telemetry's InstrumentedSource); None if it has none."""
    for candidate in (source, getattr(source, "inner", None)):
        fetch = getattr(candidate, "range_rates", None)
        if callable(fetch):
            found: RangeRates = fetch
            return found
    return None


def build_source(settings: Settings, telemetry: telemetry_mod.Telemetry) -> MetricsSource:
    if not settings.prometheus_url:
        msg = ("settings: prometheus_url: required (--prometheus-url or "
               f"{ENV_PREFIX}PROMETHEUS_URL)")
        raise errors.ConfigError([msg])
    from autoscaler.metrics import prometheus  # noqa: PLC0415 - only `run` pays for it

    source = prometheus.PrometheusSource(
        prometheus.PrometheusSettings(
            url=settings.prometheus_url,
            bearer_token_file=settings.prometheus_token_file,
            ca_file=settings.prometheus_ca_file,
        ),
        telemetry=telemetry,
    )
    return telemetry_mod.InstrumentedSource(source, telemetry)


async def _amain(settings: Settings) -> int:
    telemetry = telemetry_mod.DEFAULT
    source = build_source(settings, telemetry)
    api = await kube.make_api_client(settings.kubeconfig)
    async with api:
        controller = Controller(settings, api=api, source=source, telemetry=telemetry)
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Cancellation runs the finally blocks: the lease is released, HTTP stops.
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await controller.run()
    return 0


def main(args: argparse.Namespace) -> int:
    """`pd-autoscaler run`: returns the exit code (ConfigError -> 2 via cli.main)."""
    settings = settings_from(args, os.environ)
    return asyncio.run(_amain(settings))
