"""The policy schema: frozen, validated pydantic models (the vocabulary's ground floor).

One file describes one or more pools. Validation happens once, at the boundary: the core trusts
what comes out. Every field carries a description, which feeds `pd-autoscaler validate
--explain` and the JSON Schema export. This module is a leaf (it imports only `types` and
`errors`); reading YAML and validating each `policies:` entry with its kind's own model is
`autoscaler.policy.load`, where every error names the file, the field path and the value.
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from autoscaler.types import Role, SignalName

API_VERSION: Literal["pd-autoscaler.io/v1alpha1"] = "pd-autoscaler.io/v1alpha1"
KIND: Literal["AutoscalingPolicy"] = "AutoscalingPolicy"


# Sane ranges: every number a policy can set is bounded, so a typo (an extra zero, 1e308, inf)
# is an error naming the field instead of a fleet of 10**400 replicas or a target no float can
# divide by. The bounds sit far outside any real deployment.
MAX_REPLICAS = 10_000
"""Per role; the largest vLLM fleets are in the hundreds of replicas per model."""
MIN_TARGET = 1e-6
"""Smallest signal target: a microsecond, a millionth of the KV cache, 1e-6 tokens/s."""
MAX_TARGET = 1e9
"""Largest signal target, the same ceiling the metric source applies to sample values."""
MAX_TOLERANCE = 0.9
"""A deadband of +-90 % already means "almost never scale"; 0.9999999999999999 means never."""
MAX_RULE_VALUE = 10_000
"""Pods or percent per scaling-rule period."""
MAX_GPUS = 1_000_000
"""GPU budgets."""


class _Frozen(BaseModel):
    # allow_inf_nan=False: `inf`, `.nan` and numbers YAML parses to infinity (1e999) are
    # refused by every float field.
    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False
    )


class DeploymentRef(_Frozen):
    """The Deployment a role scales (through its scale subresource)."""

    namespace: str = Field(default="default", min_length=1, max_length=63)
    """Namespace of the Deployment."""
    name: str = Field(min_length=1, max_length=253)
    """Name of the Deployment."""


class SignalSpec(_Frozen):
    """One signal and its target per ready replica."""

    signal: SignalName
    """queue_depth | batched_tokens | kv_cache | running | ttft | itl | ttft_relative |
    prompt_tokens_rate | generation_tokens_rate."""
    target: float = Field(ge=MIN_TARGET, le=MAX_TARGET)
    """Target per ready replica: requests for queue_depth/running, a 0-1 fraction for
    batched_tokens/kv_cache, seconds for ttft/itl (the SLO the quantile must stay under),
    tokens per second for prompt_tokens_rate/generation_tokens_rate, the slowdown over the
    prompt's prefill time for ttft_relative (3: TTFT <= max(floor_s, 3 x prefill time))."""
    quantile: float = Field(default=0.9, ge=0.01, le=0.999)
    """For ttft/itl/ttft_relative only: which quantile of the latency histograms is compared."""
    floor_s: float | None = Field(default=None, ge=0.001, le=3600)
    """For ttft_relative only (default 0.5): the TTFT every request is allowed, however short
    its prompt: the guard holds TTFT_q <= max(floor_s, target x the prefill-time quantile)."""
    tolerance: float | None = Field(default=None, ge=0, le=MAX_TOLERANCE)
    """Overrides the role's tolerance for this signal."""

    @model_validator(mode="after")
    def _fraction_targets(self) -> SignalSpec:
        if self.signal in (SignalName.KV_CACHE, SignalName.BATCHED_TOKENS) and self.target > 1:
            msg = f"target {self.target} for {self.signal.value} is a 0-1 fraction; must be <= 1"
            raise ValueError(msg)
        if self.floor_s is not None and self.signal is not SignalName.TTFT_RELATIVE:
            msg = f"floor_s applies to ttft_relative only, not {self.signal.value}"
            raise ValueError(msg)
        if self.signal is SignalName.TTFT_RELATIVE and self.target <= 1:
            msg = (
                f"target {self.target} for ttft_relative is a slowdown over the prompt's "
                "prefill time; must be > 1"
            )
            raise ValueError(msg)
        return self


DEFAULT_RELATIVE_FLOOR_S = 0.5


