"""Issue 17, the controller's part, with the test kit's fakes: every long-lived task supervised
(restart with backoff on any exception, reported in /readyz while it cannot recover), the policy
watch surviving cut connections and hostile documents, leadership that cannot go silent
(unreadable state replaced by a seeded fresh one, a leader that cannot tick hands the Lease
over), and the fence before every write. The same leadership cases against the real control
plane with two controller replicas: tests/e2e/test_leader_faults_e2e.py.

Each scenario counts what the issue's note quotes: crashed ticks (a tick that raised), ticks lost
to a silent leader (a leader holding the Lease without ticking), wrong scale-downs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import aiohttp
import pytest
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler.actuator.base import WorkloadStatus
from autoscaler.controller import app as controller
from autoscaler.controller import backoff, factory, policy_source
from autoscaler.controller.endpoint import LeaderEndpoint
from autoscaler.controller.settings import Settings
from autoscaler.controller.shards import shard_of
from autoscaler.controller.state_store import LAST_SCALE_KEY, STATE_KEY, StateStore, pack
from autoscaler.decision.state import RoleState, ScaleState
from autoscaler.policy import load
from autoscaler.server.app import Health
from autoscaler.spec import DeploymentRef
from autoscaler.telemetry import Telemetry
from autoscaler.testing import FakeActuator, FakeEvents, FakeLease, FakeMetricsSource
from autoscaler.types import Role
from tests.unit.fakes import FakeDiscovery, FakeStateCore

pytestmark = pytest.mark.faults

NO_API: Any = SimpleNamespace()
POOL = "p"
ROLE = Role.AGGREGATED
REF = DeploymentRef(namespace="llm", name="p")


def policy_yaml(max_replicas: int = 8) -> str:
    return f"""
apiVersion: pd-autoscaler.io/v1alpha1
kind: AutoscalingPolicy
pools:
  - name: {POOL}
    roles:
      aggregated:
        deployment: {{namespace: llm, name: d}}
        max_replicas: {max_replicas}
        signals: [{{signal: queue_depth, target: 2}}]
        behavior: {{panic: {{enabled: false}}, stock_max_step: null}}
"""


def nested(depth: int) -> str:
    """A small document nested `depth` levels deep (the issue's 5 KB, 1,000 levels)."""
    return "pools:\n  - name: x\n    roles: " + "[" * depth + "]" * depth + "\n"


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():  # noqa: ASYNC110 - the state belongs to the code under test
            await asyncio.sleep(0.01)


# --- supervise ------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [
    RecursionError("maximum recursion depth exceeded"),
    aiohttp.ClientPayloadError("Response payload is not completed"),
    KeyError("object"),
    TypeError("'NoneType' object is not subscriptable"),
    None,  # the task returned: a watch must not end
])
async def test_supervise_restarts_reports_and_recovers(failure: Exception | None) -> None:
    """Any exception (or an unexpected return) restarts the task after a backoff; three in a
    row make it visible to /readyz with the reason; a run that lasts clears it again."""
    health = Health(policy_loaded=True, api_reachable=True)
    runs = 0
    fail_first = 4

    async def task() -> None:
        nonlocal runs
        runs += 1
        if runs <= fail_first:
            if failure is None:
                return
            raise failure
        await asyncio.Event().wait()

    sup = asyncio.create_task(backoff.supervise(
        "policy-watch", task, report=health.report,
        delays=backoff.Delays(initial_s=0.01, max_s=0.02), healthy_after_s=0.2))
    try:
        await until(lambda: runs == fail_first, "failed four times")
        await until(lambda: "policy-watch" in health.failing, "reported")
        ok, detail = health.ready()
        assert not ok
        expected = "ended" if failure is None else type(failure).__name__
        assert "policy-watch failing" in detail
        assert expected in detail
        await until(lambda: not health.failing, "recovered after a healthy run")
        assert health.ready() == (True, "standby")
        assert runs == fail_first + 1
    finally:
        sup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sup


async def test_supervise_cancellation_reaches_the_task() -> None:
    cancelled = asyncio.Event()

    async def task() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    sup = asyncio.create_task(backoff.supervise("t", task, report=lambda *_: None))
    await asyncio.sleep(0.01)
    sup.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sup
    assert cancelled.is_set()


# --- the policy watch -----------------------------------------------------------------------


def configmap(name: str, rv: str, text: str) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(name=name, resource_version=rv, uid="u-" + name),
                           data={"policy.yaml": text})


