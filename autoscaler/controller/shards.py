"""Sharding across replicas: pools hashed onto buckets, one Lease per bucket.

With `buckets` B > 1, N controller replicas share the pools (knative's bucketed leader election
is the model): a pool belongs to bucket `bucket_of(pool, B)` (a stable hash of its name, so
which pools share a bucket never depends on how many replicas run), each bucket has a Lease
`<lease_name>-<b>`, and only the holder of a bucket ticks that bucket's pools and writes their
scales and their state shards. B = 1 (the default) is the single leader of `leader.Lease`,
unchanged; this module is then not used beyond the hashes.

State shards and buckets line up: `state_shards` is a multiple of B and shard `i` belongs to
bucket `i % B` (`h % S % B == h % B` when B divides S), so each shard has one writer and a
new owner restores exactly its buckets' shards.

`BucketLeases` contends for the buckets one round per retry period, with the Lease records'
resourceVersion as the compare-and-swap:
- it renews the buckets it holds; a bucket not renewed within the renew deadline is no longer
  held (`holds`), so its writes are fenced off before another replica can acquire it (after the
  lease duration);
- it takes free or expired buckets, at most one per round and only up to its fair share
  ceil(B / live replicas), live meaning holders whose record changed within a lease duration;
  a replica holding k buckets takes one only once it has been free for k retry periods, so the
  one holding fewest gets it: replicas started together spread the buckets evenly, and the
  survivors of a dead replica take its buckets within a lease duration plus a few rounds;
- it gives back buckets above its fair share (a replica came back), one per round.
Expiry is judged as client-go does: by when this replica last saw a bucket's record change on
its own clock, never by the holder's timestamps (no clock-skew assumption).

A replica started after the others took every bucket holds nothing, and is not seen by them,
until a bucket frees (a replica dies or shuts down; shutdown releases at once): it is then a
hot standby, as with one leader.

Whenever the set of held buckets changes, the controller restarts its leading task for the new
set (`Controller._lead`), so the tick loop, its policy share and its restored state always
belong to one set.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

log = structlog.get_logger(__name__)


def pool_hash(pool: str) -> int:
    """A stable 64-bit hash of a pool name (Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.sha256(pool.encode()).digest()[:8], "big")


def shard_of(pool: str, shards: int) -> int:
    """The state shard holding `pool`."""
    return pool_hash(pool) % shards


def bucket_of(pool: str, buckets: int) -> int:
    """The bucket (and so the replica) that owns `pool`."""
    return pool_hash(pool) % buckets


def bucket_lease_name(lease_name: str, bucket: int) -> str:
    return f"{lease_name}-{bucket}"


@dataclass
class _Seen:
    """What this replica knows of one bucket's Lease."""

    record: Any = None
    """The last Lease object read or written (None: none exists)."""
    changed_at: float = -math.inf
    """When (this replica's wall clock) the record was last seen to change."""
    renewed_at: float | None = None
    """When this replica last renewed (or acquired) it; None: not ours."""
    observed: bool = False


def _version(record: Any) -> str | None:
    return None if record is None else str(record.metadata.resource_version)