def relative_floor_s(spec: SignalSpec) -> float:
    """A ttft_relative guard's divisor floor, floor_s / target, in whole milliseconds (the
    sources and the signal key use the same rounded number)."""
    floor = DEFAULT_RELATIVE_FLOOR_S if spec.floor_s is None else spec.floor_s
    return max(1, round(1000.0 * floor / spec.target)) / 1000.0


class ScalingRule(_Frozen):
    """A rate limit, as in the HPA's behavior policies: at most `value` pods (or percent of the
    replicas at the start of the period) added or removed within any `period_s` seconds."""

    type: Literal["pods", "percent"]
    """pods: an absolute number of replicas; percent: relative to the replicas a period ago."""
    value: int = Field(gt=0, le=MAX_RULE_VALUE)
    """How many pods, or which percentage."""
    period_s: float = Field(gt=0, le=3600)
    """Length of the sliding window the limit applies to, seconds."""


class Direction(_Frozen):
    """Stabilization and rate limits for one direction (up or down)."""

    stabilization_window_s: float = Field(ge=0, le=3600)
    """Up: the lowest recommendation over this window is used (a spike must persist).
    Down: the highest recommendation over this window is used (load must stay low)."""
    rules: tuple[ScalingRule, ...] = ()
    """Rate limits; empty means unlimited."""
    select: Literal["max", "min", "disabled"] = "max"
    """Which rule wins when several apply (the HPA's selectPolicy); disabled forbids the
    direction entirely."""


def _default_up() -> Direction:
    # The HPA's defaults: no up-stabilization, +4 pods or +100 % per 15 s, whichever is more.
    return Direction(
        stabilization_window_s=0,
        rules=(
            ScalingRule(type="pods", value=4, period_s=15),
            ScalingRule(type="percent", value=100, period_s=15),
        ),
    )


def _default_down() -> Direction:
    # The HPA's defaults: 300 s stabilization, -100 % per 15 s.
    return Direction(
        stabilization_window_s=300,
        rules=(ScalingRule(type="percent", value=100, period_s=15),),
    )


class Panic(_Frozen):
    """Panic mode (knative's): when a signal asks for `threshold` x the ready replicas, scale up
    at once, bypassing the up-stabilization window and rate limits; while in panic (for `window_s`
    after the burst was last seen) the role never scales down."""

    enabled: bool = True
    """Whether panic mode is on."""
    threshold: float = Field(default=2.0, gt=1, le=100)
    """Ratio of wanted to ready replicas that enters panic."""
    window_s: float = Field(default=60, gt=0, le=3600)
    """How long panic lasts after the last tick that met the threshold, seconds."""


class MissingData(_Frozen):
    """What to do when signals are missing (the metric source is down, series vanished).
    Missing data never lowers replicas: the role holds; optionally, after `floor_after_s` without
    any data, it is raised to at least `floor_replicas`."""

    floor_after_s: float | None = Field(default=None, gt=0, le=86400)
    """Seconds of all-signals-missing after which the floor applies; null disables the floor."""
    floor_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    """The floor (a scale-up only, never a scale-down)."""

    @model_validator(mode="after")
    def _both_or_none(self) -> MissingData:
        if (self.floor_after_s is None) != (self.floor_replicas is None):
            msg = "floor_after_s and floor_replicas must be set together"
            raise ValueError(msg)
        return self


class Behavior(_Frozen):
    """Hysteresis for one role."""

    tolerance: float = Field(default=0.1, ge=0, le=MAX_TOLERANCE)
    """Deadband: no scale-up while value/target <= 1+tolerance; a scale-down only to a count
    at which every signal stays <= target*(1-tolerance) (consolidation)."""
    scale_up: Direction = Field(default_factory=_default_up)
    """Scale-up stabilization and rate limits."""
    scale_down: Direction = Field(default_factory=_default_down)
    """Scale-down stabilization and rate limits."""
    panic: Panic = Field(default_factory=Panic)
    """Immediate scale-up on bursts."""
    consolidation: bool = True
    """Only remove replicas when the remaining ones would sit under target*(1-tolerance) for
    every signal; false uses the plain HPA formula for scale-down too."""
    count_pending: bool = True
    """Pending replicas are capacity on the way: while some are pending, stock signals (the
    queue, latency guards) cannot ask for more. False mimics the HPA, which has no such rule."""
    stock_max_step: float | None = Field(default=2.0, gt=1, le=100)
    """A queue says capacity is short, not by how much (a 10 s burst queues hundreds of requests
    the ready replicas drain in seconds): queue-driven scale-ups multiply the replicas by at most
    this per decision, and a queue spike alone never enters panic. Null mimics the HPA/KEDA."""
    stock_settle_s: float = Field(default=60, ge=0, le=3600)
    """After new replicas become ready, latency guards stay capped this long: their quantiles
    still hold the burst's requests for the length of the metric source's rate window (set it
    to that window). Only applies with count_pending."""


