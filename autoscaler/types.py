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
    - BATCHED_TOKENS: mean tokens per observation of `vllm:iteration_tokens_total` (its
      sum/count rates) divided by the role's `max_num_batched_tokens`, averaged over replicas.
      vLLM V1 observes that histogram once per engine step that emitted output, with the step's
      generated tokens plus the WHOLE prompt of every request whose prefill completed in it;
      steps that only ran a chunk of a longer prompt are not observed. So on a decode role it is
      the running batch (one token per sequence per step), but on a prefill or aggregated role
      it measures the prompt-length mix, not load: one prompt longer than target x budget reads
      above the target on an idle replica, and long prompts keep asking for replicas, up to
      max_replicas. `validate` warns about it there; no shipped policy targets it on prefill
      (they scale prefill on PROMPT_TOKENS_RATE, a forecast of it, or the slo kind).
    - KV_CACHE: mean `vllm:kv_cache_usage_perc` (0-1).
    - RUNNING: mean `vllm:num_requests_running` per replica (requests).
    - TTFT / ITL: a latency quantile over the role's replicas (seconds); these are SLO guards.
    - TTFT_RELATIVE: the SLO's relative form, TTFT against the prompt's own prefill time: the
      TTFT quantile over max(floor / slowdown, the same quantile of vLLM's per-request prefill
      time, `request_prefill_time_seconds`), compared with the slowdown as target; at or under
      it, TTFT_q <= max(floor, slowdown x prefill_q). A guard that a 60k-token prompt can meet,
      where an absolute TTFT target cannot be met on any number of replicas. (A ratio of
      quantiles, not the quantile of each request's ratio: exact when TTFT and prefill time
      rise together with the prompt's length.)
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
    TTFT_RELATIVE = "ttft_relative"
    PROMPT_TOKENS_RATE = "prompt_tokens_rate"
    GENERATION_TOKENS_RATE = "generation_tokens_rate"


# A queue is a stock, not a flow: while capacity is short it keeps growing at (arrivals -
# service), so `ceil(total / target)` keeps rising during a GPU cold start even when the
# replicas already requested will absorb it. The core treats stock signals specially while
# replicas are pending (see decision/core.py).
STOCK_SIGNALS: frozenset[SignalName] = frozenset({SignalName.QUEUE_DEPTH})

# Latency quantiles are not additive over replicas and say nothing linear about how many
# replicas fewer would do: they can push up (guard) and veto a scale-down, never drive one.
GUARD_SIGNALS: frozenset[SignalName] = frozenset(
    {SignalName.TTFT, SignalName.ITL, SignalName.TTFT_RELATIVE}
)

# Signals whose sample value is a sum over the role's replicas rather than a per-replica mean.
TOTAL_SIGNALS: frozenset[SignalName] = frozenset(
    {SignalName.PROMPT_TOKENS_RATE, SignalName.GENERATION_TOKENS_RATE}
)

# Rates every source reports for every role, besides the configured signals: the forecast
# policies and the dashboards use them. Units: requests/s, prompt tokens/s, generated tokens/s,
# summed over the role's replicas.
REQUEST_RATE = "request_rate"
PROMPT_TOKENS_RATE = "prompt_tokens_rate"
GENERATION_TOKENS_RATE = "generation_tokens_rate"
RATE_KEYS: tuple[str, ...] = (REQUEST_RATE, PROMPT_TOKENS_RATE, GENERATION_TOKENS_RATE)
# The coefficient of variation of the prompt lengths of the requests finished in the rate window,
# from vLLM's `request_prompt_tokens` histogram (metrics/lengths.py). An optional key: sources
# report it for roles whose policies ask for it (`Policy.extra_keys`, e.g. the slo kind), and a
# consumer falls back when it is missing.
PROMPT_LENGTH_CV = "prompt_length_cv"


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


class Clip(StrEnum):
    """Why `desired` moved away from `recommended`: one fixed code per rule of the pipeline.

    The values are the strings the decisions have always carried (logs, Events, the status
    ConfigMap) and the `clipped_by` label of `pd_autoscaler_decisions_total`."""

    PANIC_NO_SCALE_DOWN = "panic-no-scale-down"
    SCALE_UP_STABILIZED = "scale-up-stabilized"
    SCALE_DOWN_STABILIZED = "scale-down-stabilized"
    SCALE_UP_LIMIT = "scale-up-limit"
    SCALE_DOWN_LIMIT = "scale-down-limit"
    MIN_REPLICAS = "min-replicas"
    MAX_REPLICAS = "max-replicas"
    RATIO = "ratio"
    POOL_GPU_BUDGET = "pool-gpu-budget"
    GPU_BUDGET = "gpu-budget"


@dataclass(frozen=True, slots=True)
class Clipped:
    """One clip: the rule and its parameters (the ratio's "1:3"); `str()` is its prose."""

    code: Clip
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.code.value} {self.detail}" if self.detail else self.code.value


