"""The actuator protocol: the controller's hands, whether Kubernetes or the simulator.

An actuator reads a Deployment's replica status and writes its desired replicas (on Kubernetes,
only through the scale subresource). It never second-guesses the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from autoscaler.spec import DeploymentRef


@dataclass(frozen=True, slots=True)
class WorkloadStatus:
    """A Deployment's replicas as the cluster reports them.

    `replicas` is spec.replicas; `ready` the replicas serving; `pending` those requested but not
    ready (Pending pods, cold starts). `paused` means an operator asked us to leave it alone.
    """

    replicas: int
    ready: int
    pending: int
    paused: bool = False


class Actuator(Protocol):
    async def status(self, ref: DeploymentRef) -> WorkloadStatus:
        """Current replica status; raises ActuationError (or a subclass) when it cannot tell."""
        ...

    async def scale(self, ref: DeploymentRef, replicas: int, *, reason: str) -> None:
        """Set the desired replicas; raises ActuationError when refused."""
        ...
