"""PromQL for the Prometheus source: one query per signal key per tick, whose size does not
depend on the number of pools.

vLLM has no role or pool label. Most roles need none: a Deployment's pods are named
`<deployment>-<pod-template-hash>-<5 random characters>` by its ReplicaSet, so the Deployment
can be read off the pod name. A query therefore has two halves, joined with `or` (their label
sets are disjoint, so neither hides the other):

- **derived roles** (no `pod_regex`, no `labels` in their `metrics:` section, a Deployment name
  short enough that Kubernetes does not truncate its pod names): each metric is selected once
  over the namespaces in play (`namespace=~"a|b"`, or every namespace past
  `MAX_NAMESPACES_IN_QUERY` of them, so the text never grows with pools), aggregated per pod,
  and `label_replace` copies the Deployment name out of the pod name into `pd_deployment`.
  Histograms are summed `by (namespace, pd_deployment, le)` inside Prometheus, so their answer
  is a few rows per Deployment, not pods x buckets. Python maps
  (namespace, pd_deployment) back to (pool, role), and ignores Deployments no role asked for.
- **selector roles** (a `metrics:` section that sets `pod_regex` or `labels`, or a Deployment
  name over `MAX_DERIVED_NAME` characters): as before, per role, the selector is tagged with
  `pd_pool` and `pd_role` through `label_replace` and the roles are joined with `or`. Each
  adds its own branch, so their number is the query's only part that grows: it is bounded by
  what the policy's author chose (a custom `metrics:` section, a very long name), not by how
  many pools there are.

Within each half, a query is built in layers:

1. the series (or a `rate()` over them) are aggregated per pod: `by (<namespace>, <pod>)` or
   `by (pd_pool, pd_role, <pod>)`, with data-parallel engines (the `engine` label) folded into
   their pod;
2. the per-pod results of each *spelling* of a metric are joined with `or`, in order of
   preference: per pod, the first spelling that pod exposes wins. This is how one query serves
   clusters that mix vLLM versions (`kv_cache_usage_perc` vs `gpu_cache_usage_perc`,
   `inter_token_latency_seconds` vs `time_per_output_token_seconds`) and scrape paths that wrote
   the escaped `vllm_...` spelling instead of `vllm:...`;
3. derived roles get their `pd_deployment` label; histograms are summed per role.

Gauges, rates and tokens per step stay per pod in the answer (one or two rows per pod: a pod's
freshness and a bad value are judged per pod); quantiles come back per role.

Results carry a `pd_part` label where one query answers several questions at once (a gauge's
value and its sample age; a quantile, the request rate behind it and how many pods reported).

`Builder.role_total` is the range-query form used once at start-up to backfill forecast history:
the same per-pod expressions for one role (its `role_selector`, which for a derived role matches
exactly its ReplicaSet pod names), summed into a single series.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from autoscaler.metrics import source
from autoscaler.metrics.selectors import (
    DEPLOYMENT_LABEL,
    MAX_DERIVED_NAME,
    MAX_NAMESPACES_IN_QUERY,
    PART_LABEL,
    POOL_LABEL,
    REPLICASET_POD,
    ROLE_LABEL,
    Pair,
    RoleSelector,
    Selection,
    default_pod_regex,
    is_derived,
    quote,
    role_namespace,
    role_selector,
)
from autoscaler.types import SignalName

# The selector names are re-exported: the source, samples and tests read them here, as before
# they moved to selectors.py.
__all__ = [
    "ALL_NAMES",
    "DEPLOYMENT_LABEL",
    "MAX_DERIVED_NAME",
    "MAX_NAMESPACES_IN_QUERY",
    "PART_LABEL",
    "POOL_LABEL",
    "REPLICASET_POD",
    "ROLE_LABEL",
    "SPELLINGS",
    "TOTAL_SERIES",
    "Builder",
    "Family",
    "Kind",
    "Names",
    "Pair",
    "Plan",
    "Query",
    "RoleSelector",
    "Selection",
    "default_pod_regex",
    "discovery_query",
    "is_derived",
    "plan",
    "quote",
    "role_namespace",
    "role_selector",
]


class Kind(StrEnum):
    """How a query's result is turned into one sample per role."""

    # One series per pod with pd_part=value|age: mean over fresh, finite pods.
    GAUGE = "gauge"
    # One series per pod (already a per-pod ratio): mean over finite pods.
    MEAN = "mean"
    # One series per pod (a rate): sum over finite pods.
    SUM = "sum"
    # Per role: pd_part=value (the quantile), rate (observations/s), replicas (pods).
    QUANTILE = "quantile"
    # Per role: pd_part=bucket (one row per `le`, cumulative rates), sum, count, replicas.
    SPREAD = "spread"


