"""The metric-source protocol: the controller's eyes, whether Prometheus or the simulator.

A source answers, for a set of roles, one `SignalSample` per signal key. It never decides what
missing data means: it reports it (value None, or fewer replicas than ready) and the core holds.
It raises `MetricsUnavailable` only when it could not answer at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from autoscaler.types import Role, SignalName, SignalSample

if TYPE_CHECKING:
    from autoscaler.spec import RoleSpec, SignalSpec

# Rates every source reports for every role, besides the configured signals: the forecast
# policies and the dashboards use them. Units: requests/s, prompt tokens/s, generated tokens/s,
# summed over the role's replicas.
REQUEST_RATE = "request_rate"
PROMPT_TOKENS_RATE = "prompt_tokens_rate"
GENERATION_TOKENS_RATE = "generation_tokens_rate"
RATE_KEYS: tuple[str, ...] = (REQUEST_RATE, PROMPT_TOKENS_RATE, GENERATION_TOKENS_RATE)


def signal_key(spec: SignalSpec) -> str:
    """The key a signal's sample is reported under: `queue_depth`, ..., `ttft_p90`, `itl_p50`."""
    if spec.signal in (SignalName.TTFT, SignalName.ITL):
        return f"{spec.signal.value}_p{round(spec.quantile * 100):d}"
    return spec.signal.value


@dataclass(frozen=True, slots=True)
class RoleTarget:
    """A role whose signals a source must fetch."""

    pool: str
    role: Role
    spec: RoleSpec


RoleSamples = Mapping[tuple[str, Role], Mapping[str, SignalSample]]


class MetricsSource(Protocol):
    async def fetch(self, targets: Sequence[RoleTarget], *, now: float) -> RoleSamples:
        """Samples for every target: each configured signal (by `signal_key`) plus RATE_KEYS."""
        ...