class DriverKind(StrEnum):
    """What set `recommended`: a need pushing up, every need holding, the need allowing the
    fewest removals, or missing data (hold; after a while, the configured floor)."""

    SCALE_UP = "scale-up"
    HOLD = "hold"
    SCALE_DOWN = "scale-down"
    MISSING_DATA = "missing-data"
    MISSING_DATA_FLOOR = "missing-data-floor"


# A need's source becomes a Prometheus label value only if it is this tame (sources come from
# the policy: signal keys, `forecast:<series>`, plug-in names); anything else is "other".
_LABEL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:/-")


@dataclass(frozen=True, slots=True)
class Driver:
    """Why a role's `recommended` is what it is, as data: the kind, the need that decided (if
    one did), the missing-data numbers, and notes (a pending cap, a silent policy's reason).

    `render()` is the prose of logs, Events and the status ConfigMap; `label()` the bounded
    value of the `driver` metric label. Neither is ever parsed back."""

    kind: DriverKind
    need: Need | None = None
    missing_for_s: float | None = None
    floor: int | None = None
    notes: tuple[str, ...] = ()

    def noted(self, note: str) -> Driver:
        return Driver(self.kind, self.need, self.missing_for_s, self.floor, (*self.notes, note))

    def label(self) -> str:
        if self.kind in (DriverKind.MISSING_DATA, DriverKind.MISSING_DATA_FLOOR):
            return self.kind.value
        if self.need is None:
            return "none"
        source = self.need.source
        return source if source and set(source) <= _LABEL_SAFE else "other"

    def render(self) -> str:
        n = self.need
        match self.kind:
            case DriverKind.MISSING_DATA:
                text = "hold: all signals missing"
            case DriverKind.MISSING_DATA_FLOOR:
                text = f"missing data for {self.missing_for_s or 0:.0f}s: floor {self.floor}"
            case DriverKind.SCALE_UP if n is not None:
                text = n.describe()
            case DriverKind.HOLD if n is not None:
                text = f"hold: {n.describe()}" + (f" ({n.note})" if n.note else "")
            case DriverKind.SCALE_DOWN if n is not None:
                text = f"scale-down: {n.describe()} keep {n.keep}"
            case _:
                text = ""
        return "".join([text, *(f"; {note}" for note in self.notes)])


@dataclass(frozen=True, slots=True)
class RoleDecision:
    """The outcome for one role, with every number's reason.

    `recommended` is the raw need (max over sources), `desired` the value after hysteresis,
    limits, budget and coupling. `cause` says what set `recommended`; `clips` lists the rules
    that moved the number between the two, in pipeline order. `driver` and `clipped_by` are
    their prose.
    """

    role: Role
    current: int
    ready: int
    pending: int
    recommended: int
    desired: int
    cause: Driver
    clips: tuple[Clipped, ...]
    needs: tuple[Need, ...]
    panic: bool = False

    @property
    def driver(self) -> str:
        return self.cause.render()

    @property
    def clipped_by(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.clips)

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
