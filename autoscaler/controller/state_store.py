"""The state ConfigMap: the decision state across restarts and leaders, and the last decision.

Why a ConfigMap of the controller's namespace (`pd-autoscaler-state`) and not Deployment
annotations: writing an annotation needs `patch deployments`, and RBAC cannot limit a patch to
metadata, so that grant would also allow rewriting the Pod template of every model server.

`ScaleState` timestamps are monotonic seconds; they are saved as wall-clock
(`shifted(time.time() - monotonic())`) and shifted back on restore, so a new leader keeps the
stabilization windows and rate-limit history of the old one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler.decision.state import ScaleState
from autoscaler.types import Decision

log = structlog.get_logger(__name__)

STATE_KEY = "state.json"
LAST_DECISION_KEY = "last-decision.json"
LAST_SCALE_KEY = "last-scale.json"


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
    """The last decision per pool and role, as saved next to the state (kubectl-readable)."""
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


class StateStore:
    """The state ConfigMap: `state.json` (ScaleState, wall clock), `last-decision.json`,
    `last-scale.json`. Read on gaining leadership, written by the leader only."""

    def __init__(self, core: client.CoreV1Api, *, namespace: str, name: str,
                 timeout_s: float, fence: Callable[[], bool] | None = None) -> None:
        self._core = core
        # Checked immediately before each write: a deposed leader whose renewals hang must not
        # keep overwriting the new leader's state (26 writes by each were measured without it).
        self._fence = fence
        self.namespace = namespace
        self.name = name
        self._timeout_s = timeout_s
        self._exists: bool | None = None
        self.last_scale: dict[str, Any] = {}

    async def load(self, *, mono_now: float, wall_now: float) -> ScaleState:
        """The saved state on the monotonic clock; a fresh one if there is none.
        `StateUnreadable` if it cannot be read as a state (the controller replaces it)."""
        try:
            cm = await self._core.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=self._timeout_s
            )
        except ApiException as exc:
            if exc.status == 404:
                self._exists = False
                log.info("state_none", configmap=self.name)
                return ScaleState()
            raise
        self._exists = True
        data: Mapping[str, str] = cm.data or {}
        self.last_scale = _last_scale(data.get(LAST_SCALE_KEY), configmap=self.name)
        raw = data.get(STATE_KEY)
        if not raw:
            return ScaleState()
        try:
            saved = ScaleState.from_json(raw)
        except ValueError as exc:
            msg = f"configmap {self.name}: {STATE_KEY}: {exc}"
            raise StateUnreadable(msg) from exc
        state = saved.shifted(mono_now - wall_now)
        log.info("state_restored", configmap=self.name, pools=sorted(state.pools))
        return state

    async def save(self, state: ScaleState, decision: Decision, *, mono_now: float,
                   wall_now: float, identity: str) -> None:
        data = {
            STATE_KEY: state.shifted(wall_now - mono_now).to_json(),
            LAST_DECISION_KEY: json.dumps(decision_status(decision, wall=wall_now),
                                          sort_keys=True),
            LAST_SCALE_KEY: json.dumps(self.last_scale, sort_keys=True),
        }
        annotations = {"pd-autoscaler.io/saved-by": identity,
                       "pd-autoscaler.io/saved-at": rfc3339(wall_now)}
        if self._exists is not False:
            self._check_fence()
            try:
                await self._core.patch_namespaced_config_map(
                    self.name, self.namespace,
                    {"metadata": {"annotations": annotations}, "data": data},
                    _request_timeout=self._timeout_s,
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
            else:
                self._exists = True
                return
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name=self.name, namespace=self.namespace, annotations=annotations,
                labels={"app.kubernetes.io/name": "pd-autoscaler",
                        "app.kubernetes.io/component": "state"},
            ),
            data=data,
        )
        self._check_fence()
        try:
            await self._core.create_namespaced_config_map(
                self.namespace, body, _request_timeout=self._timeout_s
            )
        except ApiException as exc:
            if exc.status == 403:
                # The shipped Role has no `create configmaps` (manifests ship this ConfigMap).
                log.error("state_configmap_missing", configmap=self.name,
                          namespace=self.namespace,
                          hint="apply manifests/base/controller/state-configmap.yaml")
            if exc.status != 409:
                raise
        self._exists = True

    def _check_fence(self) -> None:
        if self._fence is not None and not self._fence():
            msg = f"configmap {self.name}: fence closed (no longer the leader); state not written"
            raise errors.ActuationError(msg)


class StateUnreadable(ValueError):
    """The state ConfigMap holds something that is not a state (a hand edit, a bad restore)."""


def _last_scale(raw: str | None, *, configmap: str) -> dict[str, Any]:
    """`last-scale.json` as pool -> role -> object, or {} (with a warning) when it is not that:
    it is a record for people (`kubectl get`), never a reason to stop the leader."""
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
