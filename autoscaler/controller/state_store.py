"""The state shards: the decision state across restarts and leaders, and the last decision.

Why ConfigMaps of the controller's namespace and not Deployment annotations: writing an
annotation needs `patch deployments`, and RBAC cannot limit a patch to metadata, so that grant
would also allow rewriting the Pod template of every model server.

Why shards: one object for every pool grew about 9 KB per pool once the stabilization windows
were full and was rewritten every tick, so from about 110 pools it passed the API server's
1 MiB object limit and every save failed. Now a pool's state lives in shard
`shards.shard_of(pool, n)` of `n` ConfigMaps named `<name>-<i>` (a stable hash of the pool name,
so a pool never moves while `n` stays), each holding gzip-compressed JSON in `binaryData`, and a
shard is written only when its state or last-scale record changed. The manifests ship the `n`
ConfigMaps and the Role names each one: the controller needs no `create configmaps` (that verb
cannot be limited by name, and would let it create a policy-labelled ConfigMap it then loads).
`benchmarks/state_shards.py` measures the shard sizes at 5,000 pools.

Ownership: `owns(i)` says whether shard `i` is this replica's (the leader's; with replica
sharding, the shards of the buckets the leading task was started for: shards.py); a load reads
those, a save writes those. `fence(i)` (default: `owns`) is asked immediately before each write:
is the shard's lease still held right now.

Migration: the single ConfigMap of earlier versions (`<name>` itself, `data: state.json`) is read
for a shard that was never written (no `binaryData`), so an upgrade keeps every pool's windows;
it is never written again and may be deleted once every shard has been saved.

`ScaleState` timestamps are monotonic seconds; they are saved as wall-clock
(`shifted(time.time() - monotonic())`) and shifted back on restore, so a new leader keeps the
stabilization windows and rate-limit history of the old one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler.controller.shards import shard_of
from autoscaler.decision.state import ScaleState
from autoscaler.types import Decision

log = structlog.get_logger(__name__)
T = TypeVar("T")

# The legacy single ConfigMap's keys (plain JSON in `data`), read for migration only.
STATE_KEY = "state.json"
LAST_DECISION_KEY = "last-decision.json"
LAST_SCALE_KEY = "last-scale.json"
# A shard's keys: the same documents, gzip-compressed, in `binaryData`.
GZ = ".gz"
MAX_UNZIPPED_BYTES = 64 * 1024 * 1024
"""A shard that inflates past this is unreadable (a hostile or corrupt object), not a reason
to exhaust memory: 5,000 pools with 3,600-s windows are about 1 MB per shard of 60."""


class StateStoreLike(Protocol):
    """What the controller needs of a state store (`StateStore`; tests:
    `testing.FakeStateStore`)."""

    last_scale: dict[str, Any]
    """pool -> role -> the last scale written ({from, to, driver, clipped_by, time})."""

    async def load(self, *, mono_now: float, wall_now: float) -> ScaleState: ...

    async def save(self, state: ScaleState, decision: Decision, *, mono_now: float,
                   wall_now: float, identity: str) -> None: ...


def rfc3339(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def decision_status(decision: Decision, *, wall: float) -> dict[str, Any]:
    """The last decision per pool and role, as saved next to the state."""
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
                "time": rfc3339(wall),
            }
            for role, rd in pd.roles.items()
        }
        for pool, pd in decision.pools.items()
    }


def pack(text: str) -> str:
    """gzip (fixed mtime: the same content gives the same bytes) then base64, for binaryData."""
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def unpack(value: str, *, where: str) -> str:
    """The text `pack` made; ValueError naming `where` for anything else."""
    try:
        raw = base64.b64decode(value, validate=True)
        inflater = zlib.decompressobj(wbits=31)  # gzip framing
        text = inflater.decompress(raw, MAX_UNZIPPED_BYTES)
        if inflater.unconsumed_tail:
            msg = f"{where}: inflates past {MAX_UNZIPPED_BYTES} bytes"
            raise ValueError(msg)
        return text.decode()
    except (binascii.Error, zlib.error, UnicodeDecodeError) as exc:
        msg = f"{where}: not gzip+base64: {exc}"[:300]
        raise ValueError(msg) from exc


@dataclass
class _Shard:
    """What was last read from or written to one shard (to write only on change)."""

    state: str | None = None
    last_scale: str | None = None
    exists: bool | None = None


class StateUnreadable(ValueError):
    """A shard holds something that is not a state (a hand edit, a bad restore). `partial` is
    the state of every shard that could be read; the controller carries on with it, and the
    unreadable shards start fresh (the decision core seeds them with the current replicas)."""

    def __init__(self, message: str, *, partial: ScaleState | None = None) -> None:
        super().__init__(message)
        self.partial = partial if partial is not None else ScaleState()


class StateStore:
    """`shards` state ConfigMaps `<name>-<i>`: `state.json.gz` (ScaleState, wall clock),
    `last-decision.json.gz`, `last-scale.json.gz`. Read on gaining ownership, written by the
    owner only (see the module docstring)."""

    def __init__(self, core: client.CoreV1Api, *, namespace: str, name: str, shards: int,
                 timeout_s: float, owns: Callable[[int], bool] | None = None,
                 fence: Callable[[int], bool] | None = None) -> None:
        if shards < 1:
            msg = f"state shards: must be >= 1 (got {shards})"
            raise ValueError(msg)
        self._core = core
        self.namespace = namespace
        self.name = name
        self.shards = shards
        # Checked immediately before each write too: a deposed owner whose renewals hang must
        # not keep overwriting the new owner's state (26 writes by each were measured without).
        self._owns = owns or (lambda _i: True)
        self._fence = fence or self._owns
        self._timeout_s = timeout_s
        self._seen: dict[int, _Shard] = {}
        self.last_scale: dict[str, Any] = {}
        self.writes = 0
        """Shard writes so far (the benchmark and the tests count them)."""

    def shard_name(self, index: int) -> str:
        return f"{self.name}-{index}"

    async def load(self, *, mono_now: float, wall_now: float) -> ScaleState:
        """The saved state of every owned shard on the monotonic clock (fresh where there is
        none). `StateUnreadable` (with the readable shards' state) if a shard cannot be read as
        a state; other failures (the API) propagate and the caller retries."""
        owned = [i for i in range(self.shards) if self._owns(i)]
        # Set before reading: if the reads fail and the caller starts fresh, the first save
        # still writes (replaces) every owned shard.
        self._seen = {i: _Shard() for i in owned}
        self.last_scale = {}
        pools: dict[str, Any] = {}
        problems: list[str] = []
        legacy: tuple[ScaleState, dict[str, Any]] | None = None
        read = await _bounded(self._read, owned)
        for i in owned:
            name = self.shard_name(i)
            cm = read[i]
            seen = self._seen[i] = _Shard(exists=cm is not None)
            binary: Mapping[str, str] = (cm.binary_data if cm is not None else None) or {}
            if not binary:
                # Never written: take this shard's pools from the single ConfigMap of old.
                if legacy is None:
                    legacy = await self._read_legacy(problems)
                saved, scales = legacy
                for pool, roles in saved.pools.items():
                    if shard_of(pool, self.shards) == i:
                        pools[pool] = roles
                        if pool in scales:
                            self.last_scale[pool] = scales[pool]
                continue
            scales = _last_scale(_opt_unpack(binary.get(LAST_SCALE_KEY + GZ), where=name),
                                 configmap=name)
            self.last_scale.update(scales)
            # Kept as `save` would write it, so an unchanged shard is not rewritten.
            seen.last_scale = json.dumps(scales, sort_keys=True)
            raw = binary.get(STATE_KEY + GZ)
            if not raw:
                continue
            try:
                text = unpack(raw, where=f"configmap {name}: {STATE_KEY}{GZ}")
                shard_state = ScaleState.from_json(text)
            except ValueError as exc:
                problems.append(f"configmap {name}: {STATE_KEY}{GZ}: {exc}"[:300])
                continue
            seen.state = shard_state.to_json()
            pools.update(shard_state.pools)
        state = ScaleState(pools=pools).shifted(mono_now - wall_now)
        if problems:
            raise StateUnreadable("; ".join(problems), partial=state)
        log.info("state_restored", configmaps=self.name, shards=len(owned), pools=len(pools))
        return state

    async def _read(self, index: int) -> Any:
        """Shard `index`'s ConfigMap, or None if it does not exist."""
        try:
            return await self._core.read_namespaced_config_map(
                self.shard_name(index), self.namespace, _request_timeout=self._timeout_s)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None

    async def _read_legacy(self, problems: list[str]) -> tuple[ScaleState, dict[str, Any]]:
        try:
            cm = await self._core.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=self._timeout_s)
        except ApiException as exc:
            if exc.status in (403, 404):
                # Gone, or never granted: nothing to migrate.
                return ScaleState(), {}
            raise
        data: Mapping[str, str] = cm.data or {}
        scales = _last_scale(data.get(LAST_SCALE_KEY), configmap=self.name)
        raw = data.get(STATE_KEY)
        if not raw:
            return ScaleState(), scales
        try:
            saved = ScaleState.from_json(raw)
        except ValueError as exc:
            problems.append(f"configmap {self.name}: {STATE_KEY}: {exc}"[:300])
            return ScaleState(), scales
        log.info("state_migrating", configmap=self.name, pools=len(saved.pools))
        return saved, scales

    async def save(self, state: ScaleState, decision: Decision, *, mono_now: float,
                   wall_now: float, identity: str) -> None:
        """Write every owned shard (those the last `load` read) whose state or last-scale record
        changed; the last decision rides along with them. The first failure propagates after
        the other shards were tried (the caller retries the lot on the next tick)."""
        n = self.shards
        by_shard: dict[int, dict[str, Any]] = {i: {} for i in self._seen}
        wall_state = state.shifted(wall_now - mono_now)
        for pool, roles in wall_state.pools.items():
            i = shard_of(pool, n)
            if i in by_shard:
                by_shard[i][pool] = roles
        status = decision_status(decision, wall=wall_now)
        failed: list[BaseException] = []

        async def write(i: int) -> None:
            seen = self._seen[i]
            state_text = ScaleState(pools=by_shard[i]).to_json()
            scales = {p: r for p, r in self.last_scale.items() if shard_of(p, n) == i}
            scale_text = json.dumps(scales, sort_keys=True)
            if state_text == seen.state and scale_text == seen.last_scale:
                return
            data = {
                STATE_KEY + GZ: pack(state_text),
                LAST_DECISION_KEY + GZ: pack(json.dumps(
                    {p: s for p, s in status.items() if shard_of(p, n) == i}, sort_keys=True)),
                LAST_SCALE_KEY + GZ: pack(scale_text),
            }
            try:
                await self._write(i, data, identity=identity, wall_now=wall_now)
            except (ApiException, OSError, TimeoutError, errors.ActuationError) as exc:
                failed.append(exc)
                return
            seen.state, seen.last_scale, seen.exists = state_text, scale_text, True

        await _bounded(write, sorted(by_shard))
        if failed:
            raise failed[0]

    async def _write(self, index: int, data: dict[str, str], *, identity: str,
                     wall_now: float) -> None:
        name = self.shard_name(index)
        annotations = {"pd-autoscaler.io/saved-by": identity,
                       "pd-autoscaler.io/saved-at": rfc3339(wall_now),
                       "pd-autoscaler.io/format": "gzip+base64 json, shard "
                                                  f"{index} of {self.shards}"}
        if self._seen[index].exists is not False:
            self._check_fence(index)
            try:
                await self._core.patch_namespaced_config_map(
                    name, self.namespace,
                    {"metadata": {"annotations": annotations}, "binaryData": data},
                    _request_timeout=self._timeout_s,
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
            else:
                self.writes += 1
                return
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name=name, namespace=self.namespace, annotations=annotations,
                labels={"app.kubernetes.io/name": "pd-autoscaler",
                        "app.kubernetes.io/component": "state"},
            ),
            binary_data=data,
        )
        self._check_fence(index)
        try:
            await self._core.create_namespaced_config_map(
                self.namespace, body, _request_timeout=self._timeout_s)
        except ApiException as exc:
            if exc.status == 403:
                # The shipped Role has no `create configmaps` (manifests ship the shards).
                log.error("state_configmap_missing", configmap=name, namespace=self.namespace,
                          hint="apply manifests/base/controller/state-configmap.yaml")
            if exc.status != 409:
                raise
        self.writes += 1

    def _check_fence(self, index: int) -> None:
        if not self._fence(index):
            msg = (f"configmap {self.shard_name(index)}: fence closed (shard no longer ours); "
                   "state not written")
            raise errors.ActuationError(msg)


