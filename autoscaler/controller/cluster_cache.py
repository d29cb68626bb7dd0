"""The watch cache of target Deployments: the tick reads replicas from memory, not 2,000 GETs.

Why: at 1,000 pools one GET per Deployment and tick cost ≥ 3.6 CPU-s per 15-s tick, most of it
deserialising V1Deployment models (issue 16). Here each watched scope is listed once, then
followed by a watch from the list's resourceVersion; only changes cross the wire, and each is
kept as a five-field `DeploymentRecord` parsed from the raw JSON (no model deserialisation).

Scopes: per namespace holding targets. A namespace with at most `by_name_max` targets is watched
per Deployment with `fieldSelector=metadata.name=<name>` (so RBAC can keep `list`/`watch` on
those names only, as `get` is today); a namespace with more gets one watch on its Deployments,
narrowed by `label_selector` when the operator sets one. Deployments in a scope that are not
targets are ignored (never stored).

Following a scope (`_follow`), the client-go reflector's contract:
- list (a consistent read: no `resourceVersion=0`, which the API server may answer from a cache
  older than what this replica already saw), replace the scope's records, mark it synced;
- watch from the list's resourceVersion with bookmarks (`allowWatchBookmarks`): a quiet scope's
  resourceVersion still advances, so a reconnect rarely falls out of the server's window;
- the server ends the watch (its `timeoutSeconds`, an API server restart): resume from the last
  resourceVersion, no re-list;
- 410 Gone (the resourceVersion was compacted away): re-list at once;
- any other error: the scope is marked not synced (the actuator then GETs, so a broken watch
  degrades to the old cost, never to stale reads), `/readyz` says why, and the scope is
  re-listed after a bounded exponential backoff (`backoff.Delays`).
Every failure is caught, logged and retried in the loop itself (the `backoff.supervise`
contract); cancellation escapes.

A stale record can never cause a wrong write: the actuator's write is a compare-and-swap on
`spec.replicas` against the record's replicas (actuator/kubernetes.py), so a scale made by
someone else whose event has not arrived yet fails the swap, and the next tick re-decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from autoscaler.actuator.kubernetes import DeploymentRecord, record_of
from autoscaler.controller import backoff
from autoscaler.spec import DeploymentRef

log = structlog.get_logger(__name__)

Event = Mapping[str, Any]


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): the scope must be re-listed."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One list+watch: a namespace, narrowed by name (field selector) or by labels."""

    namespace: str
    name: str | None = None
    label_selector: str | None = None

    @property
    def field_selector(self) -> str | None:
        return f"metadata.name={self.name}" if self.name else None

    def __str__(self) -> str:
        what = f"deployments/{self.name}" if self.name else "deployments"
        sel = f" -l {self.label_selector}" if self.label_selector and not self.name else ""
        return f"{what} in {self.namespace}{sel}"


class DeploymentApi(Protocol):
    """The two calls a scope is followed with (`KubeDeploymentApi`; tests: a scripted fake)."""

    async def list(self, scope: Scope) -> tuple[list[Event], str]:
        """The scope's Deployments (raw JSON objects) and the list's resourceVersion."""
        ...

    def watch(self, scope: Scope, resource_version: str) -> AsyncIterator[Event]:
        """Watch events (`{"type", "object"}`) from `resource_version` until the server ends
        the stream; an ERROR event is yielded as it came."""
        ...