class Family(StrEnum):
    """A logical vLLM series; `SPELLINGS` lists the exposed names that carry it."""

    WAITING = "waiting"
    RUNNING = "running"
    KV_CACHE = "kv_cache"
    ITERATION_SUM = "iteration_sum"
    ITERATION_COUNT = "iteration_count"
    TTFT_BUCKET = "ttft_bucket"
    TTFT_COUNT = "ttft_count"
    ITL_BUCKET = "itl_bucket"
    ITL_COUNT = "itl_count"
    REQUESTS = "requests"
    PROMPT_TOKENS = "prompt_tokens"
    GENERATION_TOKENS = "generation_tokens"
    PREFILL_TIME_BUCKET = "prefill_time_bucket"
    PROMPT_LEN_BUCKET = "prompt_len_bucket"
    PROMPT_LEN_SUM = "prompt_len_sum"
    PROMPT_LEN_COUNT = "prompt_len_count"


def _both(*names: str) -> tuple[str, ...]:
    # Each name in its `vllm:` form first, then the escaped `vllm_` form that OpenMetrics/UTF-8
    # escaping or an OTel pipeline produces; the order is the per-pod preference.
    out: list[str] = []
    for n in names:
        out += [n, n.replace(":", "_", 1)]
    return tuple(out)