_SIGNAL_KEYS: dict[tuple[SignalName, float, float | None, float], str] = {}


def signal_key(spec: SignalSpec) -> str:
    """The key a signal's sample is reported under: `queue_depth`, ..., `ttft_p90`, `itl_p50`,
    `ttft_relative_p90_f167ms` (its divisor floor is part of what the source computes)."""
    # Asked for every signal of every role each tick (14,000 times at 1,000 pools): remembered
    # by the fields it is made of. Policies hold few distinct signals; the bound only guards
    # against a process that reloads ever-new targets for weeks.
    memo = (spec.signal, spec.quantile, spec.floor_s, spec.target)
    key = _SIGNAL_KEYS.get(memo)
    if key is None:
        if len(_SIGNAL_KEYS) > 10_000:
            _SIGNAL_KEYS.clear()
        key = _SIGNAL_KEYS[memo] = _signal_key(spec)
    return key


def _signal_key(spec: SignalSpec) -> str:
    if spec.signal is SignalName.TTFT_RELATIVE:
        ms = round(relative_floor_s(spec) * 1000)
        return f"{spec.signal.value}_p{round(spec.quantile * 100):d}_f{ms:d}ms"
    if spec.signal in (SignalName.TTFT, SignalName.ITL):
        return f"{spec.signal.value}_p{round(spec.quantile * 100):d}"
    return spec.signal.value


class PolicyRef(_Frozen):
    """A policy kind beyond the built-in reactive signals (e.g. `forecast`, or a plug-in).
    The rest of the mapping is validated by the kind's own config model."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str = Field(min_length=1)
    """Registered policy kind (built-in or from the `pd_autoscaler.policies` entry-point group)."""


class MetricMatch(_Frozen):
    """How this role's pods are found in Prometheus (vLLM has no role label)."""

    namespace: str | None = None
    """Namespace label to match; defaults to the Deployment's namespace."""
    pod_regex: str | None = None
    """Regex on the `pod` label; defaults to `<deployment name>-.*`."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra exact-match labels (e.g. a relabelled `role` or `model_name`)."""


# Policy kinds that read the role's own pods, like every built-in signal: nothing at zero replicas.
_POD_READING_KINDS = frozenset({"forecast"})


def _zero_needs_a_signal_at_zero(role: RoleSpec) -> None:
    """min_replicas 0 only with a source that reports at zero replicas (a plug-in reading a router
    or gateway metric): every built-in signal and the forecast are read from the role's pods, so
    a role at 0 would see nothing and stay at 0 for ever."""
    if role.min_replicas > 0 or any(p.kind not in _POD_READING_KINDS for p in role.policies):
        return
    msg = (
        "min_replicas 0: no signal exists at zero replicas (every built-in signal and the "
        "forecast are read from the role's own pods), so the role would stay at 0 for ever; "
        "use min_replicas >= 1, or add a plug-in policy kind that reads a router or gateway "
        "metric"
    )
    raise ValueError(msg)


