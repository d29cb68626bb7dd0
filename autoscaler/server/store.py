"""The latest decision and what it was based on, shared with in-process servers: the one store.

The controller's tick writes here (`record`, with the snapshot it decided on); a `Loop` hook
writes here in the simulator and tests (`store(decision, policy)`, or `update` with samples).
Servers in the same process read: the health endpoints, the external-metrics API and the KEDA
scaler. Nothing here does I/O, readers never block the writer, and it is thread-safe (a server
may run its own event loop in another thread).

How a server plugs in (the contract for `autoscaler/server/*`):

    store = DecisionStore()                       # built by the controller, one per process
    latest = store.latest                         # None until the first tick
    latest.decision.pools["llama-8b"].roles[Role.PREFILL].desired
    latest.samples("llama-8b", Role.PREFILL)      # {"queue_depth": SignalSample, ...}
    store.desired("llama-8b", Role.DECODE)        # int | None
    snap = store.snapshot()                       # the same decision as metric points (cached)
    latest = await store.wait_newer(seq)          # push-style servers (KEDA external-push)
    snap = await store.wait_for_update(version, timeout_s)

and, to serve HTTP next to /healthz and /metrics, pass a plug-in to `server.app.create_app`:

    def register(app: web.Application, store: DecisionStore) -> None:
        app.router.add_get("/apis/...", handler)   # read store.latest in the handler

`Latest.leader` says whether this process was the leader when the decision was made. A standby
records nothing, and the controller `clear()`s the store when it stops leading: a former leader
must not go on serving its last numbers (an HPA or KEDA would keep following a decision nobody
updates). So on a standby `store.latest` is None and the servers answer "no data" (an empty
metric list, gRPC UNAVAILABLE, HTTP 503), never an old number.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autoscaler.server.points import MetricPoint, points_from_decision

if TYPE_CHECKING:
    from autoscaler.spec import PolicyFile
    from autoscaler.types import Decision, Role, SignalSample, Snapshot

Samples = Mapping[tuple[str, "Role"], Mapping[str, "SignalSample"]]


@dataclass(frozen=True, slots=True)
class Latest:
    """One tick's outcome, immutable: readers may keep it as long as they like."""

    seq: int
    """Increases by one per recorded tick (for `wait_newer`)."""
    decision: Decision
    snapshot: Snapshot | None
    """What the core saw: replicas and signal samples per pool and role (None from hooks that
    only get the decision, e.g. the simulator's)."""
    policy: PolicyFile
    wall_time: float
    """time.time() when recorded (for RFC 3339 timestamps in API answers)."""
    mono_time: float = 0.0
    """time.monotonic() when recorded (for staleness)."""
    applied: Mapping[tuple[str, Role], int] = field(default_factory=dict)
    """Replica counts written to Deployments this tick (empty in dry-run)."""
    leader: bool = True
    signal_samples: Samples = field(default_factory=dict)
    """Samples per (pool, role): the snapshot's, or those given to `update`."""

    def samples(self, pool: str, role: Role) -> Mapping[str, SignalSample]:
        return self.signal_samples.get((pool, role), {})


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """The latest decision as metric points; immutable so readers need no lock."""

    version: int
    """The `Latest.seq` it was made from."""
    points: tuple[MetricPoint, ...]
    updated_wall: float  # time.time() of the update, for the API's timestamps
    updated_mono: float  # time.monotonic() of the update, for staleness
    decision: Decision
    policy: PolicyFile


def _samples_of(snapshot: Snapshot | None) -> dict[tuple[str, Role], Mapping[str, SignalSample]]:
    if snapshot is None:
        return {}
    return {(pool, role): ro.signals
            for pool, obs in snapshot.pools.items() for role, ro in obs.roles.items()}


