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


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What an Event is about."""

    kind: str
    name: str
    namespace: str
    api_version: str = "v1"
    uid: str | None = None

    @classmethod
    def deployment(cls, ref: DeploymentRef, uid: str | None = None) -> ObjectRef:
        return cls("Deployment", ref.name, ref.namespace, "apps/v1", uid)


class EventSink(Protocol):
    """Where the controller records Events for humans (`kubernetes.EventRecorder`; tests:
    `testing.FakeEvents`). Best effort: returns False instead of raising."""

    async def record(self, obj: ObjectRef, *, reason: str, message: str,
                     warning: bool = False) -> bool: ...


class ClusterActuator(Actuator, Protocol):
    """An actuator that also knows the uid of what it last read (so Events point at it)."""

    def uid(self, ref: DeploymentRef) -> str | None:
        """The Deployment's uid from the last read; None if never read."""
        ...
