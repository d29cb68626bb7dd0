"""Leadership: the coordination.k8s.io Lease (the leader-only route is endpoint.py).

Only the leader writes: the tick loop runs as the elector's leading task (cancelled when the
lease is lost), and every scale passes a fence (`actuator/fenced.py`) that asks `Lease.held()`,
which re-checks the lease was renewed within the renew deadline. Not the controller's own
writes to the Lease either: the elector replaces it every retry period from its cached copy, so
a second writer there would make renewals fail with 409s (`release()` runs after the elector
stopped).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from autoscaler.controller.settings import Settings

log = structlog.get_logger(__name__)


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