class ScriptedWatch:
    """`kubernetes_asyncio.watch.Watch` stand-in: each `stream()` plays the next script (events,
    or an exception raised mid-stream), then hangs like a quiet watch."""

    scripts: ClassVar[list[list[Any]]] = []

    def stream(self, *_: Any, **__: Any) -> ScriptedWatch:
        self._script = ScriptedWatch.scripts.pop(0) if ScriptedWatch.scripts else []
        return self

    async def __aenter__(self) -> ScriptedWatch:
        return self

    async def __aexit__(self, *_: Any) -> None:
        return None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._play()

    async def _play(self) -> AsyncIterator[dict[str, Any]]:
        for item in self._script:
            if isinstance(item, BaseException):
                raise item
            yield item
        await asyncio.Event().wait()


class ListingCore:
    """The ConfigMap list the watch starts from (and re-lists after each failure)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.lists = 0

    async def list_namespaced_config_map(self, *_: Any, **__: Any) -> Any:
        self.lists += 1
        return SimpleNamespace(items=list(self.items),
                               metadata=SimpleNamespace(resource_version=str(self.lists)))


async def test_watch_survives_cut_connections_and_hostile_documents(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut watch (ClientPayloadError), an unexpected error inside the stream, and a document
    nested 1,000 levels deep: each is survived; the hostile document gets a PolicyRejected Event
    naming the problem; a later valid update still applies (hot reload is not lost)."""
    core = ListingCore([configmap("pol", "1", policy_yaml(8))])
    monkeypatch.setattr("kubernetes_asyncio.client.CoreV1Api", lambda api: core)
    monkeypatch.setattr("kubernetes_asyncio.watch.Watch", ScriptedWatch)
    ScriptedWatch.scripts = [
        [aiohttp.ClientPayloadError("Response payload is not completed")],
        [RuntimeError("watch decoder broke")],
        [{"type": "MODIFIED", "object": configmap("pol", "2", nested(1000))},
         {"type": "MODIFIED", "object": configmap("pol", "3", policy_yaml(9))}],
    ]
    fast = backoff.Delays(initial_s=0.01, max_s=0.01)
    monkeypatch.setattr(backoff, "Delays", lambda **_: fast)
    events = FakeEvents()
    health = Health()
    src = policy_source.PolicySource(
        Settings(namespace="ns", identity="a"), api=NO_API, health=health,
        telemetry=Telemetry(), events=events, is_leader=lambda: True)
    task = asyncio.create_task(src.watch())
    try:
        await until(lambda: src.current is not None
                    and src.current.pools[0].roles[ROLE].max_replicas == 9, "valid update applied")
        assert core.lists == 3  # re-listed after the cut and after the unexpected error
        rejected = [m for _, r, m, warn in events.recorded if r == "PolicyRejected" and warn]
        assert len(rejected) == 1
        assert "configmap/pol/policy.yaml" in rejected[0]
        assert "deep" in rejected[0] or "depth" in rejected[0] or "nest" in rejected[0]
        assert events.reasons()[-1] == "PolicyApplied"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_policy_label_on_the_state_configmap_is_ignored() -> None:
    """The state ConfigMap is the one the controller may write; labelled as policy it would let
    the controller write its own policy, so it is never loaded."""
    src = policy_source.PolicySource(
        Settings(namespace="ns", identity="a"), api=NO_API, health=Health(),
        telemetry=Telemetry(), events=FakeEvents(), is_leader=lambda: True)
    await src._sync_configmap(configmap(src.settings.state_configmap, "1", policy_yaml()))
    assert src.current is None
    await src._sync_configmap(configmap("pol", "1", policy_yaml()))
    assert src.current is not None


async def test_a_large_policy_is_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop keeps running (a lease renewal would) while a policy is validated."""
    import threading  # noqa: PLC0415

    calls: list[str] = []
    real_parse = load.parse_policy

    def where(text: str, *, source: str) -> Any:
        calls.append(threading.current_thread().name)
        return real_parse(text, source=source)

    monkeypatch.setattr(load, "parse_policy", where)
    docs = policy_source.PolicyDocs()
    new, problems = await docs.propose_async({"a.yaml": policy_yaml()})
    assert problems == []
    assert list(new) == ["a.yaml"]
    assert calls
    assert all(name != threading.main_thread().name for name in calls)


# --- leadership: unreadable state, a leader that cannot tick --------------------------------


class FlakyStateCore(FakeStateCore):
    """The state ConfigMaps, with scripted read failures and a count of writes. `data` is the
    legacy single ConfigMap `st`; `shard` is binaryData for the pool's shard of `st`."""

    def __init__(self, data: dict[str, str] | None = None,
                 shard: dict[str, str] | None = None) -> None:
        super().__init__()
        if data is not None:
            self.put("st", data=data)
        if shard is not None:
            self.put(POOL_SHARD, binary_data=shard)
        self.read_errors: list[BaseException] = []
        self.writes = 0

    async def read_namespaced_config_map(self, name: str, ns: str, **kw: Any) -> Any:
        if self.read_errors:
            raise self.read_errors.pop(0)
        return await super().read_namespaced_config_map(name, ns, **kw)

    async def patch_namespaced_config_map(self, name: str, ns: str, body: Any, **kw: Any) -> Any:
        self.writes += 1
        return await super().patch_namespaced_config_map(name, ns, body, **kw)