# Newest name first (VLLM-METRICS.md §2): a pod of vLLM 0.9-0.11 exposes both spellings of a
# rename with the same data, and the per-pod `or` then reads the new one.
SPELLINGS: Mapping[Family, tuple[str, ...]] = {
    Family.WAITING: _both("vllm:num_requests_waiting"),
    Family.RUNNING: _both("vllm:num_requests_running"),
    Family.KV_CACHE: _both("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    Family.ITERATION_SUM: _both("vllm:iteration_tokens_total_sum"),
    Family.ITERATION_COUNT: _both("vllm:iteration_tokens_total_count"),
    Family.TTFT_BUCKET: _both("vllm:time_to_first_token_seconds_bucket"),
    Family.TTFT_COUNT: _both("vllm:time_to_first_token_seconds_count"),
    Family.ITL_BUCKET: _both(
        "vllm:inter_token_latency_seconds_bucket", "vllm:time_per_output_token_seconds_bucket"
    ),
    Family.ITL_COUNT: _both(
        "vllm:inter_token_latency_seconds_count", "vllm:time_per_output_token_seconds_count"
    ),
    # request_success_total is the direct count; the e2e histogram's count is the same number
    # (one observation per finished request) for emitters that lack the counter.
    Family.REQUESTS: _both("vllm:request_success_total", "vllm:e2e_request_latency_seconds_count"),
    Family.PROMPT_TOKENS: _both("vllm:prompt_tokens_total"),
    Family.GENERATION_TOKENS: _both("vllm:generation_tokens_total"),
    # Per request, scheduled to first token (V1): the divisor of ttft_relative.
    Family.PREFILL_TIME_BUCKET: _both("vllm:request_prefill_time_seconds_bucket"),
    Family.PROMPT_LEN_BUCKET: _both("vllm:request_prompt_tokens_bucket"),
    Family.PROMPT_LEN_SUM: _both("vllm:request_prompt_tokens_sum"),
    Family.PROMPT_LEN_COUNT: _both("vllm:request_prompt_tokens_count"),
}

ALL_NAMES: tuple[str, ...] = tuple(n for names in SPELLINGS.values() for n in names)


def discovery_query() -> str:
    """One cheap instant query listing which candidate names currently have series."""
    alternatives = "|".join(re.escape(n) for n in ALL_NAMES)
    return f'count by (__name__) ({{__name__=~"{alternatives}"}})'


# What `Builder.role_total` answers: the rates, and `running` (a role's decode concurrency).
TOTAL_SERIES: tuple[str, ...] = (*source.RATE_KEYS, SignalName.RUNNING.value)


@dataclass(frozen=True, slots=True)
class Names:
    """The spellings to query per family, in preference order."""

    by_family: Mapping[Family, tuple[str, ...]]

    @classmethod
    def all(cls) -> Names:
        return cls(by_family=dict(SPELLINGS))

    @classmethod
    def from_present(cls, present: Iterable[str]) -> Names:
        """Narrow each family to the spellings the cluster exposes. A family with none present
        keeps every spelling: querying an absent name costs nothing and means the family is
        found as soon as it appears, without waiting for the next discovery."""
        have = set(present)
        out: dict[Family, tuple[str, ...]] = {}
        for fam, names in SPELLINGS.items():
            found = tuple(n for n in names if n in have)
            out[fam] = found or names
        return cls(by_family=out)

    def present(self, family: Family) -> tuple[str, ...]:
        return self.by_family[family]


@dataclass(frozen=True, slots=True)
class _Scope:
    """One half of a query (see the module docstring): how it selects a metric's series, which
    labels identify one of its pods and one of its roles, and how per-pod series get the
    role-identifying labels."""

    select: Callable[[str, Callable[[str], str]], str]
    """(metric name, wrapper of the bare selector) -> the expression over every pod in scope."""
    pod: str
    """Grouping labels of one pod."""
    role: str
    """Grouping labels of one role."""
    derive: Callable[[str], str]
    """Adds the role-identifying labels to a per-pod expression."""


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL query answering one signal key for the roles that need it."""

    key: str
    kind: Kind
    promql: str
    roles: tuple[Pair, ...]
    """(pool, role) pairs this query covers."""
    deployments: Mapping[Pair, tuple[Pair, ...]] = field(default_factory=dict)
    """(namespace, Deployment) -> (pool, role) for rows of derived roles (they carry the
    namespace label and `pd_deployment`); rows of selector roles carry pd_pool and pd_role."""
    only: tuple[str, frozenset[str]] | None = field(init=False, default=None)
    """`validate.parse_vector`'s `only`: the Deployments this namespace-wide query is read for.
    Its answer holds every pod of the namespaces it names, and at 1,000 pools about a third of
    those rows (roles that do not read this key; on a sharded replica, the other replicas'
    pools) are skipped unread. Set once here: a plan, and so its queries, lasts many ticks."""

    def __post_init__(self) -> None:
        if self.deployments:
            names = frozenset(dep for _, dep in self.deployments)
            object.__setattr__(self, "only", (DEPLOYMENT_LABEL, names))


@dataclass(frozen=True, slots=True)
class Builder:
    """Builds the per-tick queries; everything it needs is fixed at construction."""

    names: Names
    rate_window_s: float
    pod_label: str = "pod"
    namespace_label: str = "namespace"
    max_sample_age_s: float | None = None
    """When set, a gauge's age rows are sent only for pods older than this (the only ones
    `samples.per_pod` acts on), which halves a gauge's answer; None sends every pod's age."""

    @property
    def _window(self) -> str:
        return f"[{max(1, round(self.rate_window_s))}s]"

    def _scopes(self, roles: Selection | Iterable[RoleSelector]) -> list[_Scope]:
        sel = Selection.of(roles)
        out: list[_Scope] = []
        if sel.deployments:
            spaces = sel.namespaces
            if len(spaces) > MAX_NAMESPACES_IN_QUERY:
                matcher = f'{{{self.namespace_label}!=""}}'
            elif len(spaces) == 1:
                matcher = f"{{{self.namespace_label}={quote(spaces[0])}}}"
            else:
                alternatives = "|".join(re.escape(ns) for ns in spaces)
                matcher = f"{{{self.namespace_label}=~{quote(alternatives)}}}"
            ns, pod = self.namespace_label, self.pod_label

            def derive(expr: str) -> str:
                return (
                    f'label_replace({expr}, "{DEPLOYMENT_LABEL}", "$1", "{pod}", '
                    f"{quote(REPLICASET_POD)})"
                )

            out.append(
                _Scope(
                    select=lambda name, inner: inner(f"{name}{matcher}"),
                    pod=f"{ns}, {pod}",
                    role=f"{ns}, {DEPLOYMENT_LABEL}",
                    derive=derive,
                )
            )
        if sel.custom:
            custom = sel.custom

            def union(name: str, inner: Callable[[str], str]) -> str:
                return " or ".join(r.tag(inner(f"{name}{r.matchers}")) for r in custom)

            out.append(
                _Scope(
                    select=union,
                    pod=f"{POOL_LABEL}, {ROLE_LABEL}, {self.pod_label}",
                    role=f"{POOL_LABEL}, {ROLE_LABEL}",
                    derive=_ident,
                )
            )
        return out

    def _halves(
        self, roles: Selection | Iterable[RoleSelector], half: Callable[[_Scope], str]
    ) -> str:
        # The halves' label sets are disjoint (namespace/pd_deployment vs pd_pool/pd_role), so
        # `or` keeps both.
        parts = [half(s) for s in self._scopes(roles)]
        if not parts:
            msg = "a query needs at least one role"
            raise ValueError(msg)
        return parts[0] if len(parts) == 1 else " or ".join(f"({p})" for p in parts)

    def _chain(self, family: Family, per_name: Callable[[str], str]) -> str:
        # Per-pod preference between spellings: `or` keeps a right-hand series only where no
        # left-hand series has the same labels, i.e. only for pods the earlier spelling missed.
        return " or ".join(f"({per_name(n)})" for n in self.names.present(family))

    def _gauge_value(self, family: Family, s: _Scope, *, agg: str) -> str:
        def value(n: str) -> str:
            return f"{agg} by ({s.pod}) (max by ({s.pod}, engine) ({s.select(n, _ident)}))"

        return s.derive(self._chain(family, value))

    def gauge_value(
        self, family: Family, roles: Selection | Iterable[RoleSelector], *, agg: str
    ) -> str:
        """Per pod: the gauge, engines combined with `agg`. `max by (..., engine)` first drops
        duplicate series of one engine (a pod scraped by two jobs) before engines are combined."""
        return self._halves(roles, lambda s: self._gauge_value(family, s, agg=agg))

    def gauge(self, family: Family, roles: Selection | Iterable[RoleSelector], *, agg: str) -> str:
        """Per pod: the gauge (`gauge_value`) and the age of its newest sample."""
        limit = "" if self.max_sample_age_s is None else f" > {self.max_sample_age_s!r}"

        def half(s: _Scope) -> str:
            def age(n: str) -> str:
                # timestamp() must wrap the bare selector: on any derived vector it returns the
                # evaluation time, not the sample's.
                return f"max by ({s.pod}) ({s.select(n, _age)}){limit}"

            value = self._gauge_value(family, s, agg=agg)
            ages = s.derive(self._chain(family, age))
            return (
                f'label_replace({value}, "{PART_LABEL}", "value", "", "")'
                f' or label_replace({ages}, "{PART_LABEL}", "age", "", "")'
            )

        return self._halves(roles, half)

    def rate(self, family: Family, roles: Selection | Iterable[RoleSelector]) -> str:
        """Per pod: the counter's per-second rate over the window (all other labels summed)."""
        w = self._window

        def half(s: _Scope) -> str:
            return s.derive(
                self._chain(
                    family, lambda n: f"sum by ({s.pod}) ({s.select(n, lambda x: f'rate({x}{w})')})"
                )
            )

        return self._halves(roles, half)

    def tokens_per_step(self, roles: Selection | Iterable[RoleSelector]) -> str:
        """Per pod: mean tokens per engine step over the window. A pod that ran no step is idle
        and reads 0, not missing: `(steps > 0)` drops it from the division and `steps * 0`
        puts it back as 0."""
        w = self._window
        sums = self.names.present(Family.ITERATION_SUM)
        counts = self.names.present(Family.ITERATION_COUNT)

        def half(s: _Scope) -> str:
            def per_pod(n: str) -> str:
                return f"sum by ({s.pod}) ({s.select(n, lambda x: f'rate({x}{w})')})"

            parts = []
            for s_name, c_name in zip(sums, counts, strict=True):
                tokens, steps = per_pod(s_name), per_pod(c_name)
                parts.append(f"(({tokens}) / (({steps}) > 0) or ({steps}) * 0)")
            return s.derive(" or ".join(parts))

        return self._halves(roles, half)

    def quantile(
        self,
        bucket: Family,
        count: Family,
        roles: Selection | Iterable[RoleSelector],
        *,
        q: float,
        over: tuple[Family, float] | None = None,
    ) -> str:
        """Per role: the q-quantile over all its pods' observations in the window, plus the
        observation rate (0 means idle, not missing) and how many pods reported. Buckets are
        summed per role inside Prometheus: the answer is three rows per role. With `over` (a
        bucket family and a floor) the value is divided by that histogram's q-quantile over
        the same pods, clamped to at least the floor (ttft_relative)."""
        w = self._window

        def half(s: _Scope) -> str:
            def buckets(n: str) -> str:
                return f"sum by ({s.pod}, le) ({s.select(n, lambda x: f'rate({x}{w})')})"

            def counts(n: str) -> str:
                return f"sum by ({s.pod}) ({s.select(n, lambda x: f'rate({x}{w})')})"

            per_pod_counts = s.derive(self._chain(count, counts))

            def role_quantile(fam: Family) -> str:
                per_role = f"sum by ({s.role}, le) ({s.derive(self._chain(fam, buckets))})"
                return f"histogram_quantile({q!r}, {per_role})"

            value = role_quantile(bucket)
            if over is not None:
                fam, floor = over
                value = f"{value} / clamp_min({role_quantile(fam)}, {floor!r})"
            return (
                f'label_replace({value}, "{PART_LABEL}", "value", "", "")'
                f' or label_replace(sum by ({s.role}) ({per_pod_counts}), "{PART_LABEL}",'
                ' "rate", "", "")'
                f' or label_replace(count by ({s.role}) ({per_pod_counts}), "{PART_LABEL}",'
                ' "replicas", "", "")'
            )

        return self._halves(roles, half)

    def spread(self, roles: Selection | Iterable[RoleSelector]) -> str:
        """Per role: the prompt-length histogram's bucket rates (one row per `le`), and the
        rates of its `_sum` and `_count` and how many pods reported, for
        `lengths.prompt_length_cv`. Summed per role inside Prometheus: about 20 rows per role
        (vLLM's 1-2-5 buckets up to max_model_len), asked only for roles whose policies read
        the prompt mix (`RoleTarget.extra`)."""
        w = self._window

        def half(s: _Scope) -> str:
            def per_pod(by: str) -> Callable[[str], str]:
                return lambda n: f"sum by ({by}) ({s.select(n, lambda x: f'rate({x}{w})')})"

            buckets = s.derive(self._chain(Family.PROMPT_LEN_BUCKET, per_pod(f"{s.pod}, le")))
            sums = s.derive(self._chain(Family.PROMPT_LEN_SUM, per_pod(s.pod)))
            counts = s.derive(self._chain(Family.PROMPT_LEN_COUNT, per_pod(s.pod)))
            parts = (
                ("bucket", f"sum by ({s.role}, le) ({buckets})"),
                ("sum", f"sum by ({s.role}) ({sums})"),
                ("count", f"sum by ({s.role}) ({counts})"),
                ("replicas", f"count by ({s.role}) ({counts})"),
            )
            return " or ".join(
                f'label_replace({expr}, "{PART_LABEL}", "{part}", "", "")' for part, expr in parts
            )

        return self._halves(roles, half)

    def role_total(self, series: str, role: RoleSelector) -> str:
        """One role's total of `series` (one of TOTAL_SERIES) as a single series, for a range
        query: the per-pod series the instant query of that key reads, pods whose value is
        NaN or +-Inf left out (as `fetch` leaves them out), summed over the role's pods. For
        `running` that is the role's concurrency (the instant sample's mean x pods).

        Unlike the instant gauge query there is no sample-age check: at each step Prometheus'
        lookback and staleness markers decide which pods count."""
        if series == SignalName.RUNNING.value:
            per_pod = self.gauge_value(Family.RUNNING, [role], agg="sum")
        elif series in source.RATE_KEYS:
            per_pod = self._promql(series, [role], quantile=None)[1]
        else:
            msg = f"no range query for series {series!r} (one of {', '.join(TOTAL_SERIES)})"
            raise ValueError(msg)
        # A comparison with a scalar filters: NaN fails both, +-Inf fails one.
        return f"sum(({per_pod}) > -Inf < +Inf)"

    def for_key(
        self, key: str, roles: Selection | Iterable[RoleSelector], *, quantile: float | None
    ) -> Query:
        """The query for one signal key (a `signal_key` or one of RATE_KEYS)."""
        sel = Selection.of(roles)
        kind, promql = self._promql(key, sel, quantile=quantile)
        return Query(
            key=key, kind=kind, promql=promql, roles=sel.pairs, deployments=sel.deployments
        )

    def _promql(
        self, key: str, roles: Selection | Iterable[RoleSelector], *, quantile: float | None
    ) -> tuple[Kind, str]:
        if key == SignalName.QUEUE_DEPTH.value:
            return Kind.GAUGE, self.gauge(Family.WAITING, roles, agg="sum")
        if key == SignalName.RUNNING.value:
            return Kind.GAUGE, self.gauge(Family.RUNNING, roles, agg="sum")
        if key == SignalName.KV_CACHE.value:
            # A fraction per engine: the pod's usage is the engines' mean, not their sum.
            return Kind.GAUGE, self.gauge(Family.KV_CACHE, roles, agg="avg")
        if key == SignalName.BATCHED_TOKENS.value:
            return Kind.MEAN, self.tokens_per_step(roles)
        if key == source.REQUEST_RATE:
            return Kind.SUM, self.rate(Family.REQUESTS, roles)
        if key == source.PROMPT_TOKENS_RATE:
            return Kind.SUM, self.rate(Family.PROMPT_TOKENS, roles)
        if key == source.GENERATION_TOKENS_RATE:
            return Kind.SUM, self.rate(Family.GENERATION_TOKENS, roles)
        relative = _RELATIVE_KEY.match(key)
        if quantile is not None and relative is not None:
            floor = int(relative.group(1)) / 1000.0
            q = self.quantile(
                Family.TTFT_BUCKET,
                Family.TTFT_COUNT,
                roles,
                q=quantile,
                over=(Family.PREFILL_TIME_BUCKET, floor),
            )
            return Kind.QUANTILE, q
        if key == source.PROMPT_LENGTH_CV:
            return Kind.SPREAD, self.spread(roles)
        if quantile is not None and key.startswith(SignalName.TTFT.value + "_p"):
            q = self.quantile(Family.TTFT_BUCKET, Family.TTFT_COUNT, roles, q=quantile)
            return Kind.QUANTILE, q
        if quantile is not None and key.startswith(SignalName.ITL.value + "_p"):
            q = self.quantile(Family.ITL_BUCKET, Family.ITL_COUNT, roles, q=quantile)
            return Kind.QUANTILE, q
        msg = f"no PromQL for signal key {key!r}"
        raise ValueError(msg)


