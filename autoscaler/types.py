"""Frozen value types shared by every stage: collect -> decide -> actuate.

The decision core sees the world only through these types: an `Observation` of each pool
(what Kubernetes says about its replicas, what the metric source says about its load) goes in,
a `Decision` with its reasons comes out. No type here imports an I/O client, so the simulator,
the Prometheus source and the Kubernetes actuator all meet in the same vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """The part of a model server a Deployment plays."""

    PREFILL = "prefill"
    DECODE = "decode"
    # One Deployment doing both phases (plain vLLM, not disaggregated).
    AGGREGATED = "aggregated"


class SignalName(StrEnum):
    """The vLLM signals a reactive policy can target.

    `value` semantics (what the metric source must deliver, per role):
    - QUEUE_DEPTH: mean `vllm:num_requests_waiting` per reporting replica (requests).
    - BATCHED_TOKENS: mean tokens per engine step (`vllm:iteration_tokens_total` sum/count)
      divided by the role's `max_num_batched_tokens`, averaged over replicas (0-1, can exceed 1
      only through measurement noise).
    - KV_CACHE: mean `vllm:kv_cache_usage_perc` (0-1).
    - RUNNING: mean `vllm:num_requests_running` per replica (requests).
    - TTFT / ITL: a latency quantile over the role's replicas (seconds); these are SLO guards.
    - PROMPT_TOKENS_RATE / GENERATION_TOKENS_RATE: prompt (prefill) or generated (decode) tokens
      per second, SUMMED over the role's replicas (`rate(vllm:prompt_tokens_total)`); the target
      is per replica. Throughput is the flow signal production P/D systems scale on (HeteroScale:
      decode tokens/s): it measures work done, is bounded by what the replicas can process, and
      does not saturate at a step's token budget the way batched_tokens does.
    """

    QUEUE_DEPTH = "queue_depth"
    BATCHED_TOKENS = "batched_tokens"
    KV_CACHE = "kv_cache"
    RUNNING = "running"
    TTFT = "ttft"
    ITL = "itl"
    PROMPT_TOKENS_RATE = "prompt_tokens_rate"
    GENERATION_TOKENS_RATE = "generation_tokens_rate"


# A queue is a stock, not a flow: while capacity is short it keeps growing at (arrivals -
# service), so `ceil(total / target)` keeps rising during a GPU cold start even when the
# replicas already requested will absorb it. The core treats stock signals specially while
# replicas are pending (see decision/core.py).
STOCK_SIGNALS: frozenset[SignalName] = frozenset({SignalName.QUEUE_DEPTH})

# Latency quantiles are not additive over replicas and say nothing linear about how many
# replicas fewer would do: they can push up (guard) and veto a scale-down, never drive one.
GUARD_SIGNALS: frozenset[SignalName] = frozenset({SignalName.TTFT, SignalName.ITL})

# Signals whose sample value is a sum over the role's replicas rather than a per-replica mean.
TOTAL_SIGNALS: frozenset[SignalName] = frozenset(
    {SignalName.PROMPT_TOKENS_RATE, SignalName.GENERATION_TOKENS_RATE}
)


@dataclass(frozen=True, slots=True)
class SignalSample:
    """One signal of one role at one tick, as the metric source saw it.

    `value` is None when the data is missing (no series, NaN, stale, query error).
    `replicas` is how many replicas contributed; fewer than the role's ready replicas means the
    data is partial, which the core treats as "may scale up, never down".
    """

    value: float | None
    replicas: int = 0
    detail: str = ""

    @property
    def missing(self) -> bool:
        return self.value is None or math.isnan(self.value) or math.isinf(self.value)


@dataclass(frozen=True, slots=True)
class RoleObservation:
    """What is known about one role of one pool at one tick.

    `replicas` is the Deployment's desired count (spec, from the scale subresource): it includes
    replicas that are still starting. `ready` counts replicas that serve; `pending` those requested
    but not yet ready (Pending pods, cold-starting containers).
    """

    replicas: int
    ready: int
    pending: int = 0
    signals: Mapping[str, SignalSample] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolObservation:
    roles: Mapping[Role, RoleObservation]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the core is given at one tick, for every pool of a policy file."""

    taken_at: float
    pools: Mapping[str, PoolObservation]
    held: Mapping[str, Mapping[Role, int]] = field(default_factory=dict)
    """Replicas (spec.replicas) of pools observed but not decided this tick (paused by an
    operator): they still hold their GPUs, so the file-wide budget counts them."""


@dataclass(frozen=True, slots=True)
class Need:
    """One source's opinion (a signal, a forecast, a plug-in) on a role's replica count.

    `want` is the replicas this source asks for now (already equal to `current` when the source
    sits inside its tolerance band). `keep` is the fewest replicas it would still accept after a
    scale-down: the consolidation rule (the remaining replicas must sit under target*(1-tolerance)).
    `stock` marks needs derived from accumulating signals (a queue, a latency quantile);
    `windowed` those computed over a trailing window (latency quantiles), which keep reporting
    a burst for the length of the window after capacity arrived. `blocks_down` is set by a
    source that has no trustworthy data: it freezes the role at no fewer than the current replicas.
    """

    source: str
    want: int
    keep: int
    value: float | None
    target: float | None
    stock: bool = False
    blocks_down: bool = False
    note: str = ""
    windowed: bool = False

    def describe(self) -> str:
        if self.value is None or self.target is None:
            return f"{self.source}: {self.note or 'no data'}"
        return f"{self.source}={self.value:.4g} target={self.target:.4g} -> {self.want}"


@dataclass(frozen=True, slots=True)
class RoleDecision:
    """The outcome for one role, with every number's reason.

    `recommended` is the raw need (max over sources), `desired` the value after hysteresis,
    limits, budget and coupling. `driver` names the source that set `recommended`; `clipped_by`
    lists the rules that moved the number between the two, in pipeline order.
    """

    role: Role
    current: int
    ready: int
    pending: int
    recommended: int
    desired: int
    driver: str
    clipped_by: tuple[str, ...]
    needs: tuple[Need, ...]
    panic: bool = False

    @property
    def changed(self) -> bool:
        return self.desired != self.current

    @property
    def reason(self) -> str:
        """One line for logs and Events: what drove the number and what clipped it."""
        clip = f"; clipped by {', '.join(self.clipped_by)}" if self.clipped_by else ""
        return f"{self.current}->{self.desired}: {self.driver}{clip}"


@dataclass(frozen=True, slots=True)
class PoolDecision:
    pool: str
    roles: Mapping[Role, RoleDecision]
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    at: float
    pools: Mapping[str, PoolDecision]
    failed: Mapping[str, str] = field(default_factory=dict)
    """Pools whose decision raised (a plug-in's bug, an arithmetic corner nobody foresaw):
    pool -> the error. They are left undecided this tick, keep their state, and the other
    pools are decided as usual."""