def deep_json(depth: int) -> str:
    return '{"version":1,"pools":' + "[" * depth + "]" * depth + "}"


POOL_SHARD = f"st-{shard_of(POOL, 4)}"


def packed(**docs: str) -> dict[str, str]:
    """binaryData of a shard: each document gzip+base64 under its key + ".gz"."""
    return {f"{k.replace('_', '-')}.json.gz": pack(v) for k, v in docs.items()}


def saved_state() -> dict[str, str]:
    """A valid state saved a moment ago: 4 replicas recommended (holds scale-down for a window)."""
    now = time.time()
    body = {"version": 1, "pools": {POOL: {ROLE.value: {
        "recommendations": [[now - 1, 4]], "last_replicas": 4}}}}
    return {STATE_KEY: json.dumps(body)}


STATE_CASES: dict[str, tuple[dict[str, str] | None, int]] = {
    # name: (ConfigMap data, reads dropped first)
    "last-scale null": ({LAST_SCALE_KEY: "null"}, 0),
    "last-scale [1]": ({LAST_SCALE_KEY: "[1]"}, 0),
    "pools a list": ({STATE_KEY: '{"version":1,"pools":[]}'}, 0),
    "role state a list": ({STATE_KEY: '{"version":1,"pools":{"p":{"aggregated":[]}}}'}, 0),
    "last_replicas 1e999": (
        {STATE_KEY: '{"version":1,"pools":{"p":{"aggregated":{"last_replicas":1e999}}}}'}, 0),
    "deep nesting": ({STATE_KEY: deep_json(100_000)}, 0),
    "state null": ({STATE_KEY: "null"}, 0),
    "truncated state.json": ({STATE_KEY: '{"version":1,"po'}, 0),
    # The same shapes in a shard (gzip+base64 in binaryData), and what only a shard can hold.
    "shard: pools a list": (packed(state='{"version":1,"pools":[]}'), 0),
    "shard: last_replicas 1e999": (packed(
        state='{"version":1,"pools":{"p":{"aggregated":{"last_replicas":1e999}}}}'), 0),
    "shard: last-scale [1]": (packed(last_scale="[1]"), 0),
    "shard: not base64": ({"state.json.gz": "%%%"}, 0),
    "shard: base64, not gzip": ({"state.json.gz": "aGVsbG8="}, 0),
    "shard: gzip of bytes not UTF-8": (
        {"state.json.gz": base64.b64encode(gzip.compress(b"\xff\xfe")).decode()}, 0),
    "shard: gzip bomb": (
        {"state.json.gz": base64.b64encode(gzip.compress(b" " * (65 << 20))).decode()}, 0),
    "one dropped read": (None, 1),
    "two dropped reads": (None, 2),
    "every read dropped": (None, 99),
}