class KubeDeploymentApi:
    """`DeploymentApi` on AppsV1Api, reading raw JSON (`_preload_content=False`) so that no
    V1Deployment model is ever built."""

    def __init__(self, apps: client.AppsV1Api, *, timeout_s: float = 10.0,
                 watch_timeout_s: int = 300) -> None:
        self._apps = apps
        self._timeout_s = timeout_s
        self.watch_timeout_s = watch_timeout_s

    def _selectors(self, scope: Scope) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if scope.field_selector:
            out["field_selector"] = scope.field_selector
        if scope.label_selector and not scope.name:
            out["label_selector"] = scope.label_selector
        return out

    async def list(self, scope: Scope) -> tuple[list[Event], str]:
        resp: Any = await self._apps.list_namespaced_deployment(
            scope.namespace, **self._selectors(scope), _preload_content=False,
            _request_timeout=self._timeout_s)
        try:
            await _check(resp)
            doc = json.loads(await resp.read())
        finally:
            resp.release()
        return list(doc.get("items") or []), str(doc["metadata"]["resourceVersion"])

    async def watch(self, scope: Scope, resource_version: str) -> AsyncIterator[Event]:
        resp: Any = await self._apps.list_namespaced_deployment(
            scope.namespace, **self._selectors(scope), watch=True,
            resource_version=resource_version, allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout_s, _preload_content=False,
            # The server ends the watch at timeout_seconds; the client gives it some slack and
            # then treats silence as a dead connection.
            _request_timeout=self.watch_timeout_s + 30)
        try:
            await _check(resp)
            while line := await resp.content.readline():
                if line.strip():
                    yield json.loads(line)
        finally:
            resp.release()


@dataclass(slots=True)
class ScopeState:
    """What the cache knows of one scope, and counters the tests and /readyz read."""

    synced: bool = False
    resource_version: str | None = None
    names: set[str] = field(default_factory=set)
    lists: int = 0
    resumes: int = 0
    gone: int = 0
    errors: int = 0
    problem: str = ""


