"""The leader-only route: one named EndpointSlice that points at the leader's Pod IP.

Why an EndpointSlice and not a label on the leader's Pod: only the leader ticks, so only it has
numbers, and the adoption overlays' Services (external metrics, KEDA) must reach it alone. A
label needs `patch pods`, which RBAC cannot narrow to the controller's own Pod (its name is not
known when the Role is written), and `patch pods` also lets a holder change any Pod's image in
the namespace. Here the Service has no selector; the manifests ship its one EndpointSlice
(`kubernetes.io/service-name` label, `endpoints: []`) and the Role grants get/patch/update on
that slice by name only. Each replica knows its address from the downward API (`POD_IP`).

The leader writes `[its address]`; a replica that stops leading removes its own address, and
only its own: every write carries the resourceVersion it read (a compare-and-swap), so a
deposed leader cannot erase the address a new leader wrote in between; a conflict re-reads and
re-decides. A new leader overwrites whatever is there. The work runs in one background task
(`set()` never blocks the elector's callbacks) under `backoff.supervise`: a failed call
(a dropped connection, an API error) is logged, counted and retried with backoff, the task
reports itself in /readyz after `report_after` failures in a row, and while leading it re-reads
the slice every `reassert_s` and repairs it (a re-applied manifest, a hand edit, a write lost
to a timeout that did reach the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.actuator.kubernetes import ApiErrorHook, api_error_code
from autoscaler.controller import backoff
from autoscaler.controller.leader import api_error

log = structlog.get_logger(__name__)

TASK = "leader-endpoint"
MERGE_PATCH = "application/merge-patch+json"

class EndpointConflict(RuntimeError):
    """The slice changed under every one of our compare-and-swap attempts."""


class LeaderEndpoint:
    """Keeps the EndpointSlice `name` pointing at `address` exactly while this replica leads."""

    def __init__(self, discovery: client.DiscoveryV1Api, *, name: str, namespace: str,
                 address: str, pod_name: str | None = None, pod_namespace: str | None = None,
                 timeout_s: float, reassert_s: float = 30.0, max_backoff_s: float = 30.0,
                 report_after: int = 3, on_api_error: ApiErrorHook | None = None,
                 fence: Callable[[], bool] | None = None) -> None:
        self._discovery = discovery
        self.name = name
        self.namespace = namespace
        self.address = address
        self._version = ipaddress.ip_address(address).version  # ValueError: not an IP
        self._pod = pod_name
        self._pod_namespace = pod_namespace or namespace
        self._timeout_s = timeout_s
        self.reassert_s = reassert_s
        self._max_backoff_s = max_backoff_s
        self._report_after = report_after
        self._on_api_error = on_api_error or (lambda _op, _code: None)
        # Asked immediately before writing our address: a leader whose renewals hang (the
        # Lease no longer held, the elector not yet told) must not take the slice back from
        # the new leader at its next re-assertion.
        self._fence = fence
        self.want = False
        self.has: bool | None = None  # unknown until the first successful read
        self.writes = 0
        self.failures = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._report: backoff.Report = lambda _name, _why: None
        # A JSON merge patch: `endpoints` is replaced whole, and the resourceVersion we read is
        # a precondition (409 Conflict if the slice changed since).
        self._patch_kw: dict[str, Any] = {"_content_type": MERGE_PATCH,
                                          "_request_timeout": timeout_s}

    def set(self, *, leader: bool) -> None:
        """The wanted state; the background task converges to the latest one."""
        self.want = leader
        self._changed.set()

    def start(self, report: backoff.Report | None = None) -> None:
        """Converge in the background, under `backoff.supervise` (`report` gets its state)."""
        self._report = report or (lambda _name, _why: None)
        self._changed.set()
        self._task = asyncio.create_task(
            backoff.supervise(TASK, self._converge, report=self._report), name=TASK)

    async def stop(self, *, relinquish: bool = True) -> None:
        """Stop converging; with `relinquish`, one last attempt to remove our address (a clean
        shutdown; a killed Pod removes nothing and the next leader overwrites it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.want = False
        if relinquish and self.has is not False:
            try:
                await self._sync(leader=False)
            except Exception as exc:  # best effort on the way out
                log.warning("leader_endpoint_failed", endpointslice=self.name, leader=False,
                            error=api_error(exc))

    # -- the background task -----------------------------------------------------------------

    async def _converge(self) -> None:
        delays = backoff.Delays(max_s=self._max_backoff_s)
        failures = 0
        while True:
            self._changed.clear()
            want = self.want
            try:
                # A standby that knows the slice is not its own has nothing to check.
                if want or self.has is not False:
                    await self._sync(leader=want)
            except Exception as exc:  # a dropped PATCH (ServerDisconnectedError) too
                failures += 1
                self.failures += 1
                delay = delays.next()
                why = f"{api_error(exc)}"[:300]
                log.warning("leader_endpoint_failed", endpointslice=self.name,
                            namespace=self.namespace, leader=want, error=why,
                            failures=failures, retry_in_s=delay)
                if failures >= self._report_after:
                    self._report(TASK, f"endpointslice {self.namespace}/{self.name}: {why} "
                                       f"({failures} failures in a row)")
                # Wake early if leadership flips meanwhile; otherwise retry after the delay.
                await backoff.sleep(delay, wake=self._changed)
                continue
            if failures >= self._report_after:
                log.info("leader_endpoint_recovered", endpointslice=self.name,
                         after_failures=failures)
                self._report(TASK, None)
            failures = 0
            delays.reset()
            # Re-assert while leading: the slice may be reset by a re-applied manifest.
            await backoff.sleep(self.reassert_s, wake=self._changed)

    async def _sync(self, *, leader: bool) -> None:
        """Read the slice and, if it is not as wanted, compare-and-swap it; a conflict (someone
        wrote in between) re-reads and re-decides, a few times."""
        for _ in range(3):
            obj = await self._call("read_endpointslice",
                                   self._discovery.read_namespaced_endpoint_slice(
                                       self.name, self.namespace,
                                       _request_timeout=self._timeout_s))
            self._check_family(obj)
            endpoints = list(obj.endpoints or [])
            mine = [e for e in endpoints if self.address in (e.addresses or [])]
            if leader:
                if len(endpoints) == 1 and mine and _ready(mine[0]) \
                        and list(mine[0].addresses) == [self.address]:
                    self.has = True
                    return
                if self._fence is not None and not self._fence():
                    log.warning("leader_endpoint_fenced", endpointslice=self.name,
                                action="not writing: the Lease is not held right now")
                    return
                new = [self._endpoint()]
            else:
                if not mine:
                    self.has = False
                    return
                # Remove our address only: anything else there is not ours to judge.
                new = [_plain(e) for e in endpoints if e not in mine]
            body = {"metadata": {"resourceVersion": obj.metadata.resource_version},
                    "endpoints": new}
            try:
                await self._call("patch_endpointslice",
                                 self._discovery.patch_namespaced_endpoint_slice(
                                     self.name, self.namespace, body,
                                     **self._patch_kw))
            except ApiException as exc:
                if exc.status == 409:  # changed since our read: read again, decide again
                    log.info("leader_endpoint_conflict", endpointslice=self.name,
                             leader=leader)
                    continue
                raise
            self.has = leader
            self.writes += 1
            log.info("leader_endpoint_set" if leader else "leader_endpoint_cleared",
                     endpointslice=self.name, address=self.address)
            return
        msg = (f"endpointslice {self.namespace}/{self.name} changed under each of 3 "
               "compare-and-swap attempts")
        raise EndpointConflict(msg)

    async def _call(self, operation: str, call: Any) -> Any:
        try:
            return await call
        except Exception as exc:
            self._on_api_error(operation, api_error_code(exc))
            raise

    def _check_family(self, obj: Any) -> None:
        kind = obj.address_type
        if kind != f"IPv{self._version}":
            msg = (f"endpointslice {self.namespace}/{self.name} has addressType {kind}, but "
                   f"POD_IP {self.address} is IPv{self._version} (set the manifest's "
                   f"addressType to IPv{self._version})")
            raise ValueError(msg)

    def _endpoint(self) -> dict[str, Any]:
        ep: dict[str, Any] = {"addresses": [self.address],
                              "conditions": {"ready": True, "serving": True,
                                             "terminating": False}}
        if self._pod:
            # For people (`kubectl get endpointslice -o wide`): which Pod leads.
            ep["targetRef"] = {"kind": "Pod", "name": self._pod,
                               "namespace": self._pod_namespace}
        return ep


def _ready(ep: Any) -> bool:
    cond = ep.conditions
    return cond is None or cond.ready is None or bool(cond.ready)


def _plain(ep: Any) -> dict[str, Any]:
    """An endpoint read back as a patch body (the fields an endpoint of this slice can have)."""
    out: dict[str, Any] = {"addresses": list(ep.addresses or [])}
    if ep.conditions is not None:
        out["conditions"] = {k: v for k, v in (("ready", ep.conditions.ready),
                                               ("serving", ep.conditions.serving),
                                               ("terminating", ep.conditions.terminating))
                             if v is not None}
    ref = ep.target_ref
    if ref is not None:
        out["targetRef"] = {k: v for k, v in (("kind", ref.kind), ("name", ref.name),
                                              ("namespace", ref.namespace), ("uid", ref.uid))
                            if v is not None}
    for key, attr in (("nodeName", "node_name"), ("zone", "zone"), ("hostname", "hostname")):
        value = getattr(ep, attr, None)
        if value is not None:
            out[key] = value
    return out
