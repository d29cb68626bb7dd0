"""Leadership: the coordination.k8s.io Lease, and the leader label on this replica's Pod.

Only the leader writes: the tick loop runs as the elector's leading task (cancelled when the
lease is lost), and every scale passes a fence (`actuator/fenced.py`) that asks `Lease.held()`,
which re-checks the lease was renewed within the renew deadline. Not the controller's own
writes to the Lease either: the elector replaces it every retry period from its cached copy, so
a second writer there would make renewals fail with 409s (`release()` runs after the elector
stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from autoscaler.controller import backoff
from autoscaler.controller.settings import Settings

log = structlog.get_logger(__name__)

LEADER_LABEL = "pd-autoscaler.io/leader"


def api_error(exc: BaseException) -> str:
    """An API failure in one short phrase for logs and Events."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return repr(exc)


class LeaseLike(Protocol):
    """What the controller needs of the lease (`Lease`; tests: `testing.FakeLease`)."""

    def held(self) -> bool: ...

    async def contend(self, *, on_started: Callable[[], Coroutine[Any, Any, None]],
                      on_stopped: Callable[[], Coroutine[Any, Any, None]]) -> None: ...

    async def release(self) -> None: ...


class Lease:
    """This replica's view of the Lease: contend for it one elector round at a time, tell
    whether it is held right now, hand it over on shutdown."""

    def __init__(self, settings: Settings, api: ApiClient, *, wall: Callable[[], float]) -> None:
        self.settings = settings
        self._api = api
        self._wall = wall
        self._elector: leaderelection.LeaderElection | None = None

    def held(self) -> bool:
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

    async def contend(self, *, on_started: Callable[[], Coroutine[Any, Any, None]],
                      on_stopped: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """One elector round: returns when the lease was lost (or raises on network errors)."""
        s = self.settings
        lock = LeaseLock(s.lease_name, s.namespace, s.identity, self._api)
        cfg = electionconfig.Config(
            lock,
            lease_duration=s.lease_duration_s,
            renew_deadline=s.renew_deadline_s,
            retry_period=s.retry_period_s,
            onstarted_leading=on_started,
            onstopped_leading=on_stopped,
        )
        self._elector = leaderelection.LeaderElection(cfg)
        await self._elector.run()

    async def release(self) -> None:
        """On shutdown, hand the lease over at once (as client-go's ReleaseOnCancel does): an
        empty holder lets the standby acquire on its next retry instead of after the lease
        duration."""
        s = self.settings
        # Not ours any more from here on, whatever the PATCH's fate: the fence closes now.
        self._elector = None
        coord = client.CoordinationV1Api(self._api)
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

    def __init__(self, core: client.CoreV1Api, *, pod: str, namespace: str, timeout_s: float,
                 max_backoff_s: float = 30.0) -> None:
        self._core = core
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

    def start(self, report: backoff.Report | None = None) -> None:
        """Converge in the background, under `backoff.supervise` (`report` gets its state)."""
        self._changed.set()
        self._task = asyncio.create_task(
            backoff.supervise("leader-label", self._converge,
                              report=report or (lambda _name, _why: None)),
            name="leader-label")

    async def _apply(self, leader: bool) -> None:
        # Strategic merge patch: null deletes the key, so removal needs no read first.
        body = {"metadata": {"labels": {LEADER_LABEL: "true" if leader else None}}}
        await self._core.patch_namespaced_pod(self.pod, self.namespace, body,
                                              _request_timeout=self._timeout_s)
        self.has = leader
        log.info("leader_label_set" if leader else "leader_label_removed", pod=self.pod)

    async def _converge(self) -> None:
        delays = backoff.Delays(max_s=self._max_backoff_s)
        while True:
            await self._changed.wait()
            self._changed.clear()
            want = self.want
            if want == self.has:
                continue
            try:
                await self._apply(want)
            except Exception as exc:  # a dropped PATCH (ServerDisconnectedError) too
                delay = delays.next()
                log.warning("leader_label_failed", pod=self.pod, namespace=self.namespace,
                            leader=want, error=api_error(exc), retry_in_s=delay)
                # Wake early if leadership flips meanwhile; otherwise retry after the delay.
                await backoff.sleep(delay, wake=self._changed)
                self._changed.set()
                continue
            delays.reset()

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
            except Exception as exc:  # best effort on the way out
                # The Pod is going away anyway; a restarted container removes it on start.
                log.warning("leader_label_failed", pod=self.pod, leader=False,
                            error=api_error(exc))
