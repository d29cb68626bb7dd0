"""The metric-source protocol: the controller's eyes, whether Prometheus or the simulator.

A source answers, for a set of roles, one `SignalSample` per signal key. It never decides what
missing data means: it reports it (value None, or fewer replicas than ready) and the core holds.
It raises `MetricsUnavailable` only when it could not answer at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

# The signal keys are vocabulary (the core and the forecast policy read samples by them), so they
# live with the types and the schema; a source reports under them. Re-exported for the adapters.
from autoscaler.spec import signal_key
from autoscaler.types import (
    GENERATION_TOKENS_RATE,
    PROMPT_LENGTH_CV,
    PROMPT_TOKENS_RATE,
    RATE_KEYS,
    REQUEST_RATE,
    Role,
    SignalSample,
)

__all__ = [
    "GENERATION_TOKENS_RATE",
    "PROMPT_LENGTH_CV",
    "PROMPT_TOKENS_RATE",
    "RATE_KEYS",
    "REQUEST_RATE",
    "ErrorSink",
    "MetricsSource",
    "RoleSamples",
    "RoleTarget",
    "signal_key",
]

if TYPE_CHECKING:
    from autoscaler.spec import RoleSpec

@dataclass(frozen=True, slots=True)
class RoleTarget:
    """A role whose signals a source must fetch."""

    pool: str
    role: Role
    spec: RoleSpec
    extra: tuple[str, ...] = ()
    """Optional keys the role's policies read besides its signals and RATE_KEYS (e.g.
    PROMPT_LENGTH_CV), reported when the source can; a missing one is a policy's fallback, not
    missing data."""


RoleSamples = Mapping[tuple[str, Role], Mapping[str, SignalSample]]


class MetricsSource(Protocol):
    async def fetch(self, targets: Sequence[RoleTarget], *, now: float) -> RoleSamples:
        """Samples for every target: each configured signal (by `signal_key`) plus RATE_KEYS."""
        ...


class ErrorSink(Protocol):
    """Where a source reports a failed or refused query (the controller's telemetry counts them).

    A protocol, so the metrics adapters report problems without importing the telemetry module
    that sits above them."""

    def metric_source_error(self, *, query: str, reason: str) -> None: ...


def rate_window_of(source: object) -> float | None:
    """The window (seconds) a source's rates and histogram quantiles are taken over, where it
    says (a `rate_window_s` attribute: PrometheusSource, SimMetricsSource), also behind a
    wrapper that keeps the source as `inner` (telemetry's InstrumentedSource); None if not."""
    for candidate in (source, getattr(source, "inner", None)):
        w = getattr(candidate, "rate_window_s", None)
        if isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0:
            return float(w)
    return None