@contextlib.asynccontextmanager
async def leader(tmp_path: Path, core: Any, *, lease: FakeLease | None = None,
                 actuator: FakeActuator | None = None, step_down_after_s: float | None = None,
                 cluster_cache: Any = None) -> AsyncIterator[controller.Controller]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml())
    settings = Settings(namespace="pd-autoscaler", identity="a", policy_file=policy, tick_s=0.05,
                        leader_election=lease is not None, lease_duration_s=3,
                        renew_deadline_s=2, retry_period_s=1, policy_poll_s=0.05)
    source = FakeMetricsSource()
    source.ready[(POOL, ROLE)] = 4
    source.set_totals(POOL, ROLE, queue_depth=0)  # idle: the decision alone would scale down
    act = actuator or FakeActuator(WorkloadStatus(replicas=4, ready=4, pending=0))
    built: list[controller.Controller] = []
    # Fenced as factory.on_cluster fences it: each shard write asks the lease right before.
    store = StateStore(core, namespace="pd-autoscaler", name="st", shards=4, timeout_s=1,
                       fence=lambda i: bool(built) and built[0].may_write_shard(i))
    c = controller.Controller(
        settings, api=NO_API, source=source, telemetry=Telemetry(), actuator=act,
        events=FakeEvents(), serve_http=False, lease=lease,
        step_down_after_s=step_down_after_s, cluster_cache=cluster_cache, state_store=store)
    built.append(c)
    task = asyncio.create_task(c.run())
    try:
        yield c
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def fast_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff waits of the controller's retries shrunk a hundredfold (the order is kept)."""
    real = backoff.sleep

    async def quick(seconds: float, *, wake: asyncio.Event | None = None) -> None:
        await real(seconds / 100, wake=wake)

    monkeypatch.setattr(backoff, "sleep", quick)


@pytest.mark.parametrize("case", sorted(STATE_CASES))
async def test_unreadable_state_never_stops_the_leader(
        case: str, tmp_path: Path, fast_sleep: None) -> None:
    """Malformed or unreachable state: the leader ticks anyway (zero ticks lost), seeded from
    the replicas running now, so it does not scale down within the stabilization window (zero
    wrong scale-downs); the unreadable ConfigMap is overwritten by a valid state."""
    data, drops = STATE_CASES[case]
    if case.startswith("shard:"):
        core = FlakyStateCore(shard=data)
    else:  # the legacy single ConfigMap, read for migration
        core = FlakyStateCore(saved_state() if data is None else data)
    core.read_errors = [aiohttp.ServerDisconnectedError()] * drops
    async with leader(tmp_path, core) as c:
        await until(lambda: c.ticks >= 5, f"{case}: ticking")
        assert not any(n < 4 for _, n, _ in c.actuator.scales), "no scale-down after a reset"  # type: ignore[attr-defined]
        await until(lambda: core.doc(POOL_SHARD, STATE_KEY) is not None, "state saved")
        # A valid state replaced the bad one, in the pool's shard.
        saved = ScaleState.from_json(core.doc(POOL_SHARD, STATE_KEY) or "")
        assert POOL in saved.pools
        json.loads(core.doc(POOL_SHARD, LAST_SCALE_KEY) or "")
        assert "tick" not in c.health.failing


async def test_leader_that_cannot_tick_reports_and_hands_over(
        tmp_path: Path, fast_sleep: None) -> None:
    """Every tick raises (an API error nobody mapped): /readyz names it, the leader retries,
    and after the bound it releases the Lease and stays out for one lease duration."""
    lease = FakeLease()
    actuator = FakeActuator(WorkloadStatus(replicas=4, ready=4, pending=0))
    actuator.fail = RuntimeError("API answered garbage")
    async with leader(tmp_path, FlakyStateCore(), lease=lease, actuator=actuator,
                      step_down_after_s=0.3) as c:
        lease.grant()
        await until(lambda: "tick" in c.health.failing, "tick failure reported")
        ok, detail = c.health.ready()
        assert not ok
        assert "tick failing" in detail
        assert "API answered garbage" in detail
        await until(lambda: lease.releases >= 1, "lease handed over")
        assert c.step_downs >= 1
        assert not c.health.leader
        # The API recovers: leading again (no standby took it), the failure clears.
        actuator.fail = None
        lease.grant()
        await until(lambda: c.ticks >= 3 and "tick" not in c.health.failing, "leading again")


async def test_unsynced_cluster_cache_is_in_readyz_and_ticks_go_on(
        tmp_path: Path, fast_sleep: None) -> None:
    """The watch cache follows the policy's Deployments; while its list is refused (an RBAC
    without list/watch) /readyz names it and the leader keeps ticking; once it lists, it
    clears."""
    from autoscaler.controller.cluster_cache import DeploymentCache, Scope  # noqa: PLC0415
    from tests.unit.test_cluster_cache import FakeApi, dep  # noqa: PLC0415

    class Forbidden(FakeApi):
        """Refuses every list until `granted`."""

        granted = False

        async def list(self, scope: Scope) -> tuple[list[dict[str, Any]], str]:
            if not self.granted:
                raise ApiException(status=403, reason="Forbidden")
            return await super().list(scope)

    api = Forbidden([], [])
    cache = DeploymentCache(api, reconcile_s=0.01)
    async with leader(tmp_path, FlakyStateCore(), cluster_cache=cache) as c:
        # The cache's watch may fail before the first state read marks the API server reached
        # (under load it does), and /readyz names that first; wait for both.
        await until(lambda: c.health.api_reachable
                    and any(k.startswith("cluster-cache") for k in c.health.failing),
                    "the cache's failure reported")
        ok, detail = c.health.ready()
        assert not ok
        assert "not synced: ApiException" in detail
        await until(lambda: c.ticks >= 3, "ticking meanwhile")
        ref = c.policy.pools[0].roles[ROLE].deployment  # type: ignore[union-attr]
        api.lists.append(([dep(ref.name, 4, 10, ns=ref.namespace)], "10"))
        api.granted = True
        await until(cache.synced, "listed")
        await until(lambda: not c.health.failing, "readyz clear")
        assert cache.lookup(ref)[1] is not None