class BucketLeases:
    """This replica's buckets: contend for them (`contend`), tell which are held right now
    (`holds`), hand them over on shutdown (`release`). See the module docstring."""

    def __init__(self, coord: client.CoordinationV1Api, *, namespace: str, lease_name: str,
                 identity: str, buckets: int, lease_duration_s: int, renew_deadline_s: float,
                 retry_period_s: float, timeout_s: float, wall: Callable[[], float],
                 sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep) -> None:
        self._coord = coord
        self.namespace = namespace
        self.lease_name = lease_name
        self.identity = identity
        self.buckets = buckets
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self._timeout_s = timeout_s
        self._wall = wall
        self._sleep = sleep
        self._seen = [_Seen() for _ in range(buckets)]
        self.owned: frozenset[int] = frozenset()
        """The buckets the current leading task was started for."""
        self.acquired = 0
        self.lost = 0

    # -- what is ours ------------------------------------------------------------------------

    def holds(self, bucket: int) -> bool:
        """True while `bucket` is ours and was renewed within the renew deadline (the fence)."""
        at = self._seen[bucket].renewed_at
        return at is not None and self._wall() - at < self.renew_deadline_s

    def held(self) -> bool:
        """Any bucket held (the controller's `is_leader`)."""
        return any(self.holds(b) for b in range(self.buckets))

    def held_set(self) -> frozenset[int]:
        return frozenset(b for b in range(self.buckets) if self.holds(b))

    # -- one round ---------------------------------------------------------------------------

    async def round(self) -> None:
        """Renew ours, read every bucket's Lease, take or give back at most one."""
        # Renewals first, each stamped when it is sent: the fence counts from there, so a slow
        # round (many buckets, a loaded API server) does not eat into the renew deadline.
        for b in range(self.buckets):
            if self._seen[b].renewed_at is not None:
                await self._write(b, holder=self.identity, now=self._wall())
        now = self._wall()
        for b in range(self.buckets):
            await self._observe(b, now)
        now = self._wall()
        live = {h for b in range(self.buckets)
                if (h := self._holder(b)) and h != self.identity and not self._expired(b, now)}
        fair = math.ceil(self.buckets / (len(live) + 1))
        mine = [b for b in range(self.buckets) if self._holder(b) == self.identity]
        for b in mine:
            if self._seen[b].renewed_at is None:
                # Ours by the record but not by our count (a release whose write failed):
                # renewing it makes it ours again.
                await self._write(b, holder=self.identity, now=self._wall())
        held = [b for b in mine if self.holds(b)]
        if len(held) > fair:
            # Give back the one we prefer least (a replica came back; it takes it next round).
            give = max(held, key=self._preference)
            await self._write(give, holder=None, now=self._wall())
        elif len(held) < fair:
            # A free bucket goes to the replica holding fewest: one holding k buckets waits
            # until it has been free for k retry periods (a standby takes it at once).
            wait = len(held) * self.retry_period_s
            free = [b for b in range(self.buckets)
                    if b not in mine and (f := self._free_at(b)) is not None
                    and now - f >= wait]
            if free:
                await self._write(min(free, key=self._preference), holder=self.identity,
                                  now=self._wall())

    def _preference(self, bucket: int) -> int:
        # Replicas try different free buckets first, so simultaneous starts rarely collide.
        return pool_hash(f"{self.identity}/{bucket}")

    def _holder(self, bucket: int) -> str | None:
        rec = self._seen[bucket].record
        return None if rec is None or rec.spec is None else rec.spec.holder_identity

    def _expired(self, bucket: int, now: float) -> bool:
        at = self._free_at(bucket)
        return at is not None and now >= at

    def _free_at(self, bucket: int) -> float | None:
        """Since when the bucket is free for the taking (no holder, or its holder's record
        unchanged for the lease duration), on this replica's clock; None: never observed."""
        seen = self._seen[bucket]
        if not seen.observed:
            return None
        if not self._holder(bucket):
            return seen.changed_at
        duration = seen.record.spec.lease_duration_seconds or self.lease_duration_s
        return seen.changed_at + duration

    async def _observe(self, bucket: int, now: float) -> None:
        seen = self._seen[bucket]
        try:
            rec = await self._coord.read_namespaced_lease(
                bucket_lease_name(self.lease_name, bucket), self.namespace,
                _request_timeout=self._timeout_s)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("bucket_lease_read_failed", bucket=bucket, status=exc.status)
                return
            rec = None
        except Exception as exc:  # a dropped connection too: the round goes on
            log.warning("bucket_lease_read_failed", bucket=bucket, error=repr(exc))
            return
        if not seen.observed or _version(rec) != _version(seen.record):
            seen.changed_at = now
        seen.observed = True
        seen.record = rec
        if seen.renewed_at is not None and self._holder(bucket) != self.identity:
            self._lose(bucket, why=f"held by {self._holder(bucket)!r} now")

    async def _write(self, b: int, *, holder: str | None, now: float) -> None:
        seen = self._seen[b]
        name = bucket_lease_name(self.lease_name, b)
        stamp = dt.datetime.fromtimestamp(now, tz=dt.UTC)
        spec = client.V1LeaseSpec(
            holder_identity=holder,
            lease_duration_seconds=self.lease_duration_s if holder else 1,
            renew_time=stamp)
        old = seen.record
        if holder == self.identity and self._holder(b) != self.identity:
            spec.acquire_time = stamp
            spec.lease_transitions = ((old.spec.lease_transitions or 0) + 1
                                      if old is not None and old.spec is not None else 0)
        elif old is not None and old.spec is not None:
            spec.acquire_time = old.spec.acquire_time
            spec.lease_transitions = old.spec.lease_transitions
        try:
            if old is None:
                rec = await self._coord.create_namespaced_lease(
                    self.namespace,
                    client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=spec),
                    _request_timeout=self._timeout_s)
            else:
                # resourceVersion makes this a compare-and-swap: 409 if anyone wrote since.
                rec = await self._coord.replace_namespaced_lease(
                    name, self.namespace,
                    client.V1Lease(metadata=client.V1ObjectMeta(
                        name=name, resource_version=old.metadata.resource_version), spec=spec),
                    _request_timeout=self._timeout_s)
        except ApiException as exc:
            if exc.status not in (409, 422):
                log.warning("bucket_lease_write_failed", bucket=b, status=exc.status)
            # Someone else wrote first (or the API failed): re-read next round. A renewal that
            # keeps failing lets `holds` lapse at the renew deadline.
            return
        except Exception as exc:  # a dropped connection too: `holds` lapses if it lasts
            log.warning("bucket_lease_write_failed", bucket=b, error=repr(exc))
            return
        seen.record, seen.changed_at = rec, now
        if holder == self.identity:
            if seen.renewed_at is None:
                self.acquired += 1
                log.info("bucket_acquired", bucket=b, identity=self.identity)
            seen.renewed_at = now
        elif seen.renewed_at is not None:
            seen.renewed_at = None
            log.info("bucket_released", bucket=b, identity=self.identity)

    def _lose(self, bucket: int, *, why: str) -> None:
        self._seen[bucket].renewed_at = None
        self.lost += 1
        log.warning("bucket_lost", bucket=bucket, identity=self.identity, why=why)

    # -- the controller's LeaseLike ----------------------------------------------------------

    async def contend(self, *, on_started: Callable[[], Coroutine[Any, Any, None]],
                      on_stopped: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Rounds forever; whenever the held set changes, stop the leading task and start one
        for the new set (`owned`). Never returns but by cancellation (then stops leading)."""
        task: asyncio.Task[None] | None = None
        try:
            while True:
                # Rounds start every retry period (not a period after the last one ended), so
                # renewals stay a period apart however long the reads take.
                started = self._wall()
                await self.round()
                now_held = self.held_set()
                if now_held != self.owned or (task is not None and task.done()):
                    if task is not None:
                        await on_stopped()
                        task = None
                    self.owned = now_held
                    log.info("buckets_owned", identity=self.identity, buckets=sorted(now_held))
                    if now_held:
                        task = asyncio.create_task(on_started(), name="leading-buckets")
                await self._sleep(max(0.0, self.retry_period_s - (self._wall() - started)))
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.owned = frozenset()

    async def release(self) -> None:
        """On shutdown: every held bucket's holder emptied, so survivors take it at once."""
        now = self._wall()
        for b in range(self.buckets):
            if self._seen[b].renewed_at is not None:
                # Not ours any more from here on, whatever the write's fate: the fence closes.
                self._seen[b].renewed_at = None
                await self._write(b, holder=None, now=now)
        self.owned = frozenset()
