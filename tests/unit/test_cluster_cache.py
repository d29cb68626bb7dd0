"""The Deployment watch cache on a scripted watch stream (the real-API version is
tests/e2e/test_cluster_cache_e2e.py): list-then-watch, resume after the server ends a watch,
re-list on 410, bounded backoff and /readyz on errors, scope choice, and the actuator reading
from it with its compare-and-swap still guarding every write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler.actuator import kubernetes as kube
from autoscaler.controller import backoff
from autoscaler.controller.cluster_cache import DeploymentCache, Gone, Scope
from autoscaler.spec import DeploymentRef

NS = "llm"
P = DeploymentRef(namespace=NS, name="p")
D = DeploymentRef(namespace=NS, name="d")


def dep(name: str, replicas: int, rv: int, *, ready: int | None = None, ns: str = NS
        ) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}",
                     "resourceVersion": str(rv)},
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": replicas if ready is None else ready},
    }


def ev(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(rv: int) -> dict[str, Any]:
    return ev("BOOKMARK", {"metadata": {"resourceVersion": str(rv)}})


def gone() -> dict[str, Any]:
    return ev("ERROR", {"code": 410, "reason": "Expired", "message": "too old resource version"})


END = "end"      # the server ends the watch (its timeoutSeconds)
HANG = "hang"    # the watch stays open with nothing to say


class FakeApi:
    """Scripted lists and watches. Each list pops `lists`; each watch pops `watches` (a list of
    events, ending with END, HANG or an exception). Records the resourceVersions watched from."""

    def __init__(self, lists: list[Any], watches: list[list[Any]]) -> None:
        self.lists = lists
        self.watches = watches
        self.watched_from: list[str] = []
        self.list_calls: list[Scope] = []

    async def list(self, scope: Scope) -> tuple[list[dict[str, Any]], str]:
        self.list_calls.append(scope)
        item = self.lists.pop(0) if self.lists else None
        if item is None:
            await asyncio.Event().wait()
        if isinstance(item, BaseException):
            raise item
        items, rv = item
        # As the API server does: only the scope's namespace, and its name when narrowed.
        return [o for o in items if o["metadata"]["namespace"] == scope.namespace
                and scope.name in (None, o["metadata"]["name"])], rv

    async def watch(self, scope: Scope, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        script = self.watches.pop(0) if self.watches else [HANG]
        for item in script:
            await asyncio.sleep(0)
            if item == END:
                return
            if item == HANG:
                await asyncio.Event().wait()
            if isinstance(item, BaseException):
                raise item
            yield item


@pytest.fixture(autouse=True)
def fast_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def sleep(seconds: float, *, wake: asyncio.Event | None = None) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(backoff, "sleep", sleep)
    return slept


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def replicas(cache: DeploymentCache, ref: DeploymentRef) -> tuple[bool, int | None]:
    synced, rec = cache.lookup(ref)
    return synced, (rec.status.replicas if rec is not None else None)


# (name, lists, watches, expected lookups of P and D, expected watched-from versions, lists made)
SCENARIOS: list[tuple[str, list[Any], list[list[Any]], dict[str, tuple[bool, int | None]],
                      list[str], int]] = [
    ("list then follow a scale by someone else",
     [([dep("p", 2, 10), dep("d", 3, 11), dep("other", 9, 12)], "12")],
     [[ev("MODIFIED", dep("p", 5, 13)), HANG]],
     {"p": (True, 5), "d": (True, 3)}, ["12"], 1),
    ("a deleted target is synced and absent",
     [([dep("p", 2, 10), dep("d", 3, 11)], "11")],
     [[ev("DELETED", dep("d", 3, 14)), HANG]],
     {"p": (True, 2), "d": (True, None)}, ["11"], 1),
    ("the server ends the watch: resume from the last version, no re-list",
     [([dep("p", 2, 10), dep("d", 3, 11)], "11")],
     [[ev("MODIFIED", dep("p", 4, 15)), END], [bookmark(20), END], [HANG]],
     {"p": (True, 4), "d": (True, 3)}, ["11", "15", "20"], 1),
    ("410 Gone as an ERROR event: re-list, then watch from the new list",
     [([dep("p", 2, 10), dep("d", 3, 11)], "11"), ([dep("p", 7, 30), dep("d", 3, 11)], "31")],
     [[gone()], [HANG]],
     {"p": (True, 7), "d": (True, 3)}, ["11", "31"], 2),
    ("410 Gone on the watch request itself: re-list",
     [([dep("p", 2, 10)], "10"), ([dep("p", 6, 40)], "40")],
     [[Gone("HTTP 410")], [HANG]],
     {"p": (True, 6), "d": (True, None)}, ["10", "40"], 2),
    ("an added target appears",
     [([dep("p", 2, 10)], "10")],
     [[ev("ADDED", dep("d", 1, 12)), HANG]],
     {"p": (True, 2), "d": (True, 1)}, ["10"], 1),
    ("an event for a non-target is ignored",
     [([dep("p", 2, 10), dep("d", 3, 11)], "11")],
     [[ev("MODIFIED", dep("other", 8, 12)), HANG]],
     {"p": (True, 2), "d": (True, 3)}, ["11"], 1),
    ("a failing first list: not synced (the actuator GETs), retried after a backoff",
     [ApiException(status=500)],
     [],
     {"p": (False, None), "d": (False, None)}, [], 2),
]


@pytest.mark.parametrize(("lists", "watches", "want", "watched", "n_lists"),
                         [pytest.param(*s[1:], id=s[0]) for s in SCENARIOS])
async def test_scenarios(lists: list[Any], watches: list[list[Any]],
                         want: dict[str, tuple[bool, int | None]], watched: list[str],
                         n_lists: int) -> None:
    api = FakeApi(lists, watches)
    cache = DeploymentCache(api, by_name_max=0)  # one watch on the namespace
    cache.set_targets([P, D])
    await settle()
    try:
        assert {n: replicas(cache, DeploymentRef(namespace=NS, name=n)) for n in want} == want
        assert api.watched_from == watched
        assert len(api.list_calls) == n_lists
    finally:
        await cache.stop()


async def test_watch_error_unsyncs_reports_backs_off_and_relists(
        fast_sleep: list[float]) -> None:
    reports: dict[str, str | None] = {}
    api = FakeApi(
        [([dep("p", 2, 10)], "10"), ApiException(status=503), ([dep("p", 9, 50)], "50")],
        [[ApiException(status=500, reason="boom")], [HANG]],
    )
    cache = DeploymentCache(api, report=reports.__setitem__)
    cache.set_targets([P])
    await settle()
    try:
        # list ok -> watch failed -> re-list failed -> re-list ok: backoff 1 s then 2 s.
        assert fast_sleep[:2] == [1.0, 2.0]
        assert replicas(cache, P) == (True, 9)
        assert reports == {f"cluster-cache {Scope(NS, name='p')}": None}
        st = cache.scopes[Scope(NS, name="p")]
        assert (st.lists, st.errors) == (2, 2)
    finally:
        await cache.stop()


async def test_not_synced_is_reported_until_the_first_list() -> None:
    reports: dict[str, str | None] = {}
    api = FakeApi([], [])  # the list never answers
    cache = DeploymentCache(api, report=reports.__setitem__)
    cache.set_targets([P])
    await settle()
    try:
        assert reports == {"cluster-cache deployments/p in llm": "not synced yet (listing)"}
        assert not cache.synced()
    finally:
        await cache.stop()


@pytest.mark.parametrize(("names", "label", "want"), [
    (["a", "b"], None, {Scope(NS, name="a"), Scope(NS, name="b")}),
    (["a", "b", "c", "d", "e"], None, {Scope(NS)}),
    (["a", "b", "c", "d", "e"], "app=vllm", {Scope(NS, label_selector="app=vllm")}),
])
def test_scope_choice(names: list[str], label: str | None, want: set[Scope]) -> None:
    cache = DeploymentCache(FakeApi([], []), label_selector=label)
    refs = [DeploymentRef(namespace=NS, name=n) for n in names]
    assert set(cache.scopes_for(refs).values()) == want
    assert {s.field_selector for s in want} <= {None, *(f"metadata.name={n}" for n in names)}


async def test_set_targets_stops_watches_no_longer_needed() -> None:
    both = [dep("p", 2, 10), dep("x", 1, 5, ns="other")]
    api = FakeApi([(both, "10"), (both, "10")], [])
    cache = DeploymentCache(api)
    x = DeploymentRef(namespace="other", name="x")
    cache.set_targets([P, x])
    await settle()
    assert replicas(cache, x) == (True, 1)
    cache.set_targets([P])
    await settle()
    assert set(cache.scopes) == {Scope(NS, name="p")}
    assert replicas(cache, x) == (False, None)
    await cache.stop()


# -- the actuator on the cache: reads from memory, writes by compare-and-swap -----------------


class Apps:
    """AppsV1Api stand-in holding the API server's truth; counts reads."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.gets = 0
        self.patches: list[Any] = []

    async def read_namespaced_deployment(self, name: str, ns: str, **_: Any) -> Any:
        from types import SimpleNamespace  # noqa: PLC0415

        self.gets += 1
        return SimpleNamespace(
            spec=SimpleNamespace(replicas=self.replicas),
            status=SimpleNamespace(ready_replicas=self.replicas),
            metadata=SimpleNamespace(annotations=None, uid="u", resource_version="1"))

    async def read_namespaced_deployment_scale(self, name: str, ns: str, **_: Any) -> Any:
        return await self.read_namespaced_deployment(name, ns)

    async def patch_namespaced_deployment_scale(self, name: str, ns: str, body: Any,
                                                **_: Any) -> None:
        for op in body:
            if op["op"] == "test" and self.replicas != op["value"]:
                raise ApiException(status=422)
        self.patches.append(body)
        self.replicas = next(op["value"] for op in body if op["op"] == "replace")


