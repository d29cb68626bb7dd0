"""PromQL for the Prometheus source: one query per signal key per tick, covering every role.

vLLM has no role or pool label, so each role is a *selector* (namespace, pod regex, extra labels,
from `MetricMatch`). A query is built in three layers:

1. per role, the raw selector (or a `rate()` over it) is tagged with `pd_pool` and `pd_role`
   through `label_replace`, and the roles are joined with `or`; the tags keep the union's
   label sets disjoint, so nothing is lost even if two roles match the same pod by mistake;
2. the union is aggregated `by (pd_pool, pd_role, <pod>)`: one series per reporting pod, with
   data-parallel engines (the `engine` label) folded into their pod;
3. the per-pod results of each *spelling* of a metric are joined with `or`, in order of
   preference: per pod, the first spelling that pod exposes wins. This is how one query serves
   clusters that mix vLLM versions (`kv_cache_usage_perc` vs `gpu_cache_usage_perc`,
   `inter_token_latency_seconds` vs `time_per_output_token_seconds`) and scrape paths that wrote
   the escaped `vllm_...` spelling instead of `vllm:...`.

The number of queries per tick is the number of distinct signal keys (plus the three rates);
more pools only make each query longer, which is why the source sends them by POST.

Results carry a `pd_part` label where one query answers several questions at once (a gauge's
value and its sample age; a quantile, the request rate behind it and how many pods reported).

`Builder.role_total` is the range-query form used once at start-up to backfill forecast history:
the same per-pod expressions for one role, summed into a single series.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from autoscaler.metrics import source
from autoscaler.types import SignalName

POOL_LABEL = "pd_pool"
ROLE_LABEL = "pd_role"
PART_LABEL = "pd_part"

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


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
class RoleSelector:
    """One role's label matchers (without a metric name), e.g. `{namespace="ns",pod=~"p-.*"}`."""

    pool: str
    role: str
    matchers: str

    def tag(self, expr: str) -> str:
        """`expr` with pd_pool/pd_role set to this role (an empty regex on an absent label
        always matches, so label_replace just adds the label)."""
        inner = f'label_replace({expr}, "{POOL_LABEL}", {quote(self.pool)}, "", "")'
        return f'label_replace({inner}, "{ROLE_LABEL}", {quote(self.role)}, "", "")'


def quote(value: str) -> str:
    """A PromQL double-quoted string literal (Go escaping rules)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def role_selector(
    target: source.RoleTarget, *, pod_label: str, namespace_label: str
) -> RoleSelector:
    """The matchers for one role, from its MetricMatch (defaults: the Deployment's namespace and
    `<deployment>-.*` on the pod label, which matches ReplicaSet pod names)."""
    match = target.spec.metrics
    dep = target.spec.deployment
    namespace = match.namespace if match.namespace is not None else dep.namespace
    pod_regex = match.pod_regex if match.pod_regex is not None else f"{re.escape(dep.name)}-.*"
    try:
        # Python's and Prometheus' (RE2) syntaxes differ at the edges (RE2 has no lookaround,
        # which Prometheus then rejects with a 400 for the whole query), but what Python cannot
        # compile RE2 cannot either: catch that here, per role.
        re.compile(pod_regex)
    except re.error as exc:
        msg = f"metrics.pod_regex {pod_regex!r} of {target.pool}/{target.role.value}: {exc}"
        raise ValueError(msg) from exc
    parts = [f"{namespace_label}={quote(namespace)}", f"{pod_label}=~{quote(pod_regex)}"]
    for name, value in sorted(match.labels.items()):
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            where = f"{target.pool}/{target.role.value}"
            msg = f"metrics.labels key {name!r} of {where} is not a valid label name"
            raise ValueError(msg)
        parts.append(f"{name}={quote(value)}")
    matchers = "{" + ",".join(parts) + "}"
    return RoleSelector(pool=target.pool, role=target.role.value, matchers=matchers)


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL query answering one signal key for the roles that need it."""

    key: str
    kind: Kind
    promql: str
    roles: tuple[tuple[str, str], ...]
    """(pool, role) pairs this query covers."""


