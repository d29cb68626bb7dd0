"""The fence: an actuator that refuses writes unless this replica still holds the lease (with
replica sharding: the lease of the bucket the written Deployment's pool belongs to)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from autoscaler import errors

if TYPE_CHECKING:
    from autoscaler.actuator.base import Actuator, WorkloadStatus
    from autoscaler.spec import DeploymentRef

class FencedActuator:
    """Passes reads through; refuses writes unless `may_write(ref)` (the lease that covers
    `ref` is still ours)."""

    def __init__(self, inner: Actuator, may_write: Callable[[DeploymentRef], bool]) -> None:
        self.inner = inner
        self._may_write = may_write

    async def status(self, ref: DeploymentRef) -> WorkloadStatus:
        return await self.inner.status(ref)

    async def scale(self, ref: DeploymentRef, replicas: int, *, reason: str) -> None:
        if not self._may_write(ref):
            msg = "not the leader (lease not renewed within the renew deadline): write refused"
            raise errors.ActuationError(msg)
        await self.inner.scale(ref, replicas, reason=reason)