class DecisionStore:
    """Holds the latest `Latest`; see the module docstring for the reader API."""

    def __init__(
        self,
        *,
        wall_clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._latest: Latest | None = None
        self._points: StoreSnapshot | None = None
        self._seq = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._wall = wall_clock
        self._mono = mono_clock
        self.leader = False

    @property
    def latest(self) -> Latest | None:
        return self._latest

    # -- writers -------------------------------------------------------------------------------

    def record(
        self,
        decision: Decision,
        policy: PolicyFile,
        *,
        snapshot: Snapshot | None = None,
        applied: Mapping[tuple[str, Role], int] | None = None,
        samples: Samples | None = None,
    ) -> Latest:
        with self._lock:
            self._seq += 1
            latest = Latest(
                seq=self._seq,
                decision=decision,
                snapshot=snapshot,
                policy=policy,
                wall_time=self._wall(),
                mono_time=self._mono(),
                applied=dict(applied or {}),
                leader=self.leader,
                signal_samples=_samples_of(snapshot) if samples is None else samples,
            )
            self._latest = latest
            waiters = list(self._waiters)
        # Wake every waiter, in whichever event loop (thread) it waits.
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(event.set)
        return latest

    def update(self, decision: Decision, policy: PolicyFile,
               samples: Samples | None = None) -> StoreSnapshot:
        """Record a decision (with optional raw samples) and return it as metric points."""
        self.record(decision, policy, samples=samples)
        snap = self.snapshot()
        assert snap is not None
        return snap

    def __call__(self, decision: Decision, policy: PolicyFile) -> None:
        """The `DecisionHook` signature of `autoscaler.loop.Loop` (no snapshot)."""
        self.record(decision, policy)

    def hook(self, decision: Decision, policy: PolicyFile) -> None:
        """A `loop.DecisionHook` (no snapshot), for loops other than the controller's."""
        self.record(decision, policy)

    def clear(self) -> None:
        """Forget the latest decision (this replica stopped leading). `seq` keeps counting, so a
        reader's cache keyed by seq never mistakes a later decision for an earlier one; waiters in
        `wait_newer` keep waiting for the next recorded tick."""
        with self._lock:
            self._latest = None

    # -- readers -------------------------------------------------------------------------------

    def desired(self, pool: str, role: Role) -> int | None:
        latest = self._latest
        if latest is None or pool not in latest.decision.pools:
            return None
        rd = latest.decision.pools[pool].roles.get(role)
        return None if rd is None else rd.desired

    def snapshot(self) -> StoreSnapshot | None:
        """The latest decision as metric points (computed once per recorded tick)."""
        latest = self._latest
        if latest is None:
            return None
        cached = self._points
        if cached is not None and cached.version == latest.seq:
            return cached
        snap = StoreSnapshot(
            version=latest.seq,
            points=tuple(points_from_decision(latest.decision, latest.policy,
                                              latest.signal_samples)),
            updated_wall=latest.wall_time,
            updated_mono=latest.mono_time,
            decision=latest.decision,
            policy=latest.policy,
        )
        self._points = snap
        return snap

    def age_s(self) -> float | None:
        latest = self._latest
        return None if latest is None else self._mono() - latest.mono_time

    async def _wait(self, newer_than: int, timeout_s: float | None) -> bool:
        """Wait until a tick newer than `newer_than` is recorded; False on timeout."""
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        while True:
            event = asyncio.Event()
            entry = (asyncio.get_running_loop(), event)
            with self._lock:
                latest = self._latest
                if latest is not None and latest.seq > newer_than:
                    return True
                self._waiters.add(entry)
            try:
                remaining = (None if deadline is None
                             else deadline - asyncio.get_running_loop().time())
                if remaining is not None and remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    return False
            finally:
                with self._lock:
                    self._waiters.discard(entry)

    async def wait_newer(self, seq: int, *, timeout_s: float | None = None) -> Latest | None:
        """The first `Latest` with a seq above `seq`; None on timeout."""
        if await self._wait(seq, timeout_s):
            return self._latest
        return None

    async def wait_for_update(self, after_version: int, timeout_s: float) -> StoreSnapshot | None:
        """The first snapshot newer than `after_version`, or the current one after `timeout_s`."""
        await self._wait(after_version, timeout_s)
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