async def test_actuator_reads_the_cache_and_a_stale_cache_cannot_write() -> None:
    api = FakeApi([([dep("p", 4, 10)], "10")], [[HANG]])
    cache = DeploymentCache(api)
    cache.set_targets([P])
    await settle()
    apps = Apps(4)
    act = kube.KubernetesActuator(object(), apps=apps, reader=cache)  # type: ignore[arg-type]
    try:
        assert (await act.status(P)).replicas == 4
        assert apps.gets == 0
        # An operator scales to 10; the cache has not seen the event yet and still says 4.
        apps.replicas = 10
        assert (await act.status(P)).replicas == 4
        with pytest.raises(errors.ActuationConflict, match="HTTP 422"):
            await act.scale(P, 3, reason="t")
        assert apps.patches == []
        assert apps.replicas == 10
        # The event arrives; the next decision is made on 10 and its write goes through.
        cache._records[(NS, "p")] = kube.record_of(dep("p", 10, 11))
        assert (await act.status(P)).replicas == 10
        await act.scale(P, 8, reason="t")
        assert apps.replicas == 8
        assert apps.gets == 0  # neither reads nor writes needed a GET
    finally:
        await cache.stop()


@pytest.mark.parametrize(("lists", "expect"), [
    ([([dep("p", 4, 10)], "10")], "cache"),
    ([([], "10")], "missing"),
    ([ApiException(status=403)], "get"),
])
async def test_actuator_status_source(lists: list[Any], expect: str) -> None:
    api = FakeApi(lists, [[HANG]])
    cache = DeploymentCache(api)
    cache.set_targets([P])
    await settle()
    apps = Apps(6)
    act = kube.KubernetesActuator(object(), apps=apps, reader=cache)  # type: ignore[arg-type]
    try:
        if expect == "missing":
            with pytest.raises(errors.TargetNotFound, match="watch cache"):
                await act.status(P)
            return
        got = (await act.status(P)).replicas
        assert (got, apps.gets) == ((4, 0) if expect == "cache" else (6, 1))
    finally:
        await cache.stop()