# signal_key of ttft_relative: the divisor's floor in milliseconds is part of the key.
_RELATIVE_KEY = re.compile(rf"^{SignalName.TTFT_RELATIVE.value}_p\d+_f(\d+)ms$")


def _ident(selector: str) -> str:
    return selector


def _age(selector: str) -> str:
    return f"time() - timestamp({selector})"


@dataclass(frozen=True, slots=True)
class Plan:
    """Every query of one tick."""

    queries: tuple[Query, ...]
    expected: Mapping[Pair, tuple[str, ...]]
    """(pool, role) -> the keys that role must report."""
    invalid: Mapping[Pair, str]
    """(pool, role) -> why its selector could not be built; such roles are left out of every
    query, so one bad role cannot turn every pool's union into a 400."""


def plan(targets: Sequence[source.RoleTarget], builder: Builder) -> Plan:
    """Group roles by signal key and build one query per key."""
    derived: dict[str, dict[Pair, list[Pair]]] = {}
    custom: dict[str, list[RoleSelector]] = {}
    quantiles: dict[str, float] = {}
    expected: dict[Pair, tuple[str, ...]] = {}
    invalid: dict[Pair, str] = {}
    for t in targets:
        pr = (t.pool, t.role.value)
        keys: list[str] = []
        for spec in t.spec.signals:
            key = source.signal_key(spec)
            keys.append(key)
            if spec.signal in (SignalName.TTFT, SignalName.ITL, SignalName.TTFT_RELATIVE):
                quantiles[key] = spec.quantile
        keys += source.RATE_KEYS
        keys += t.extra
        expected[pr] = tuple(dict.fromkeys(keys))
        if is_derived(t):
            dep = (role_namespace(t), t.spec.deployment.name)
            for key in expected[pr]:
                derived.setdefault(key, {}).setdefault(dep, []).append(pr)
            continue
        try:
            sel = role_selector(
                t, pod_label=builder.pod_label, namespace_label=builder.namespace_label
            )
        except ValueError as exc:
            invalid[pr] = str(exc)
            continue
        for key in expected[pr]:
            custom.setdefault(key, []).append(sel)
    queries = tuple(
        builder.for_key(
            key,
            Selection(
                deployments={d: tuple(prs) for d, prs in derived.get(key, {}).items()},
                custom=tuple(custom.get(key, ())),
            ),
            quantile=quantiles.get(key),
        )
        for key in dict.fromkeys([*derived, *custom])
    )
    return Plan(queries=queries, expected=expected, invalid=invalid)