class CountingActuator(FakeActuator):
    def __init__(self) -> None:
        super().__init__(WorkloadStatus(replicas=4, ready=4, pending=0))
        self.reads = 0

    async def status(self, ref: Any) -> WorkloadStatus:
        self.reads += 1
        return await super().status(ref)


async def test_without_election_failing_ticks_back_off_and_stay_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Lease to hand over: the failing ticks are reported and retried with backoff, past
    the hand-over bound too (never a zero wait: no tight loop)."""
    waits: list[float] = []
    real = backoff.sleep

    async def recorded(seconds: float, *, wake: asyncio.Event | None = None) -> None:
        waits.append(seconds)
        await real(seconds / 100, wake=wake)

    monkeypatch.setattr(backoff, "sleep", recorded)
    actuator = CountingActuator()
    actuator.fail = RuntimeError("API answered garbage")
    async with leader(tmp_path, FlakyStateCore(), actuator=actuator,
                      step_down_after_s=0.01) as c:
        # Generous: each failed tick logs a rich traceback, about 1 s each on a loaded machine
        # (the 10-s default timed out at a load average of 12).
        await until(lambda: actuator.reads >= 3, "retried twice", timeout_s=60)
        assert "tick" in c.health.failing
        assert c.step_downs == 0
    # The retry waits after the 1st and 2nd failed tick: 2 and 4 ticks (tick_s 0.05), not cut
    # to zero by the hand-over bound that does not apply here.
    assert any(abs(w - 0.1) < 1e-9 for w in waits), waits
    assert any(abs(w - 0.2) < 1e-9 for w in waits), waits


async def test_no_observed_pool_counts_as_a_failed_tick(tmp_path: Path, fast_sleep: None) -> None:
    lease = FakeLease()
    actuator = FakeActuator(WorkloadStatus(replicas=4, ready=4, pending=0))
    actuator.fail = errors.ActuationUnavailable("deployments/d: HTTP 503")
    async with leader(tmp_path, FlakyStateCore(), lease=lease, actuator=actuator,
                      step_down_after_s=0.3) as c:
        lease.grant()
        await until(lambda: "no pool observed" in c.health.failing.get("tick", ""), "reported")
        await until(lambda: lease.releases >= 1, "lease handed over")
        assert c.ticks >= 1  # the ticks ran (Loop contains the pool's errors) but saw nothing


# --- the fence before every write -----------------------------------------------------------


def test_on_cluster_wires_the_fence_into_every_writer() -> None:
    """The real actuator (each scale PATCH and its 409 retry), the real state store (each
    ConfigMap write) and the leader EndpointSlice (our address) ask the lease right before
    writing."""
    s = Settings(namespace="x", identity="a", leader_election=True,
                 leader_endpointslice="lead", pod_ip="10.0.0.7")
    c = factory.on_cluster(s, api=NO_API, source=FakeMetricsSource(),
                           telemetry=Telemetry())
    assert c.leader_endpoint is not None
    actuator_fence = c.actuator._fence  # type: ignore[attr-defined]
    state_fence = c.state_store._fence  # type: ignore[attr-defined]
    endpoint_fence = c.leader_endpoint._fence
    assert endpoint_fence is not None
    fences = [lambda: actuator_fence(REF), lambda: state_fence(3), endpoint_fence]
    assert all(not f() for f in fences)  # the lease is not held
    lease = FakeLease()
    lease.holder = True
    c.lease = lease
    assert all(f() for f in fences)


async def test_state_writes_are_fenced() -> None:
    core: Any = FlakyStateCore()
    held = [True]
    store = StateStore(core, namespace="ns", name="st", shards=2, timeout_s=1,
                       owns=lambda _i: held[0])
    decision = SimpleNamespace(pools={})
    await store.load(mono_now=0, wall_now=0)
    state = ScaleState(pools={POOL: {ROLE: RoleState(last_replicas=4)}})
    await store.save(state, decision, mono_now=0, wall_now=0, identity="a")  # type: ignore[arg-type]
    assert set(core.cms) == {"st-0", "st-1"}  # both shards written: each differs from nothing
    before = {n: dict(cm.binary_data) for n, cm in core.cms.items()}
    held[0] = False
    state = ScaleState(pools={POOL: {ROLE: RoleState(last_replicas=5)}})
    with pytest.raises(errors.ActuationError, match="fence closed"):
        await store.save(state, decision, mono_now=5, wall_now=5, identity="a")  # type: ignore[arg-type]
    assert core.writes == 0  # the two first writes were creates
    assert {n: cm.binary_data for n, cm in core.cms.items()} == before


async def test_deposed_leader_with_hanging_renewals_stops_writing_state(
        tmp_path: Path) -> None:
    """The lease stops being renewed (held() turns False) while the leading task still runs: no
    state write and no scale goes out after that."""
    lease = FakeLease()
    core = FlakyStateCore()
    async with leader(tmp_path, core, lease=lease) as c:
        lease.grant()
        await until(lambda: c.ticks >= 2, "leading")
        lease.holder = False  # renewals hang: the fence closes, the task is not cancelled yet
        writes, scales, ticks = core.writes, len(c.actuator.scales), c.ticks  # type: ignore[attr-defined]
        c.source.set_totals(POOL, ROLE, queue_depth=40)  # type: ignore[attr-defined]
        await until(lambda: c.ticks >= ticks + 5, "still ticking")
        assert core.writes == writes
        assert len(c.actuator.scales) == scales  # type: ignore[attr-defined]


# --- the leader EndpointSlice ---------------------------------------------------------------


@pytest.mark.parametrize("dropped", [
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientPayloadError("cut"),
    ApiException(status=500),
    ValueError("unexpected body"),
])
async def test_leader_endpoint_survives_a_dropped_patch(dropped: BaseException) -> None:
    api = FakeDiscovery([])
    api.patch_errors = [dropped]
    pub = LeaderEndpoint(api, name="lead", namespace="ns", address="10.0.0.7",  # type: ignore[arg-type]
                         timeout_s=1, max_backoff_s=0.01)
    pub.set(leader=True)
    pub.start()
    try:
        await until(lambda: pub.has is True, "the slice points here after the dropped PATCH")
        assert api.writes == [["10.0.0.7"]]
        assert pub.failures == 1
    finally:
        await pub.stop()


# --- a scale conflict -----------------------------------------------------------------------


class ConflictActuator(FakeActuator):
    """An operator sets 10 between our read and our write, once: the actuator reports the
    conflict (as actuator/kubernetes.py does) and the cluster now says 10."""

    def __init__(self) -> None:
        super().__init__(WorkloadStatus(replicas=4, ready=4, pending=0))
        self.conflicts = 1

    async def scale(self, ref: Any, replicas: int, *, reason: str) -> None:
        if self.conflicts:
            self.conflicts -= 1
            self.default = WorkloadStatus(replicas=10, ready=10, pending=0)
            msg = "replicas changed from 4 to 10 since they were read"
            raise errors.ActuationConflict(msg)
        await super().scale(ref, replicas, reason=reason)


async def test_scale_conflict_re_decides_on_the_next_tick(tmp_path: Path) -> None:
    """The controller does not retry its old number over the operator's: the next tick decides
    on 10 (queue 40 / target 2 = 20 wanted, bounded by max 8 -> the decision starts from 10)."""
    act = ConflictActuator()
    async with leader(tmp_path, FlakyStateCore(), actuator=act) as c:
        c.source.set_totals(POOL, ROLE, queue_depth=12)  # type: ignore[attr-defined]
        await until(lambda: c.ticks >= 4, "ticking")
        assert act.conflicts == 0
        # Every write after the conflict was decided on the operator's 10, none re-sent 6 over it.
        assert all(n != 6 for _, n, _ in act.scales)
        assert c.loop is not None
        assert c.loop.state.role(POOL, ROLE).last_replicas == 10
        assert "tick" not in c.health.failing
        # The tick's whole metrics fetch is bounded too (a stalled source is missing data).
        assert c.loop.fetch_deadline_s == pytest.approx(
            controller.FETCH_SHARE_OF_TICK * c.settings.tick_s)
