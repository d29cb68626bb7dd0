"""The Kubernetes actuator: reads Deployments, writes replicas through the scale subresource.

This module and `controller/` are the only places that talk to the API server. Every
`ApiException` is mapped here onto our own errors (`raise ... from exc`), so the loop above
reacts to meanings, not HTTP codes:

- 404 -> `TargetNotFound`: the pool is skipped this tick, the others are served; one Warning
  Event is attempted per disappearance (on the missing Deployment's name, so `kubectl get
  events` in its namespace shows it), not one per tick.
- 403 -> `Forbidden`, naming verb, resource and namespace: an RBAC gap is a one-line fix.
- a scale whose Deployment no longer has the replicas this actuator read for the decision (an
  operator's `kubectl scale`, another controller, between our `status()` and our write) is not
  written: `ActuationConflict`, and the next tick decides on the new number. Without this
  precondition the controller read 4, an operator set 10, and the controller patched 3.
- the write itself is a compare-and-swap on `spec.replicas` (a JSON patch whose `test` op
  carries the replicas just read): a writer slipping in between our read and our PATCH fails
  the test (422) or conflicts (409) -> `ActuationConflict`, nothing written.
- `fence` (optional): checked immediately before every PATCH, the retry included; when it
  returns False nothing is written and `ActuationError` says why (a replica that lost the lease
  while its first PATCH was in flight must not send the retry).
- timeouts, connection errors, 5xx, 429 -> `ActuationUnavailable` and an exponential backoff
  *for that Deployment only*: while it lasts, calls for it fail fast without touching the API,
  so one sick target cannot slow the tick for the others.

Reading: from a `DeploymentReader` when one is given and its view of the Deployment's namespace
is synced (the controller's watch cache, `controller/cluster_cache.py`: no request per tick);
otherwise one GET of the Deployment per role and tick. The Deployment object carries the same
`spec.replicas` as its scale subresource plus the status (ready/updated/unavailable replicas)
and the annotations (`pd-autoscaler.io/paused`), so a separate scale read would be redundant.

Pending replicas are counted as `spec.replicas - status.readyReplicas` (never negative), not by
listing Pods: every replica requested but not serving is capacity on the way, whatever the
reason (unschedulable because the GPUs are full, image pull, model load). That is exactly what
the core needs to stop stock signals (a growing queue) from cascading scale-ups during a cold
start, it costs no Pod list per tick (cheap at scale, and no `pods list` permission), and it
follows the Deployment controller's own accounting. The trade-off: a crash-looping replica
also counts as pending; flow signals (batched tokens, KV cache) still scale up past it.

Writing: a JSON patch of `spec.replicas` on `deployments/scale` (`test` the replicas just read,
then `replace`), never an update of the Deployment. The precondition is on the replicas, not on
the resourceVersion: every status update (a pod turning ready, the Deployment controller
reconciling a scale) moves the resourceVersion, and a resourceVersion precondition conflicted
twice in a row on a Deployment that was still rolling out its last scale (measured on the real
control plane under load). RBAC can then
grant `deployments/scale patch` on named Deployments and nothing that could change a spec.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler.actuator.base import EventSink, ObjectRef, WorkloadStatus
from autoscaler.spec import DeploymentRef

log = structlog.get_logger(__name__)

PAUSED_ANNOTATION = "pd-autoscaler.io/paused"
COMPONENT = "pd-autoscaler"

# Errors a retry can cure: the API server is slow, restarting, or shedding load.
_TRANSIENT_CODES = frozenset({429, 500, 502, 503, 504})
_NETWORK_ERRORS = (asyncio.TimeoutError, aiohttp.ClientError, OSError)


ApiErrorHook = Callable[[str, "int | str"], None]
"""`on_api_error(operation, code)`: one failed Kubernetes API call, for telemetry
(`Telemetry.kubernetes_api_error`; this layer cannot import it)."""


def api_error_code(exc: BaseException) -> int | str:
    """The `code` of a failed API call: the HTTP status, or the exception's type for a call
    that got no answer (a dropped connection, a timeout)."""
    if isinstance(exc, ApiException) and exc.status:
        return int(exc.status)
    return type(exc).__name__


async def make_api_client(kubeconfig: Path | None = None) -> ApiClient:
    """An ApiClient from `kubeconfig` (or $KUBECONFIG / ~/.kube/config), else in-cluster config.

    An explicit kubeconfig wins; without one, in-cluster config is tried first because a Pod
    has no kubeconfig, and a developer's machine has no service-account token.
    """
    cfg = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            pass
        else:
            return ApiClient(configuration=cfg)
    path = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG")
    try:
        await config.load_kube_config(config_file=path, client_configuration=cfg)
    except (config.ConfigException, OSError) as exc:
        raise errors.ConfigError(
            [f"kubeconfig: {path or '~/.kube/config'}: cannot load: {exc}"]
        ) from exc
    return ApiClient(configuration=cfg)


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """What the controller needs of one Deployment, kept by the watch cache instead of the
    whole object (a V1Deployment model is ~100 attributes deep; this is five)."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    status: WorkloadStatus


