"""The sharded state store (controller/state_store.py) against an in-memory CoreV1Api:
clock handling across restarts, one stable shard per pool, writes only on change, migration
from the single ConfigMap of earlier versions, a bad shard replaced without losing the others,
and ownership (only owned shards are read and written)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from autoscaler.controller.shards import bucket_of, shard_of
from autoscaler.controller.state_store import (
    LAST_SCALE_KEY,
    STATE_KEY,
    StateStore,
    StateUnreadable,
    pack,
)
from autoscaler.decision.state import RoleState, ScaleState
from autoscaler.types import Decision, Role
from tests.unit.fakes import FakeStateCore

NO_DECISION = Decision(at=0.0, pools={})


def store(core: FakeStateCore, *, shards: int = 4, owns: Any = None) -> StateStore:
    return StateStore(core, namespace="ns", name="st", shards=shards, timeout_s=1,  # type: ignore[arg-type]
                      owns=owns)


def state_of(*pools: str, replicas: int = 3, t: float = 50.0) -> ScaleState:
    return ScaleState(pools={p: {Role.PREFILL: RoleState(recommendations=((t, replicas),),
                                                         events=((t, 1),),
                                                         last_replicas=replicas)}
                             for p in pools})


POOLS = [f"pool-{i}" for i in range(40)]


def test_pool_hash_is_stable_and_spreads() -> None:
    """The shard and the bucket of a pool are fixed functions of its name (not Python's
    per-process salted hash), and 4,000 names spread evenly over 16 shards."""
    assert shard_of("llama-8b", 16) == 14  # pinned: a change would strand saved state
    assert bucket_of("llama-8b", 4) == 14 % 4  # shard i belongs to bucket i % buckets
    counts = Counter(shard_of(f"model-{i}", 16) for i in range(4000))
    assert max(counts.values()) < 1.15 * 4000 / 16
    assert min(counts.values()) > 0.85 * 4000 / 16


async def test_state_survives_restart_on_a_new_monotonic_clock() -> None:
    """Saved on wall-clock time (in the pool's shard, gzip+base64), restored onto another
    process's monotonic clock."""
    core = FakeStateCore()
    s = store(core)
    assert (await s.load(mono_now=60.0, wall_now=1000.0)).pools == {}
    await s.save(state_of("p"), NO_DECISION, mono_now=60.0, wall_now=1000.0, identity="a")
    doc = json.loads(core.doc(f"st-{shard_of('p', 4)}", STATE_KEY) or "")
    assert doc["pools"]["p"]["prefill"]["events"] == [[990.0, 1]]
    # New process: monotonic clock at 5 s, wall clock 30 s later than the save.
    restored = await store(core).load(mono_now=5.0, wall_now=1030.0)
    assert restored.role("p", Role.PREFILL).recommendations == ((-35.0, 3),)


async def test_each_pool_in_its_shard_and_only_changed_shards_written() -> None:
    core = FakeStateCore()
    s = store(core)
    await s.load(mono_now=0, wall_now=0)
    await s.save(state_of(*POOLS), NO_DECISION, mono_now=0, wall_now=0, identity="a")
    assert s.writes == 4
    for i in range(4):
        saved = ScaleState.from_json(core.doc(f"st-{i}", STATE_KEY) or "")
        assert set(saved.pools) == {p for p in POOLS if shard_of(p, 4) == i}
    # Same state again: nothing written. One pool changes: its shard alone.
    await s.save(state_of(*POOLS), NO_DECISION, mono_now=0, wall_now=0, identity="a")
    assert s.writes == 4
    changed = state_of(*POOLS[1:]).pools | state_of(POOLS[0], replicas=9).pools
    await s.save(ScaleState(pools=changed), NO_DECISION, mono_now=0, wall_now=0, identity="a")
    assert s.writes == 5
    # A new last-scale record is a change too.
    s.last_scale[POOLS[1]] = {"prefill": {"to": 4}}
    await s.save(ScaleState(pools=changed), NO_DECISION, mono_now=0, wall_now=0, identity="a")
    assert s.writes == 6
    shard = f"st-{shard_of(POOLS[1], 4)}"
    assert json.loads(core.doc(shard, LAST_SCALE_KEY) or "") == {POOLS[1]: {"prefill": {"to": 4}}}
    # A restart reads what was saved: no write until something changes.
    s2 = store(core)
    await s2.load(mono_now=0, wall_now=0)
    await s2.save(ScaleState(pools=changed), NO_DECISION, mono_now=0, wall_now=0, identity="b")
    assert s2.writes == 0
    assert s2.last_scale == s.last_scale


async def test_migration_from_the_single_configmap() -> None:
    """Shards never written take their pools from the legacy ConfigMap's `state.json`; a shard
    already written ignores it (its own state is newer)."""
    core = FakeStateCore()
    core.put("st", data={STATE_KEY: state_of(*POOLS, replicas=5).to_json(),
                         LAST_SCALE_KEY: json.dumps({POOLS[0]: {"prefill": {"to": 5}}})})
    written = shard_of(POOLS[0], 4)
    core.put(f"st-{written}", binary_data={
        f"{STATE_KEY}.gz": pack(state_of(POOLS[0], replicas=7).to_json())})
    s = store(core)
    got = await s.load(mono_now=0, wall_now=0)
    expected = {p for p in POOLS if shard_of(p, 4) != written} | {POOLS[0]}
    assert set(got.pools) == expected
    assert got.role(POOLS[0], Role.PREFILL).last_replicas == 7
    assert all(got.role(p, Role.PREFILL).last_replicas == 5 for p in expected - {POOLS[0]})
    await s.save(got, NO_DECISION, mono_now=0, wall_now=0, identity="a")
    assert s.writes == 3  # the migrated shards; the written one is unchanged
    assert core.cms["st"].data[STATE_KEY]  # the legacy object is left alone


@pytest.mark.parametrize("bad", [
    {f"{STATE_KEY}.gz": "%%%"},
    {f"{STATE_KEY}.gz": pack('{"version":1,"pools":[]}')},
    {f"{STATE_KEY}.gz": pack("null")},
])
async def test_unreadable_shard_spares_the_others(bad: dict[str, str]) -> None:
    core = FakeStateCore()
    s = store(core)
    await s.load(mono_now=0, wall_now=0)
    await s.save(state_of(*POOLS), NO_DECISION, mono_now=0, wall_now=0, identity="a")
    core.put("st-2", binary_data=bad)
    s2 = store(core)
    with pytest.raises(StateUnreadable, match="st-2") as info:
        await s2.load(mono_now=0, wall_now=0)
    assert set(info.value.partial.pools) == {p for p in POOLS if shard_of(p, 4) != 2}
    # The first save replaces the bad shard (only it: the others are unchanged).
    await s2.save(state_of(*POOLS), NO_DECISION, mono_now=0, wall_now=0, identity="a")
    assert s2.writes == 1
    ScaleState.from_json(core.doc("st-2", STATE_KEY) or "")


async def test_only_owned_shards_are_read_and_written() -> None:
    """With buckets, a replica restores and writes the shards of its buckets only."""
    core = FakeStateCore()
    await (s := store(core)).load(mono_now=0, wall_now=0)
    await s.save(state_of(*POOLS), NO_DECISION, mono_now=0, wall_now=0, identity="a")
    mine = store(core, owns=lambda i: i % 2 == 0)  # bucket 0 of 2
    got = await mine.load(mono_now=0, wall_now=0)
    assert set(got.pools) == {p for p in POOLS if bucket_of(p, 2) == 0}
    before = {n: dict(cm.binary_data) for n, cm in core.cms.items()}
    # Its state holds only its pools; the other bucket's shards are not touched (not emptied).
    await mine.save(state_of(*POOLS, replicas=6), NO_DECISION, mono_now=0, wall_now=0,
                    identity="b")
    assert mine.writes == 2
    assert core.cms["st-1"].binary_data == before["st-1"]
    assert core.cms["st-3"].binary_data == before["st-3"]
