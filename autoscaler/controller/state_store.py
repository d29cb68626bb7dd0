"""The state ConfigMap: the decision state across restarts and leaders, and the last decision.

Why a ConfigMap of the controller's namespace (`pd-autoscaler-state`) and not Deployment
annotations: writing an annotation needs `patch deployments`, and RBAC cannot limit a patch to
metadata, so that grant would also allow rewriting the Pod template of every model server.

`ScaleState` timestamps are monotonic seconds; they are saved as wall-clock
(`shifted(time.time() - monotonic())`) and shifted back on restore, so a new leader keeps the
stabilization windows and rate-limit history of the old one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

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
                 timeout_s: float) -> None:
        self._core = core
        self.namespace = namespace
        self.name = name
        self._timeout_s = timeout_s
        self._exists: bool | None = None
        self.last_scale: dict[str, Any] = {}

    async def load(self, *, mono_now: float, wall_now: float) -> ScaleState:
        """The saved state on the monotonic clock; a fresh one if none or unreadable."""
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
        with contextlib.suppress(ValueError):
            self.last_scale = dict(json.loads(data.get(LAST_SCALE_KEY, "{}")))
        raw = data.get(STATE_KEY)
        if not raw:
            return ScaleState()
        try:
            saved = ScaleState.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("state_unreadable", configmap=self.name, error=str(exc))
            return ScaleState()
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
        try:
            await self._core.create_namespaced_config_map(
                self.namespace, body, _request_timeout=self._timeout_s
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._exists = True