CONCURRENCY = 8
"""Shard reads or writes in flight at once: a new owner of 30 shards on a loaded API server
took 7 s to restore them one after the other (the sharding e2e test)."""


async def _bounded(fn: Callable[[int], Awaitable[T]], items: Sequence[int]) -> dict[int, T]:
    """`fn` of every item, at most CONCURRENCY at a time; the first exception propagates (the
    others are cancelled)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> T:
        async with gate:
            return await fn(i)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = {i: group.create_task(one(i)) for i in items}
    except ExceptionGroup as eg:
        # The callers (and their retries) handle one API error, as before the reads overlapped.
        raise eg.exceptions[0] from None
    return {i: t.result() for i, t in tasks.items()}


def _opt_unpack(value: str | None, *, where: str) -> str | None:
    if not value:
        return None
    try:
        return unpack(value, where=where)
    except ValueError as exc:
        log.warning("state_last_scale_unreadable", configmap=where, problem=str(exc),
                    action="starting an empty record")
        return None


def _last_scale(raw: str | None, *, configmap: str) -> dict[str, Any]:
    """`last-scale.json` as pool -> role -> object, or {} (with a warning) when it is not that:
    it is a record for people, never a reason to stop the leader."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        problem = f"not JSON: {exc}"[:200]
    else:
        if isinstance(value, dict) and all(
                isinstance(roles, dict) and all(isinstance(v, dict) for v in roles.values())
                for roles in value.values()):
            return value
        problem = "not an object of pools to roles to objects"
    log.warning("state_last_scale_unreadable", configmap=configmap, key=LAST_SCALE_KEY,
                problem=problem, action="starting an empty record")
    return {}