@dataclass(frozen=True, slots=True)
class Builder:
    """Builds the per-tick queries; everything it needs is fixed at construction."""

    names: Names
    rate_window_s: float
    pod_label: str = "pod"
    namespace_label: str = "namespace"

    @property
    def _window(self) -> str:
        return f"[{max(1, round(self.rate_window_s))}s]"

    @property
    def _per_pod(self) -> str:
        return f"{POOL_LABEL}, {ROLE_LABEL}, {self.pod_label}"

    def _union(self, roles: Sequence[RoleSelector], name: str, inner: Callable[[str], str]) -> str:
        return " or ".join(r.tag(inner(f"{name}{r.matchers}")) for r in roles)

    def _chain(self, family: Family, per_name: Callable[[str], str]) -> str:
        # Per-pod preference between spellings: `or` keeps a right-hand series only where no
        # left-hand series has the same labels, i.e. only for pods the earlier spelling missed.
        return " or ".join(f"({per_name(n)})" for n in self.names.present(family))

    def gauge_value(self, family: Family, roles: Sequence[RoleSelector], *, agg: str) -> str:
        """Per pod: the gauge, engines combined with `agg`. `max by (..., engine)` first drops
        duplicate series of one engine (a pod scraped by two jobs) before engines are combined."""
        pp = self._per_pod

        def value(n: str) -> str:
            return f"{agg} by ({pp}) (max by ({pp}, engine) ({self._union(roles, n, _ident)}))"

        return self._chain(family, value)

    def gauge(self, family: Family, roles: Sequence[RoleSelector], *, agg: str) -> str:
        """Per pod: the gauge (`gauge_value`) and the age of its newest sample."""
        pp = self._per_pod

        def age(n: str) -> str:
            # timestamp() must wrap the bare selector: on any derived vector it returns the
            # evaluation time, not the sample's.
            return f"max by ({pp}) ({self._union(roles, n, _age)})"

        value = self.gauge_value(family, roles, agg=agg)
        return (
            f'label_replace({value}, "{PART_LABEL}", "value", "", "")'
            f' or label_replace({self._chain(family, age)}, "{PART_LABEL}", "age", "", "")'
        )

    def rate(self, family: Family, roles: Sequence[RoleSelector]) -> str:
        """Per pod: the counter's per-second rate over the window (all other labels summed)."""
        pp, w = self._per_pod, self._window
        return self._chain(
            family, lambda n: f"sum by ({pp}) ({self._union(roles, n, lambda s: f'rate({s}{w})')})"
        )

    def tokens_per_step(self, roles: Sequence[RoleSelector]) -> str:
        """Per pod: mean tokens per engine step over the window. A pod that ran no step is idle
        and reads 0, not missing: `(steps > 0)` drops it from the division and `steps * 0`
        puts it back as 0."""
        pp, w = self._per_pod, self._window
        sums = self.names.present(Family.ITERATION_SUM)
        counts = self.names.present(Family.ITERATION_COUNT)
        parts = []
        for s_name, c_name in zip(sums, counts, strict=True):
            tokens = f"sum by ({pp}) ({self._union(roles, s_name, lambda s: f'rate({s}{w})')})"
            steps = f"sum by ({pp}) ({self._union(roles, c_name, lambda s: f'rate({s}{w})')})"
            parts.append(f"(({tokens}) / (({steps}) > 0) or ({steps}) * 0)")
        return " or ".join(parts)

    def quantile(
        self,
        bucket: Family,
        count: Family,
        roles: Sequence[RoleSelector],
        *,
        q: float,
        over: tuple[Family, float] | None = None,
    ) -> str:
        """Per role: the q-quantile over all its pods' observations in the window, plus the
        observation rate (0 means idle, not missing) and how many pods reported. With `over`
        (a bucket family and a floor) the value is divided by that histogram's q-quantile,
        clamped to at least the floor (ttft_relative)."""
        pp, w = self._per_pod, self._window
        pr = f"{POOL_LABEL}, {ROLE_LABEL}"

        def buckets(n: str) -> str:
            return f"sum by ({pp}, le) ({self._union(roles, n, lambda s: f'rate({s}{w})')})"

        def counts(n: str) -> str:
            return f"sum by ({pp}) ({self._union(roles, n, lambda s: f'rate({s}{w})')})"

        per_pod_counts = self._chain(count, counts)
        value = f"histogram_quantile({q!r}, sum by ({pr}, le) ({self._chain(bucket, buckets)}))"
        if over is not None:
            fam, floor = over
            div = f"histogram_quantile({q!r}, sum by ({pr}, le) ({self._chain(fam, buckets)}))"
            value = f"{value} / clamp_min({div}, {floor!r})"
        return (
            f'label_replace({value}, "{PART_LABEL}", "value", "", "")'
            f' or label_replace(sum by ({pr}) ({per_pod_counts}), "{PART_LABEL}", "rate", "", "")'
            f' or label_replace(count by ({pr}) ({per_pod_counts}), "{PART_LABEL}", "replicas",'
            ' "", "")'
        )

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

    def for_key(self, key: str, roles: Sequence[RoleSelector], *, quantile: float | None) -> Query:
        """The query for one signal key (a `signal_key` or one of RATE_KEYS)."""
        pairs = tuple((r.pool, r.role) for r in roles)
        kind, promql = self._promql(key, roles, quantile=quantile)
        return Query(key=key, kind=kind, promql=promql, roles=pairs)

    def _promql(
        self, key: str, roles: Sequence[RoleSelector], *, quantile: float | None
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
    expected: Mapping[tuple[str, str], tuple[str, ...]]
    """(pool, role) -> the keys that role must report."""
    invalid: Mapping[tuple[str, str], str]
    """(pool, role) -> why its selector could not be built; such roles are left out of every
    query, so one bad role cannot turn every pool's union into a 400."""


def plan(targets: Sequence[source.RoleTarget], builder: Builder) -> Plan:
    """Group roles by signal key and build one query per key."""
    by_key: dict[str, list[RoleSelector]] = {}
    quantiles: dict[str, float] = {}
    expected: dict[tuple[str, str], tuple[str, ...]] = {}
    invalid: dict[tuple[str, str], str] = {}
    for t in targets:
        sel: RoleSelector | None
        try:
            sel = role_selector(
                t, pod_label=builder.pod_label, namespace_label=builder.namespace_label
            )
        except ValueError as exc:
            invalid[(t.pool, t.role.value)] = str(exc)
            sel = None
        keys: list[str] = []
        for spec in t.spec.signals:
            key = source.signal_key(spec)
            keys.append(key)
            if spec.signal in (SignalName.TTFT, SignalName.ITL, SignalName.TTFT_RELATIVE):
                quantiles[key] = spec.quantile
        keys += source.RATE_KEYS
        expected[(t.pool, t.role.value)] = tuple(dict.fromkeys(keys))
        if sel is None:
            continue
        for key in expected[(t.pool, t.role.value)]:
            by_key.setdefault(key, []).append(sel)
    queries = tuple(
        builder.for_key(key, roles, quantile=quantiles.get(key)) for key, roles in by_key.items()
    )
    return Plan(queries=queries, expected=expected, invalid=invalid)