class DeploymentCache:
    """A `DeploymentReader` for `KubernetesActuator`, fed by one list+watch per scope.

    `run(targets)` follows the scopes that `targets()` (the current policy's Deployments) needs,
    re-checking it every `reconcile_s`: a hot reload that adds a namespace starts its watch, one
    that removes it stops it. `report(name, why)` is the controller's `Health.report`: a scope
    that is not synced makes `/readyz` 503 and says why.
    """

    def __init__(self, api: DeploymentApi, *, report: backoff.Report | None = None,
                 label_selector: str | None = None, by_name_max: int = 4,
                 reconcile_s: float = 1.0, delays: Callable[[], backoff.Delays] | None = None
                 ) -> None:
        self._api = api
        self.report = report or (lambda _name, _why: None)
        self.label_selector = label_selector
        self.by_name_max = by_name_max
        self.reconcile_s = reconcile_s
        self._delays = delays or (lambda: backoff.Delays(initial_s=1.0, max_s=30.0))
        self._records: dict[tuple[str, str], DeploymentRecord] = {}
        self._targets: frozenset[tuple[str, str]] = frozenset()
        self._scope_of: dict[tuple[str, str], Scope] = {}
        self.scopes: dict[Scope, ScopeState] = {}
        self._tasks: dict[Scope, asyncio.Task[None]] = {}

    # -- reading (DeploymentReader) ------------------------------------------------------------

    def lookup(self, ref: DeploymentRef) -> tuple[bool, DeploymentRecord | None]:
        key = (ref.namespace, ref.name)
        scope = self._scope_of.get(key)
        st = self.scopes.get(scope) if scope is not None else None
        if st is None or not st.synced:
            return False, None
        return True, self._records.get(key)

    def __len__(self) -> int:
        """Deployments held (targets only: others in a watched namespace are never stored)."""
        return len(self._records)

    def synced(self) -> bool:
        return bool(self.scopes) and all(s.synced for s in self.scopes.values())

    # -- following -------------------------------------------------------------------------------

    def scopes_for(self, refs: Iterable[DeploymentRef]) -> dict[tuple[str, str], Scope]:
        """The scope each target is followed in (see the module docstring)."""
        by_ns: dict[str, list[str]] = {}
        for r in refs:
            by_ns.setdefault(r.namespace, []).append(r.name)
        out: dict[tuple[str, str], Scope] = {}
        for ns, names in by_ns.items():
            for name in names:
                out[(ns, name)] = (Scope(ns, name=name) if len(names) <= self.by_name_max
                                   else Scope(ns, label_selector=self.label_selector))
        return out

    def set_targets(self, refs: Iterable[DeploymentRef]) -> None:
        """Follow exactly the scopes `refs` need: start new ones, stop the others."""
        scope_of = self.scopes_for(refs)
        if scope_of == self._scope_of:
            return
        self._scope_of = scope_of
        self._targets = frozenset(scope_of)
        wanted = set(scope_of.values())
        for scope in list(self._tasks):
            if scope not in wanted:
                self._tasks.pop(scope).cancel()
                self.scopes.pop(scope, None)
                self.report(_task_name(scope), None)
        for key in [k for k in self._records if k not in self._targets]:
            del self._records[key]
        for scope in wanted - set(self._tasks):
            self.scopes[scope] = ScopeState()
            self.report(_task_name(scope), "not synced yet (listing)")
            self._tasks[scope] = asyncio.create_task(self._follow(scope),
                                                     name=_task_name(scope))

    async def run(self, targets: Callable[[], Iterable[DeploymentRef]]) -> None:
        """Follow `targets()`'s scopes until cancelled (then every watch is stopped)."""
        try:
            while True:
                self.set_targets(targets())
                await backoff.sleep(self.reconcile_s)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop every watch; what is left is no longer followed, so nothing reads as synced."""
        for st in self.scopes.values():
            st.synced = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _follow(self, scope: Scope) -> None:
        st = self.scopes[scope]
        delays = self._delays()
        name = _task_name(scope)
        while True:
            try:
                if st.resource_version is None:
                    await self._list(scope, st)
                    delays.reset()
                    st.problem = ""
                    self.report(name, None)
                await self._watch(scope, st)
                st.resumes += 1  # the server ended the watch: resume from the last version
            except Gone as exc:
                st.gone += 1
                st.resource_version = None  # re-list at once; the records stay until then
                log.info("cache_relist", scope=str(scope), why=str(exc))
            except Exception as exc:  # every failure is retried after a bounded backoff
                st.errors += 1
                st.synced = False
                st.resource_version = None
                delay = delays.next()
                st.problem = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("cache_watch_failed", scope=str(scope), error=st.problem,
                            retry_in_s=delay)
                self.report(name, f"not synced: {st.problem} (retrying in {delay:g}s)")
                await backoff.sleep(delay)

    async def _list(self, scope: Scope, st: ScopeState) -> None:
        items, rv = await self._api.list(scope)
        fresh = {}
        for obj in items:
            rec = record_of(obj)
            key = (rec.namespace or scope.namespace, rec.name)
            if key in self._targets and self._scope_of.get(key) == scope:
                fresh[key] = rec
        for key in [k for k, s in self._scope_of.items() if s == scope]:
            self._records.pop(key, None)
        self._records.update(fresh)
        st.names = {k[1] for k in fresh}
        st.resource_version = rv
        st.lists += 1
        st.synced = True

    async def _watch(self, scope: Scope, st: ScopeState) -> None:
        assert st.resource_version is not None
        async for ev in self._api.watch(scope, st.resource_version):
            kind = ev.get("type")
            obj = ev.get("object") or {}
            if kind == "ERROR":
                code = obj.get("code")
                if code == 410:
                    raise Gone(str(obj.get("message", "resourceVersion too old")))
                msg = f"watch ERROR event: {code} {obj.get('reason')}: {obj.get('message')}"
                raise ApiException(status=code, reason=msg)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                rec = record_of(obj)
                key = (rec.namespace or scope.namespace, rec.name)
                if key in self._targets and self._scope_of.get(key) == scope:
                    if kind == "DELETED":
                        self._records.pop(key, None)
                        st.names.discard(rec.name)
                    else:
                        self._records[key] = rec
                        st.names.add(rec.name)
            if rv:
                st.resource_version = str(rv)


async def _check(resp: Any) -> None:
    """Raw responses (`_preload_content=False`) are not checked by the client: do it here."""
    if resp.status == 410:
        raise Gone(f"HTTP 410: {(await resp.text())[:200]}")
    if not 200 <= resp.status < 300:
        raise ApiException(status=resp.status, reason=(await resp.text())[:300])


def _task_name(scope: Scope) -> str:
    return f"cluster-cache {scope}"
