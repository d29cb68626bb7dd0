"""Bucketed leases (controller/shards.py) on synthetic time: replicas run their rounds in turn
against an in-memory Lease API with resourceVersion compare-and-swap, and after every round no
bucket is held (`holds`, the write fence) by two replicas at once.

Timings: lease 3 s, renew deadline 2 s, retry period 1 s (the e2e test's settings)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.controller.shards import BucketLeases, bucket_of
from autoscaler.testing import FakeClock

LEASE_S, RENEW_S, RETRY_S = 3, 2.0, 1.0


class LeaseApi:
    """create/read/replace of Leases, with resourceVersion checks (409 on a stale write)."""

    def __init__(self) -> None:
        self.leases: dict[str, Any] = {}
        self.rv = 0
        self.down: set[str] = set()  # identities whose calls fail (a partitioned replica)
        self.caller = ""

    def _check(self) -> None:
        if self.caller in self.down:
            raise OSError("connection refused")

    def _store(self, name: str, body: Any) -> Any:
        self.rv += 1
        body = copy.deepcopy(body)
        body.metadata.resource_version = str(self.rv)
        self.leases[name] = body
        return copy.deepcopy(body)

    async def read_namespaced_lease(self, name: str, ns: str, **_: Any) -> Any:
        self._check()
        if name not in self.leases:
            raise ApiException(status=404)
        return copy.deepcopy(self.leases[name])

    async def create_namespaced_lease(self, ns: str, body: Any, **_: Any) -> Any:
        self._check()
        if body.metadata.name in self.leases:
            raise ApiException(status=409)
        return self._store(body.metadata.name, body)

    async def replace_namespaced_lease(self, name: str, ns: str, body: Any, **_: Any) -> Any:
        self._check()
        if self.leases[name].metadata.resource_version != body.metadata.resource_version:
            raise ApiException(status=409)
        return self._store(name, body)


@dataclass
class Fleet:
    api: LeaseApi
    clock: FakeClock
    buckets: int
    replicas: dict[str, BucketLeases] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)

    def start(self, identity: str) -> BucketLeases:
        r = BucketLeases(self.api, namespace="ns", lease_name="pd", identity=identity,  # type: ignore[arg-type]
                         buckets=self.buckets, lease_duration_s=LEASE_S,
                         renew_deadline_s=RENEW_S, retry_period_s=RETRY_S, timeout_s=1,
                         wall=self.clock)
        self.replicas[identity] = r
        self.alive.add(identity)
        return r

    async def rounds(self, n: int) -> None:
        """`n` retry periods: each live replica runs its round (in a fixed order), then time
        moves on; after each, no bucket is held twice."""
        for _ in range(n):
            for identity in sorted(self.alive):
                self.api.caller = identity
                await self.replicas[identity].round()
                self.assert_single_owner()
            self.clock.advance(RETRY_S)
            self.assert_single_owner()

    def assert_single_owner(self) -> None:
        for b in range(self.buckets):
            owners = [i for i, r in self.replicas.items() if r.holds(b)]
            assert len(owners) <= 1, f"bucket {b} held by {owners} at t={self.clock.now}"

    def held(self) -> dict[str, int]:
        return {i: len(r.held_set()) for i, r in sorted(self.replicas.items())}

    def unowned(self) -> list[int]:
        return [b for b in range(self.buckets)
                if not any(r.holds(b) for r in self.replicas.values())]


def fleet(buckets: int, identities: Sequence[str]) -> Fleet:
    f = Fleet(LeaseApi(), FakeClock(1000.0), buckets)
    for i in identities:
        f.start(i)
    return f


@pytest.mark.parametrize(("buckets", "replicas", "spread"), [
    (1, 1, [1]),
    (1, 3, [0, 0, 1]),
    (6, 3, [2, 2, 2]),
    (5, 5, [1, 1, 1, 1, 1]),
    (8, 3, [2, 3, 3]),
    (6, 1, [6]),
])
async def test_replicas_started_together_share_the_buckets(
        buckets: int, replicas: int, spread: list[int]) -> None:
    f = fleet(buckets, [f"r{i}" for i in range(replicas)])
    await f.rounds(buckets + 2)
    assert sorted(f.held().values()) == spread
    assert f.unowned() == []


@pytest.mark.parametrize(("case", "release"), [("crash", False), ("shutdown", True)])
async def test_buckets_of_a_dead_replica_move_to_the_survivors(case: str, release: bool) -> None:
    """A crashed replica's buckets are taken after the lease duration (its own fence closed at
    the renew deadline, before); a replica that shuts down releases them for the next round."""
    f = fleet(6, ["a", "b", "c"])
    await f.rounds(8)
    victim = f.replicas["b"]
    orphans = victim.held_set()
    assert len(orphans) == 2
    f.alive.discard("b")
    if release:
        f.api.caller = "b"
        await victim.release()
    t_dead = f.clock.now
    moved_at = None
    for _ in range(LEASE_S + 6):
        await f.rounds(1)
        if release:
            assert not victim.held()
        elif f.clock.now - t_dead > RENEW_S:
            assert not victim.held(), "the dead replica's fence closes at the renew deadline"
        if not f.unowned() and moved_at is None:
            moved_at = f.clock.now - t_dead
    assert moved_at is not None, f"{case}: buckets {f.unowned()} never moved"
    # Within a lease duration plus the rounds that take one bucket each.
    assert moved_at <= (0 if release else LEASE_S) + 2 * RETRY_S + RETRY_S * len(orphans)
    assert sorted(n for i, n in f.held().items() if i != "b") == [3, 3]


async def test_partitioned_owner_is_fenced_before_anyone_takes_over() -> None:
    """An owner whose API calls fail: its `holds` lapses at the renew deadline, the other
    acquires only after the lease duration, never both at once (asserted after every round)."""
    f = fleet(4, ["a", "b"])
    await f.rounds(6)
    f.api.down.add("a")
    for _ in range(LEASE_S + 4):
        await f.rounds(1)
    assert f.held() == {"a": 0, "b": 4}
    f.api.down.clear()
    await f.rounds(4)
    # Back, a sees b holding its two buckets (counted as lost) and stays a standby: it holds
    # nothing, so b does not see it, until a bucket frees (the next test).
    assert f.held() == {"a": 0, "b": 4}
    assert f.replicas["a"].lost == 2


async def test_a_replica_that_comes_back_gets_its_share_when_one_frees() -> None:
    """A late replica is a standby until a bucket frees; then it takes one, becomes visible,
    and the replica above its fair share gives one back each round until the split is even."""
    f = fleet(4, ["a"])
    await f.rounds(6)
    assert f.held() == {"a": 4}
    f.start("b")
    await f.rounds(3)
    assert f.held() == {"a": 4, "b": 0}
    # One bucket frees (a's renewal of it loses a race, say): b takes it and is seen.
    f.api.caller = "a"
    victim = min(f.replicas["a"].held_set())
    # Scripted through the private parts: a lost renewal followed by an emptied record.
    f.replicas["a"]._seen[victim].renewed_at = None
    await f.replicas["a"]._write(victim, holder=None, now=f.clock.now)
    await f.rounds(LEASE_S + 4)
    assert f.held() == {"a": 2, "b": 2}


async def test_contend_restarts_the_leading_task_when_the_held_set_changes() -> None:
    """The controller's view: each change of the held set stops the leading task and starts
    one for the new set (`owned`), whose pools are those hashed onto it."""
    api, clock = LeaseApi(), FakeClock(1000.0)
    started: list[frozenset[int]] = []
    stopped = 0

    async def tick_sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    r = BucketLeases(api, namespace="ns", lease_name="pd", identity="a", buckets=3,  # type: ignore[arg-type]
                     lease_duration_s=LEASE_S, renew_deadline_s=RENEW_S,
                     retry_period_s=RETRY_S, timeout_s=1, wall=clock, sleep=tick_sleep)

    async def on_started() -> None:
        started.append(r.owned)
        await asyncio.Event().wait()

    async def on_stopped() -> None:
        nonlocal stopped
        stopped += 1

    task = asyncio.create_task(r.contend(on_started=on_started, on_stopped=on_stopped))
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # One bucket per round: {x}, {x, y}, {0, 1, 2}; each change restarts the leading task.
    assert [len(s) for s in started] == [1, 2, 3]
    assert stopped == 2
    assert r.owned == frozenset()
    pools = [f"pool-{i}" for i in range(30)]
    assert {bucket_of(p, 3) for p in pools} == {0, 1, 2}


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"buckets": 6}, None),
    ({"buckets": 5}, None),  # 60 shards: 12 per bucket
    ({"buckets": 7}, "state_shards: must be 1-1024 and a multiple of buckets"),
    ({"buckets": 4, "state_shards": 16}, None),
    ({"buckets": 0}, "buckets: must be 1-256"),
    ({"buckets": 3, "leader_election": False}, "buckets: > 1 needs leader_election"),
    ({"buckets": 3, "keda_metrics_api": True}, "keda_metrics_api: not supported with buckets"),
    ({"buckets": 3, "keda_grpc_port": 0}, "keda_grpc_port: not supported with buckets"),
    ({"buckets": 3, "leader_endpointslice": "lead", "pod_ip": "10.0.0.7"},
     "leader_endpointslice: not supported with buckets"),
    ({"buckets": 1, "keda_metrics_api": True}, None),
])
def test_sharding_settings(overrides: dict[str, Any], problem: str | None) -> None:
    from autoscaler import errors  # noqa: PLC0415
    from autoscaler.controller.settings import Settings  # noqa: PLC0415

    if problem is None:
        Settings(namespace="ns", identity="a", **overrides)
        return
    with pytest.raises(errors.ConfigError, match=problem):
        Settings(namespace="ns", identity="a", **overrides)


async def test_controller_ticks_only_its_buckets_and_fences_per_bucket(tmp_path: Any) -> None:
    """A replica's policy share is the pools of the buckets its leading task owns; a write to a
    Deployment of another bucket's pool, or of a bucket whose lease lapsed, is refused; a
    file-wide gpu_budget is not split (reported, not ticked)."""
    from types import SimpleNamespace  # noqa: PLC0415

    from autoscaler.controller.app import Controller  # noqa: PLC0415
    from autoscaler.controller.settings import Settings  # noqa: PLC0415
    from autoscaler.spec import DeploymentRef, PolicyFile  # noqa: PLC0415
    from autoscaler.telemetry import Telemetry  # noqa: PLC0415
    from autoscaler.testing import FakeMetricsSource, fake_cluster, pool_policy  # noqa: PLC0415

    api, clock = LeaseApi(), FakeClock(1000.0)
    leases = BucketLeases(api, namespace="ns", lease_name="pd", identity="a", buckets=3,  # type: ignore[arg-type]
                          lease_duration_s=LEASE_S, renew_deadline_s=RENEW_S,
                          retry_period_s=RETRY_S, timeout_s=1, wall=clock)
    settings = Settings(namespace="ns", identity="a", buckets=3, state_shards=3)
    c = Controller(settings, api=SimpleNamespace(), source=FakeMetricsSource(),  # type: ignore[arg-type]
                   telemetry=Telemetry(), serve_http=False, lease=leases, **fake_cluster())
    one = pool_policy(aggregated={"signals": [{"signal": "queue_depth", "target": 2}]})
    pools = [one.pools[0].model_copy(update={
        "name": f"p{i}",
        "roles": {r: s.model_copy(update={"deployment": DeploymentRef(namespace="llm",
                                                                      name=f"p{i}-{r.value}")})
                  for r, s in one.pools[0].roles.items()}}) for i in range(12)]
    policy = PolicyFile(pools=tuple(pools))
    await leases.round()  # takes one bucket
    (mine,) = leases.held_set()
    leases.owned = leases.held_set()
    share = c._share(policy)
    assert share is not None
    assert {p.name for p in share.pools} == {p.name for p in pools if bucket_of(p.name, 3) == mine}
    ours = share.pools[0]
    other = next(p for p in pools if bucket_of(p.name, 3) != mine)
    ref = next(iter(ours.roles.values())).deployment
    assert c.may_write(ref)
    assert not c.may_write(next(iter(other.roles.values())).deployment)
    assert c.may_write_shard(mine)
    assert not c.may_write_shard((mine + 1) % 3)
    clock.advance(RENEW_S)  # no renewal: the bucket's fence closes
    assert not c.may_write(ref)
    assert not c.may_write_shard(mine)
    budgeted = policy.model_copy(update={"gpu_budget": 1000})
    assert c._share(budgeted) is None
    assert "gpu_budget" in c.health.failing["tick"]
    assert c._share(policy) is not None
    assert "tick" not in c.health.failing