def record_of(obj: Mapping[str, Any]) -> DeploymentRecord:
    """A DeploymentRecord from a Deployment as the API server sends it (JSON, camelCase)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    st = obj.get("status") or {}
    replicas = spec.get("replicas")
    return DeploymentRecord(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        status=_status(int(replicas if replicas is not None else 1),
                       int(st.get("readyReplicas") or 0), meta.get("annotations") or {}),
    )


class DeploymentReader(Protocol):
    """A read-side view of the target Deployments (the watch cache)."""

    def lookup(self, ref: DeploymentRef) -> tuple[bool, DeploymentRecord | None]:
        """(synced, record): `synced` False when the view of `ref`'s namespace cannot be trusted
        (not listed yet, or its watch is failing): the caller then reads the API server. When
        synced, a None record means the Deployment does not exist."""
        ...


class EventRecorder:
    """Best-effort core/v1 Events: a failure is logged, never raised (Events are for humans;
    losing one must not stop a scale)."""

    def __init__(self, api: ApiClient, *, instance: str, timeout_s: float = 5.0,
                 on_api_error: ApiErrorHook | None = None) -> None:
        self._core = client.CoreV1Api(api)
        self._instance = instance
        self._timeout_s = timeout_s
        self._on_api_error = on_api_error or (lambda _op, _code: None)

    async def record(self, obj: ObjectRef, *, reason: str, message: str, warning: bool = False
                     ) -> bool:
        now = dt.datetime.now(dt.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{obj.name}.{time.time_ns():x}{secrets.token_hex(2)}",
                namespace=obj.namespace,
            ),
            involved_object=client.V1ObjectReference(
                api_version=obj.api_version, kind=obj.kind, name=obj.name,
                namespace=obj.namespace, uid=obj.uid,
            ),
            reason=reason,
            # The API server rejects messages over 1 KiB in events.k8s.io; stay well under.
            message=message[:1000],
            type="Warning" if warning else "Normal",
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=self._instance,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self._core.create_namespaced_event(
                obj.namespace, body, _request_timeout=self._timeout_s
            )
        except ApiException as exc:
            self._on_api_error("create_event", api_error_code(exc))
            log.warning("event_failed", reason=reason, object=f"{obj.kind}/{obj.name}",
                        namespace=obj.namespace, status=exc.status, error=exc.reason)
            return False
        except _NETWORK_ERRORS as exc:
            self._on_api_error("create_event", api_error_code(exc))
            log.warning("event_failed", reason=reason, object=f"{obj.kind}/{obj.name}",
                        namespace=obj.namespace, error=repr(exc))
            return False
        return True


@dataclass(slots=True)
class _Backoff:
    delay_s: float
    until: float
    error: str


class KubernetesActuator:
    """The `Actuator` protocol on a real cluster (see the module docstring for the semantics)."""

    def __init__(
        self,
        api: ApiClient,
        *,
        apps: client.AppsV1Api | None = None,
        events: EventSink | None = None,
        timeout_s: float = 10.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        fence: Callable[[DeploymentRef], bool] | None = None,
        on_api_error: ApiErrorHook | None = None,
        reader: DeploymentReader | None = None,
    ) -> None:
        # `apps`: a stand-in for the generated client in unit tests; by default built on `api`.
        self._apps = apps if apps is not None else client.AppsV1Api(api)
        self._fence = fence
        self._on_api_error = on_api_error or (lambda _op, _code: None)
        self._reader = reader
        # Keys whose last status() came from the reader: their write skips the scale GET.
        self._from_reader: set[tuple[str, str]] = set()
        # spec.replicas as last read by status(): what the decision was made on.
        self._observed: dict[tuple[str, str], int] = {}
        self._events = events
        self._timeout_s = timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._backoff: dict[tuple[str, str], _Backoff] = {}
        self._missing: set[tuple[str, str]] = set()
        self._uids: dict[tuple[str, str], str] = {}

    # -- the Actuator protocol ----------------------------------------------------------------

    async def status(self, ref: DeploymentRef) -> WorkloadStatus:
        key = (ref.namespace, ref.name)
        if self._reader is not None:
            synced, rec = self._reader.lookup(ref)
            if synced:
                return await self._status_from(ref, rec)
        self._from_reader.discard(key)
        self._check_backoff(key)
        try:
            dep = await self._apps.read_namespaced_deployment(
                ref.name, ref.namespace, _request_timeout=self._timeout_s
            )
        except (ApiException, *_NETWORK_ERRORS) as exc:
            self._on_api_error("get_deployment", api_error_code(exc))
            mapped = self._map(exc, key, verb="get", resource="deployments", name=ref.name)
            if isinstance(mapped, errors.TargetNotFound):
                await self._report_missing(ref)
            raise mapped from exc
        self._found(key)
        self._uids[key] = dep.metadata.uid
        status = status_of(dep)
        self._observed[key] = status.replicas
        return status

    async def _status_from(self, ref: DeploymentRef, rec: DeploymentRecord | None
                           ) -> WorkloadStatus:
        key = (ref.namespace, ref.name)
        if rec is None:
            await self._report_missing(ref)
            msg = f"deployments/{ref.name} not found in namespace {ref.namespace} (watch cache)"
            raise errors.TargetNotFound(msg)
        self._found(key)
        self._uids[key] = rec.uid
        self._observed[key] = rec.status.replicas
        self._from_reader.add(key)
        return rec.status

    async def scale(self, ref: DeploymentRef, replicas: int, *, reason: str) -> None:
        key = (ref.namespace, ref.name)
        self._check_backoff(key)
        operation = "get_scale"
        try:
            if key in self._from_reader and key in self._observed:
                # The decision was made on the watch cache's replicas, and those are what the
                # `test` op below compares against on the API server itself. A stale cache (an
                # operator's `kubectl scale` whose watch event has not arrived yet) therefore
                # cannot cause a wrong write: the test fails (422), nothing is written, and the
                # next tick decides on the new number. No scale GET is needed for that.
                expected: int | None = self._observed[key]
            else:
                current = await self._apps.read_namespaced_deployment_scale(
                    ref.name, ref.namespace, _request_timeout=self._timeout_s
                )
                self._check_unchanged(key, ref, current, replicas)
                expected = current.spec.replicas if current.spec is not None else None
            operation = "patch_scale"
            self._check_fence(ref, replicas)
            await self._apps.patch_namespaced_deployment_scale(
                ref.name,
                ref.namespace,
                # A compare-and-swap on the one field we own: if another writer changed the
                # replicas since this read, the `test` op fails and nothing is written.
                [
                    {"op": "test", "path": "/spec/replicas", "value": expected},
                    {"op": "replace", "path": "/spec/replicas", "value": replicas},
                ],
                _request_timeout=self._timeout_s,
            )
        except ApiException as exc:
            self._on_api_error(operation, api_error_code(exc))
            if exc.status in (409, 422):
                msg = (f"deployments/{ref.name} in {ref.namespace}: replicas changed between "
                       f"the read and the write (HTTP {exc.status}); not writing {replicas}, "
                       "the next tick re-decides")
                raise errors.ActuationConflict(msg) from exc
            raise self._map(exc, key, verb="patch", resource="deployments/scale",
                            name=ref.name) from exc
        except _NETWORK_ERRORS as exc:
            self._on_api_error(operation, api_error_code(exc))
            raise self._map(exc, key, verb="patch", resource="deployments/scale",
                            name=ref.name) from exc
        self._found(key)
        self._observed[key] = replicas
        log.info("scaled", namespace=ref.namespace, name=ref.name, replicas=replicas,
                 reason=reason)

    def _check_unchanged(self, key: tuple[str, str], ref: DeploymentRef, current: Any,
                         replicas: int) -> None:
        """Refuse to write over replicas someone else set since the decision's read."""
        observed = self._observed.get(key)
        now = current.spec.replicas if current.spec is not None else None
        if observed is None or now is None or now == observed:
            return
        self._observed[key] = int(now)
        log.warning("scale_precondition_failed", namespace=ref.namespace, name=ref.name,
                    decided_on=observed, found=now, wanted=replicas)
        msg = (f"deployments/{ref.name} in {ref.namespace}: replicas changed from {observed} to "
               f"{now} since they were read; not writing {replicas}, the next tick re-decides")
        raise errors.ActuationConflict(msg)

    def _check_fence(self, ref: DeploymentRef, replicas: int) -> None:
        if self._fence is not None and not self._fence(ref):
            msg = (f"deployments/{ref.name} in {ref.namespace}: fence closed (no longer the "
                   f"leader); not writing {replicas}")
            raise errors.ActuationError(msg)

    def uid(self, ref: DeploymentRef) -> str | None:
        """The Deployment's uid from the last read (for Events that point at this object)."""
        return self._uids.get((ref.namespace, ref.name))

    # -- error mapping and backoff ------------------------------------------------------------

    def _check_backoff(self, key: tuple[str, str]) -> None:
        b = self._backoff.get(key)
        if b is not None and self._clock() < b.until:
            left = b.until - self._clock()
            msg = (f"deployments/{key[1]} in {key[0]}: backing off for {left:.1f}s after: "
                   f"{b.error}")
            raise errors.ActuationUnavailable(msg)

    def _map(self, exc: BaseException, key: tuple[str, str], *, verb: str, resource: str,
             name: str) -> errors.ActuationError:
        ns = key[0]
        status = exc.status if isinstance(exc, ApiException) else None
        if status == 404:
            return errors.TargetNotFound(f"{resource}/{name} not found in namespace {ns}")
        if status == 403:
            return errors.Forbidden(verb=verb, resource=resource, namespace=ns, name=name)
        if status is None or status in _TRANSIENT_CODES:
            what = f"HTTP {status} {getattr(exc, 'reason', '')}" if status else repr(exc)
            prev = self._backoff.get(key)
            delay = (self._backoff_initial_s if prev is None
                     else min(prev.delay_s * 2, self._backoff_max_s))
            self._backoff[key] = _Backoff(delay, self._clock() + delay, what)
            log.warning("api_backoff", namespace=ns, name=name, verb=verb, resource=resource,
                        error=what, retry_in_s=delay)
            return errors.ActuationUnavailable(f"{verb} {resource}/{name} in {ns}: {what}")
        return errors.ActuationError(
            f"{verb} {resource}/{name} in {ns}: HTTP {status} {getattr(exc, 'reason', '')}"
        )

    def _found(self, key: tuple[str, str]) -> None:
        self._backoff.pop(key, None)
        self._missing.discard(key)

    async def _report_missing(self, ref: DeploymentRef) -> None:
        key = (ref.namespace, ref.name)
        if key in self._missing:
            return
        self._missing.add(key)
        log.warning("target_not_found", namespace=ref.namespace, name=ref.name)
        if self._events is not None:
            await self._events.record(
                ObjectRef.deployment(ref), reason="TargetNotFound", warning=True,
                message=(f"pd-autoscaler cannot find Deployment {ref.name}; its pool is "
                         "skipped until it exists again"),
            )


def status_of(dep: Any) -> WorkloadStatus:
    """A WorkloadStatus from a V1Deployment (see the module docstring on pending)."""
    spec_replicas = int(dep.spec.replicas if dep.spec.replicas is not None else 1)
    st = dep.status
    ready = int((st.ready_replicas if st is not None else None) or 0)
    return _status(spec_replicas, ready, dep.metadata.annotations or {})


def _status(spec_replicas: int, ready: int, annotations: Mapping[str, str]) -> WorkloadStatus:
    return WorkloadStatus(
        replicas=spec_replicas,
        # During a rollout or a scale-down, ready pods can briefly exceed spec; the core wants
        # the serving replicas that will stay.
        ready=min(ready, spec_replicas),
        pending=max(0, spec_replicas - ready),
        paused=annotations.get(PAUSED_ANNOTATION, "").strip().lower() == "true",
    )