class RoleSpec(_Frozen):
    """One role (prefill, decode or aggregated) of a pool."""

    deployment: DeploymentRef
    """The Deployment this role scales."""
    min_replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    """Lower bound on replicas."""
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS)
    """Upper bound on replicas."""
    gpus_per_replica: int = Field(default=1, ge=1, le=64)
    """GPUs one replica requests (its tensor-parallel size); used by GPU budgets."""
    max_num_batched_tokens: int = Field(default=8192, ge=1, le=10_000_000)
    """vLLM's --max-num-batched-tokens on these pods (not exported as a metric), the
    denominator of batched_tokens."""
    cold_start_s: float = Field(default=120, ge=0, le=3600)
    """Typical time from requesting a replica to its first served token; the forecast horizon."""
    signals: tuple[SignalSpec, ...] = ()
    """Reactive signals: each asks for ceil(total / target) replicas; the largest need wins."""
    policies: tuple[PolicyRef, ...] = ()
    """Further policy kinds (forecast, plug-ins), combined with the signals: scale-up takes the
    max, scale-down needs every source to agree."""
    behavior: Behavior = Field(default_factory=Behavior)
    """Hysteresis."""
    missing_data: MissingData = Field(default_factory=MissingData)
    """Missing-data behaviour."""
    metrics: MetricMatch = Field(default_factory=MetricMatch)
    """How this role's series are selected in Prometheus."""

    @model_validator(mode="after")
    def _check(self) -> RoleSpec:
        if self.min_replicas > self.max_replicas:
            msg = f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}"
            raise ValueError(msg)
        if not self.signals and not self.policies:
            msg = "a role needs at least one signal or policy"
            raise ValueError(msg)
        _zero_needs_a_signal_at_zero(self)
        seen: set[tuple[SignalName, float]] = set()
        for s in self.signals:
            key = (s.signal, s.quantile)
            if key in seen:
                msg = f"signal {s.signal.value} is listed twice"
                raise ValueError(msg)
            seen.add(key)
        floor = self.missing_data.floor_replicas
        if floor is not None and floor > self.max_replicas:
            msg = f"missing_data.floor_replicas {floor} > max_replicas {self.max_replicas}"
            raise ValueError(msg)
        return self


class Coupling(_Frozen):
    """How prefill and decode move: independently, or together at a fixed ratio."""

    mode: Literal["independent", "ratio"] = "independent"
    """independent: each role on its own signals; ratio: prefill:decode fixed, larger need wins."""
    prefill: int = Field(default=1, ge=1, le=64)
    """Prefill part of the ratio (ratio mode)."""
    decode: int = Field(default=1, ge=1, le=64)
    """Decode part of the ratio (ratio mode)."""

    @model_validator(mode="after")
    def _reduced(self) -> Coupling:
        if self.mode == "ratio" and math.gcd(self.prefill, self.decode) != 1:
            g = math.gcd(self.prefill, self.decode)
            msg = (
                f"ratio {self.prefill}:{self.decode} is not in lowest terms; "
                f"write {self.prefill // g}:{self.decode // g}"
            )
            raise ValueError(msg)
        return self


class PoolSpec(_Frozen):
    """A model served by a prefill and a decode Deployment, or by one aggregated Deployment."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Pool name (DNS label style); appears in metrics, logs and external metrics."""
    roles: dict[Role, RoleSpec]
    """`prefill` and `decode`, or `aggregated` alone."""
    coupling: Coupling = Field(default_factory=Coupling)
    """Independent or fixed-ratio scaling of prefill and decode."""
    gpu_budget: int | None = Field(default=None, ge=1, le=MAX_GPUS)
    """Most GPUs this pool may hold (sum of replicas x gpus_per_replica); null = unlimited."""

    @field_validator("roles")
    @classmethod
    def _role_set(cls, roles: dict[Role, RoleSpec]) -> dict[Role, RoleSpec]:
        keys = set(roles)
        if keys not in ({Role.PREFILL, Role.DECODE}, {Role.AGGREGATED}):
            got = ", ".join(sorted(k.value for k in keys)) or "none"
            msg = f"roles must be prefill+decode or aggregated alone; got {got}"
            raise ValueError(msg)
        return roles

    @model_validator(mode="after")
    def _check(self) -> PoolSpec:
        if self.coupling.mode == "ratio":
            if Role.AGGREGATED in self.roles:
                msg = "coupling.mode ratio needs prefill and decode roles"
                raise ValueError(msg)
            lo, hi = ratio_unit_bounds(self)
            if lo > hi:
                p, d = self.roles[Role.PREFILL], self.roles[Role.DECODE]
                msg = (
                    f"ratio {self.coupling.prefill}:{self.coupling.decode} is impossible within "
                    f"prefill [{p.min_replicas},{p.max_replicas}] and decode "
                    f"[{d.min_replicas},{d.max_replicas}]"
                )
                raise ValueError(msg)
        if self.gpu_budget is not None:
            floor = self.min_gpus()
            if floor > self.gpu_budget:
                msg = f"gpu_budget {self.gpu_budget} is below the {floor} GPUs min_replicas need"
                raise ValueError(msg)
        refs = [(r.deployment.namespace, r.deployment.name) for r in self.roles.values()]
        if len(set(refs)) != len(refs):
            msg = "two roles of one pool point at the same Deployment"
            raise ValueError(msg)
        return self

    def min_gpus(self) -> int:
        """GPUs the pool holds at its lower bounds (after the ratio, in ratio mode)."""
        if self.coupling.mode == "ratio":
            lo, _ = ratio_unit_bounds(self)
            return lo * self.unit_gpus()
        return sum(r.min_replicas * r.gpus_per_replica for r in self.roles.values())

    def unit_gpus(self) -> int:
        """GPUs of one ratio unit (prefill:decode = a:b -> a*gp + b*gd)."""
        p, d = self.roles[Role.PREFILL], self.roles[Role.DECODE]
        return (
            self.coupling.prefill * p.gpus_per_replica + self.coupling.decode * d.gpus_per_replica
        )


