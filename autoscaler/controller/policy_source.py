"""Where the policy comes from: a file (polled) or labelled ConfigMaps (list + watch).

Each document is validated on its own (`policy/load.py`); an invalid one keeps its last good
version, and several documents merge into one `PolicyFile` (`PolicyDocs`). The controller reads
`current` and `version` at the top of each tick, so a new policy applies on the next tick.
Every replica watches (a standby is ready to take over); only the leader records Events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler import telemetry as telemetry_mod
from autoscaler.actuator.base import EventSink, ObjectRef
from autoscaler.controller import backoff
from autoscaler.controller.settings import Settings
from autoscaler.policy.load import parse_policy, parse_policy_async
from autoscaler.server import app as app_mod
from autoscaler.spec import PolicyFile

log = structlog.get_logger(__name__)

POLICY_SUFFIXES = (".yaml", ".yml")

class PolicyDocs:
    """The policy documents in force (one per ConfigMap key, or the file), last good each.

    Several documents are merged into one PolicyFile (pools concatenated, cross-document rules
    such as "one Deployment, one role" re-validated). File-level fields: `dry_run` holds for all
    pools if any document asks for it (a document that wants shadow mode must never be acted
    on); `gpu_budget` is only allowed in a single document.
    """

    def __init__(self) -> None:
        self.docs: dict[str, PolicyFile] = {}

    def merged(self, docs: Mapping[str, PolicyFile] | None = None) -> PolicyFile | None:
        docs = self.docs if docs is None else docs
        if not docs:
            return None
        if len(docs) == 1:
            return next(iter(docs.values()))
        ordered = [docs[k] for k in sorted(docs)]
        budgets = [k for k in sorted(docs) if docs[k].gpu_budget is not None]
        if budgets:
            raise errors.ConfigError([
                f"{k}: gpu_budget: a file-level budget needs a single policy document; "
                f"{len(docs)} are loaded (use pools[].gpu_budget)" for k in budgets
            ])
        data = {
            "dry_run": any(d.dry_run for d in ordered),
            "pools": [p.model_dump(mode="json") for d in ordered for p in d.pools],
        }
        try:
            return PolicyFile.model_validate(data)
        except ValueError as exc:
            raise errors.ConfigError([f"merged policy documents {sorted(docs)}: {exc}"]) from exc

    def propose(self, updates: Mapping[str, str], removed: Sequence[str] = ()
                ) -> tuple[dict[str, PolicyFile], list[str]]:
        """Validate `updates` (key -> YAML text) on top of the current documents; return the
        candidate set and the problems. Invalid documents keep their last good version."""
        parsed: dict[str, PolicyFile] = {}
        problems: list[str] = []
        for key, text in updates.items():
            try:
                parsed[key] = parse_policy(text, source=key)
            except Exception as exc:  # any failure is this document's problem
                problems.extend(_problems(key, exc))
        return self.combine(parsed, removed, problems)

    async def propose_async(self, updates: Mapping[str, str], removed: Sequence[str] = ()
                            ) -> tuple[dict[str, PolicyFile], list[str]]:
        """`propose`, each document parsed in a worker thread: a 1 MiB policy takes seconds to
        validate, on the event loop that renews the lease and answers the probes."""
        parsed: dict[str, PolicyFile] = {}
        problems: list[str] = []
        for key, text in updates.items():
            try:
                parsed[key] = await parse_policy_async(text, source=key)
            except Exception as exc:  # any failure is this document's problem
                problems.extend(_problems(key, exc))
        return self.combine(parsed, removed, problems)

    def combine(self, parsed: Mapping[str, PolicyFile], removed: Sequence[str],
                problems: list[str]) -> tuple[dict[str, PolicyFile], list[str]]:
        docs = {k: v for k, v in self.docs.items() if k not in removed}
        docs.update(parsed)
        try:
            self.merged(docs)
        except errors.ConfigError as exc:
            problems.extend(exc.problems)
            return dict(self.docs), problems
        return docs, problems


def _problems(key: str, exc: Exception) -> list[str]:
    """A parse failure as problems naming the document. The loader reports bad input as
    `ConfigError`; anything else (a `RecursionError` from a document nested 1,000 deep, a
    `MemoryError`) is reported the same way rather than ending the watch that met it."""
    if isinstance(exc, errors.ConfigError):
        return list(exc.problems)
    return [f"{key}: cannot be loaded: {type(exc).__name__}: {exc}"[:500]]


class PolicySource:
    """The policy in force (`current`, bumped `version` on every change) and the watch that
    keeps it current. `watch()` runs until cancelled."""

    def __init__(self, settings: Settings, *, api: ApiClient, health: app_mod.Health,
                 telemetry: telemetry_mod.Telemetry, events: EventSink,
                 is_leader: Callable[[], bool]) -> None:
        self.settings = settings
        self.health = health
        self.telemetry = telemetry
        self.events = events
        self.docs = PolicyDocs()
        self.current: PolicyFile | None = None
        self.version = 0
        self._api = api
        self._is_leader = is_leader
        self._resource_versions: dict[str, str] = {}
        self._changed = asyncio.Event()

    async def wait(self) -> PolicyFile:
        while self.current is None:
            self._changed.clear()
            await self._changed.wait()
        return self.current

    def publish(self, policy: PolicyFile | None) -> None:
        if policy is not None and self.settings.dry_run and not policy.dry_run:
            policy = policy.model_copy(update={"dry_run": True})
        self.current = policy
        self.version += 1
        self.health.policy_loaded = policy is not None
        self._changed.set()

    async def watch(self) -> None:
        """Until cancelled: the policy file's poll or the ConfigMap watch, restarted with
        backoff after any failure and reported in /readyz (as `policy-watch`) while it keeps
        failing; the documents judged so far stay in force meanwhile."""
        await backoff.supervise("policy-watch", self._watch_once, report=self.health.report)

    async def _watch_once(self) -> None:
        if self.settings.policy_file is not None:
            await self._poll_policy_file(self.settings.policy_file)
        else:
            await self._watch_configmaps()

    async def _poll_policy_file(self, path: Path) -> None:
        seen: tuple[float, int] | None = None
        key = str(path)
        while True:
            try:
                # A stat and a small read: not worth a thread.
                st = path.stat()  # noqa: ASYNC240
                stamp = (st.st_mtime, st.st_size)
            except OSError as exc:
                stamp = None
                self.health.problem = f"{path}: {exc.strerror or exc}"
            if stamp is not None and stamp != seen:
                seen = stamp
                try:
                    text = path.read_text(encoding="utf-8")  # noqa: ASYNC240
                except (OSError, UnicodeDecodeError) as exc:
                    self._reject([f"{path}: cannot read: {exc}"], source=key)
                else:
                    await self._offer({key: text}, (), source=key)
            await backoff.sleep(self.settings.policy_poll_s)

    async def _offer(self, updates: Mapping[str, str], removed: Sequence[str], *, source: str
                     ) -> list[str]:
        docs, problems = await self.docs.propose_async(updates, removed)
        if problems:
            self._reject(problems, source=source)
        if docs != self.docs.docs or self.current is None:
            self.docs.docs = docs
            merged = self.docs.merged()
            if merged != self.current or merged is None:
                self.publish(merged)
                if merged is not None:
                    self.telemetry.config_reload(ok=True)
                    log.info("policy_loaded", source=source,
                             pools=[p.name for p in merged.pools], dry_run=merged.dry_run)
        return problems

    def _reject(self, problems: Sequence[str], *, source: str) -> None:
        self.health.problem = problems[0] if problems else ""
        self.telemetry.config_reload(ok=False)
        log.error("policy_rejected", source=source, problems=list(problems),
                  kept="last good policy" if self.current is not None else "none")

    async def _watch_configmaps(self) -> None:
        """List + watch labelled ConfigMaps; re-list on 410 Gone or any watch failure."""
        core = client.CoreV1Api(self._api)
        s = self.settings
        delays = backoff.Delays()
        while True:
            try:
                listing = await core.list_namespaced_config_map(
                    s.namespace, label_selector=s.policy_selector,
                    _request_timeout=s.api_timeout_s,
                )
                self.health.api_reachable = True
                await self._sync_configmaps(listing.items)
                rv = listing.metadata.resource_version
                delays.reset()
                w = watch.Watch()
                async with w.stream(core.list_namespaced_config_map, s.namespace,
                                    label_selector=s.policy_selector, resource_version=rv,
                                    timeout_seconds=300) as stream:
                    async for event in stream:
                        kind = event["type"]
                        obj = event["object"]
                        if kind == "ERROR":
                            # A raw Status object: 410 Gone means our resourceVersion is too old.
                            log.info("policy_watch_error", status=getattr(obj, "code", obj))
                            break
                        if kind == "DELETED":
                            await self._drop_configmap(obj.metadata.name)
                        elif kind in ("ADDED", "MODIFIED"):
                            await self._sync_configmap(obj)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("policy_watch_expired")
                    continue
                delay = delays.next()
                log.warning("policy_watch_failed", status=exc.status, error=exc.reason,
                            retry_in_s=delay)
                self.health.problem = f"policy ConfigMaps: HTTP {exc.status} {exc.reason}"
                await backoff.sleep(delay)
            except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                # A connection cut mid-stream (`ClientPayloadError`) included: re-list and
                # watch again. Anything else ends this run; `watch()`'s supervisor restarts it.
                delay = delays.next()
                log.warning("policy_watch_failed", error=repr(exc), retry_in_s=delay)
                await backoff.sleep(delay)

    @staticmethod
    def _doc_key(cm_name: str, key: str) -> str:
        return f"configmap/{cm_name}/{key}"

    async def _sync_configmaps(self, items: Sequence[Any]) -> None:
        present = {cm.metadata.name for cm in items}
        for name in {k.split("/")[1] for k in self.docs.docs} - present:
            await self._drop_configmap(name)
        for cm in items:
            await self._sync_configmap(cm)
        if not items and self.current is None:
            self.health.problem = (f"no ConfigMap labelled {self.settings.policy_selector} in "
                                   f"{self.settings.namespace}")

    async def _drop_configmap(self, name: str) -> None:
        prefix = self._doc_key(name, "")
        gone = [k for k in self.docs.docs if k.startswith(prefix)]
        self._resource_versions.pop(name, None)
        if gone:
            log.warning("policy_removed", configmap=name, documents=gone)
            await self._offer({}, gone, source=f"configmap/{name}")

    async def _sync_configmap(self, cm: Any) -> None:
        name = cm.metadata.name
        if name == self.settings.state_configmap:
            # The one ConfigMap the controller may write: were it labelled as policy, the
            # controller could write its own policy. Never loaded.
            log.warning("policy_label_on_state_ignored", configmap=name)
            return
        rv = cm.metadata.resource_version
        if self._resource_versions.get(name) == rv:
            return  # a re-list replays objects we have already judged
        self._resource_versions[name] = rv
        data: Mapping[str, str] = cm.data or {}
        prefix = self._doc_key(name, "")
        updates = {self._doc_key(name, k): v for k, v in data.items()
                   if k.endswith(POLICY_SUFFIXES)}
        ignored = sorted(k for k in data if not k.endswith(POLICY_SUFFIXES))
        if ignored:
            log.warning("policy_keys_ignored", configmap=name, keys=ignored,
                        hint=f"policy keys must end in {' or '.join(POLICY_SUFFIXES)}")
        removed = [k for k in self.docs.docs if k.startswith(prefix) and k not in updates]
        problems = await self._offer(updates, removed, source=f"configmap/{name}")
        if not self._is_leader():
            return  # only the leader writes, Events included; every replica logs
        ref = ObjectRef("ConfigMap", name, self.settings.namespace, "v1",
                             cm.metadata.uid)
        if problems:
            await self.events.record(
                ref, reason="PolicyRejected", warning=True,
                message="invalid policy, last good policy kept: " + "; ".join(problems),
            )
        else:
            await self.events.record(ref, reason="PolicyApplied",
                                     message=f"policy from {name} validated and applied")

