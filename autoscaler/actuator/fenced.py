"""The fence: an actuator that refuses writes unless this replica still holds the lease."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from autoscaler import errors

if TYPE_CHECKING:
    from autoscaler.actuator.base import Actuator, WorkloadStatus
    from autoscaler.spec import DeploymentRef

class FencedActuator:
    """Passes reads through; refuses writes unless `may_write()` (the lease is still ours)."""

    def __init__(self, inner: Actuator, may_write: Callable[[], bool]) -> None:
        self.inner = inner
        self._may_write = may_write

    async def status(self, ref: DeploymentRef) -> WorkloadStatus:
        return await self.inner.status(ref)

    async def scale(self, ref: DeploymentRef, replicas: int, *, reason: str) -> None:
        if not self._may_write():
            msg = "not the leader (lease not renewed within the renew deadline): write refused"
            raise errors.ActuationError(msg)
        await self.inner.scale(ref, replicas, reason=reason)