def ratio_unit_bounds(pool: PoolSpec) -> tuple[int, int]:
    """Smallest and largest number of ratio units k (prefill = a*k, decode = b*k) that respect
    both roles' bounds. Worked example: 1:3 with prefill [1,4], decode [2,9] ->
    k >= max(ceil(1/1), ceil(2/3)) = 1 and k <= min(4 // 1, 9 // 3) = 3."""
    a, b = pool.coupling.prefill, pool.coupling.decode
    p, d = pool.roles[Role.PREFILL], pool.roles[Role.DECODE]
    lo = max(-(-p.min_replicas // a), -(-d.min_replicas // b))
    hi = min(p.max_replicas // a, d.max_replicas // b)
    return lo, hi


class PolicyFile(_Frozen):
    """A policy file: one or more pools and what holds across them."""

    apiVersion: Literal["pd-autoscaler.io/v1alpha1"] = API_VERSION  # noqa: N815 - k8s style key
    """Schema version."""
    kind: Literal["AutoscalingPolicy"] = KIND
    """Document kind."""
    dry_run: bool = False
    """Shadow mode: decide and report, never write replicas."""
    gpu_budget: int | None = Field(default=None, ge=1, le=MAX_GPUS)
    """Most GPUs all pools of this file may hold together; null = unlimited."""
    pools: tuple[PoolSpec, ...] = Field(min_length=1)
    """The pools."""

    @model_validator(mode="after")
    def _check(self) -> PolicyFile:
        # Counter, not list.count: a 7,000-pool file spent seconds in the quadratic version.
        names = collections.Counter(p.name for p in self.pools)
        dup = sorted(n for n, c in names.items() if c > 1)
        if dup:
            msg = f"duplicate pool name(s): {', '.join(dup)}"
            raise ValueError(msg)
        refs = collections.Counter(
            (r.deployment.namespace, r.deployment.name)
            for p in self.pools
            for r in p.roles.values()
        )
        dup_refs = sorted(f"{ns}/{n}" for (ns, n), c in refs.items() if c > 1)
        if dup_refs:
            msg = f"Deployment(s) scaled by more than one role: {', '.join(dup_refs)}"
            raise ValueError(msg)
        if self.gpu_budget is not None:
            floor = sum(p.min_gpus() for p in self.pools)
            if floor > self.gpu_budget:
                msg = f"gpu_budget {self.gpu_budget} is below the {floor} GPUs min_replicas need"
                raise ValueError(msg)
        # Plug-in configs (`policies:` entries) are validated by their kinds' own models in
        # policy/load.py: the schema stays a leaf that knows no registry.
        return self

    # The name index behind `pool()`, built on first use. A cached_property, not a private
    # attribute: pydantic's equality ignores cached properties but compares private attributes,
    # and two equal policies must stay equal. It remembers which `pools` tuple it indexes,
    # because `model_copy(update={"pools": ...})` copies it along.
    @functools.cached_property
    def _pool_index(self) -> tuple[tuple[PoolSpec, ...], dict[str, PoolSpec]]:
        return self.pools, {p.name: p for p in self.pools}

    def pool(self, name: str) -> PoolSpec:
        """The pool called `name` (KeyError if none), in O(1): the tick and the exporters look
        up every pool once per tick, and a scan per lookup made 1,000 pools quadratic."""
        indexed, by_name = self._pool_index
        if indexed is not self.pools:
            del self.__dict__["_pool_index"]
            indexed, by_name = self._pool_index
        return by_name[name]
