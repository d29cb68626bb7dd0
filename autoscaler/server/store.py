"""The latest decision and what it was based on, shared with in-process servers.

The controller's tick writes here; servers in the same process read (the health endpoints, the
external-metrics API, the KEDA scaler). Nothing here does I/O, and readers never block the tick.

How a server plugs in (the contract for `autoscaler/server/*`):

    store = DecisionStore()                       # built by the controller, one per process
    latest = store.latest                         # None until the first tick
    latest.decision.pools["llama-8b"].roles[Role.PREFILL].desired
    latest.samples("llama-8b", Role.PREFILL)      # {"queue_depth": SignalSample, ...}
    store.desired("llama-8b", Role.DECODE)        # int | None
    latest = await store.wait_newer(seq)          # push-style servers (KEDA external-push)

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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoscaler.spec import PolicyFile
    from autoscaler.types import Decision, Role, SignalSample, Snapshot


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
    applied: Mapping[tuple[str, Role], int] = field(default_factory=dict)
    """Replica counts written to Deployments this tick (empty in dry-run)."""
    leader: bool = True

    def samples(self, pool: str, role: Role) -> Mapping[str, SignalSample]:
        if self.snapshot is None or pool not in self.snapshot.pools:
            return {}
        obs = self.snapshot.pools[pool].roles.get(role)
        return {} if obs is None else obs.signals


class DecisionStore:
    """Holds the latest `Latest`; see the module docstring for the reader API."""

    def __init__(self) -> None:
        self._latest: Latest | None = None
        self._seq = 0
        self._changed: asyncio.Event | None = None
        self.leader = False

    @property
    def latest(self) -> Latest | None:
        return self._latest

    def record(
        self,
        decision: Decision,
        policy: PolicyFile,
        *,
        snapshot: Snapshot | None = None,
        applied: Mapping[tuple[str, Role], int] | None = None,
    ) -> Latest:
        self._seq += 1
        self._latest = Latest(
            seq=self._seq,
            decision=decision,
            snapshot=snapshot,
            policy=policy,
            wall_time=time.time(),
            applied=dict(applied or {}),
            leader=self.leader,
        )
        if self._changed is not None:
            # Wake every waiter, then arm a fresh Event for the next update.
            self._changed.set()
            self._changed = None
        return self._latest

    def clear(self) -> None:
        """Forget the latest decision (this replica stopped leading). `seq` keeps counting, so a
        reader's cache keyed by seq never mistakes a later decision for an earlier one; waiters in
        `wait_newer` keep waiting for the next recorded tick."""
        self._latest = None

    def hook(self, decision: Decision, policy: PolicyFile) -> None:
        """A `loop.DecisionHook` (no snapshot), for loops other than the controller's."""
        self.record(decision, policy)

    def desired(self, pool: str, role: Role) -> int | None:
        latest = self._latest
        if latest is None or pool not in latest.decision.pools:
            return None
        rd = latest.decision.pools[pool].roles.get(role)
        return None if rd is None else rd.desired

    async def wait_newer(self, seq: int, *, timeout_s: float | None = None) -> Latest | None:
        """The first `Latest` with a seq above `seq`; None on timeout."""
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        while self._latest is None or self._latest.seq <= seq:
            if self._changed is None:
                self._changed = asyncio.Event()
            event = self._changed
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return None
        return self._latest
