"""The controller's own Prometheus metrics (`pd_autoscaler_*`), in a registry of its own.

A private `CollectorRegistry` (not prometheus-client's global default) keeps the exposition to
exactly these series, lets tests build as many independent instances as they like, and keeps
library metrics (and anything a plug-in registers globally) out of the controller's endpoint.

Label sets stay bounded: pool, role, signal/source names come from the policy file; decision
reasons are reduced to the need that drove the number and the first rule that clipped it, read
from the decision's data (`RoleDecision.cause`, `RoleDecision.clips`); the prose `driver` carries
numbers, so it goes to the log, not to a label.

Wiring: `record_decision` is a `loop.DecisionHook`; `InstrumentedSource` wraps any MetricsSource
to export what it saw; `render()` returns the text for `/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from autoscaler import errors

if TYPE_CHECKING:
    from autoscaler.forecast import models
    from autoscaler.metrics.source import MetricsSource, RoleSamples, RoleTarget
    from autoscaler.spec import PolicyFile
    from autoscaler.types import Decision, Role, RoleDecision

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Classic text format 0.0.4: every Prometheus version parses it (see docs/prometheus.md on
why the controller never negotiates OpenMetrics)."""

_PR = ("pool", "role")

# Tick durations: from a few ms (cached, small) to the 30 s where a 15 s tick has fallen behind.
_TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Telemetry:
    """Every controller metric, in `self.registry`.

    The per-pool series (replicas, signals, samples, forecasts, decision counts) are not
    prometheus-client children: at 1,000 pools they were tens of thousands of `labels()` calls
    per tick (each a lock, a label check and a dict lookup). Each tick now stores its decision
    per role, its samples and its counts in plain dicts, and `_PoolSeries` turns them into
    metric families when `/metrics` is scraped (once per scrape, not per tick). The names,
    labels, HELP texts and values are those the per-label gauges exported
    (tests/prom/test_telemetry_collector.py compares the two expositions).
    """

    def __init__(self) -> None:
        # `registry` holds every family (what tests and `get_sample_value` read); `render()`
        # writes the per-pool families itself and the few fixed ones from `_fixed`.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self._fixed = CollectorRegistry(auto_describe=True)
        # What the last ticks decided, by (pool, role): roles configured but not decided this
        # tick (their pool was unobserved) keep their last values; roles that left the policy
        # are not exported (hot reload), instead of freezing at their last value.
        self._roles: dict[tuple[str, Role], RoleDecision] = {}
        self._configured: frozenset[tuple[str, Role]] = frozenset()
        self._policy: PolicyFile | None = None
        self._dry_run: dict[str, bool] = {}
        self._samples: RoleSamples = {}
        self._forecasts: dict[tuple[str, str, str], tuple[float, float]] = {}
        # ((pool, role, target), seconds) of the current policy's latency SLOs: slo_targets_of.
        self._slo_targets: list[tuple[tuple[str, str, str], float]] = []
        # Forecast refits by (pool, role): [ok, failed, CPU seconds], measured in the worker.
        self._refits: dict[tuple[str, str], list[float]] = {}
        # Decision counts by (pool, role, direction, driver, clipped_by), and when each series
        # first appeared (the counter's `_created`).
        self._decisions: dict[tuple[str, str, str, str, str], list[float]] = {}
        self._pool_series = _PoolSeries(self)
        self.registry.register(self._pool_series)
        self.registry.register(_Forward(self._fixed))
        self.tick_seconds = Histogram(
            "pd_autoscaler_tick_duration_seconds",
            "Wall time of one control-loop tick.",
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.fetch_seconds = Histogram(
            "pd_autoscaler_metric_fetch_duration_seconds",
            "Wall time of one metric-source fetch.",
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.source_errors = Counter(
            "pd_autoscaler_metric_source_errors",
            "Metric-source problems by query and reason "
            "(unreachable, timeout, error, empty, nan, stale).",
            ("query", "reason"),
            registry=r,
        )
        self.kube_errors = Counter(
            "pd_autoscaler_kubernetes_api_errors",
            "Kubernetes API call failures by operation and status code.",
            ("operation", "code"),
            registry=r,
        )
        self.reload_ok = Gauge(
            "pd_autoscaler_config_last_reload_successful",
            "1 if the last policy reload was valid (the previous policy stays in force if not).",
            registry=r,
        )
        self.reload_time = Gauge(
            "pd_autoscaler_config_last_reload_timestamp_seconds",
            "Unix time of the last reload attempt.",
            registry=r,
        )
        self.reloads = Counter(
            "pd_autoscaler_config_reloads", "Policy reload attempts.", ("result",), registry=r
        )
        self.leader = Gauge(
            "pd_autoscaler_leader", "1 while this instance holds the leader lease.", registry=r
        )
        self.last_tick = Gauge(
            "pd_autoscaler_last_tick_timestamp_seconds",
            "Unix time the last decision was recorded (alert when it stops moving).",
            registry=r,
        )
        # Pre-create the unlabelled-by-data children so a fresh controller exports zeros (rate()
        # over a counter that appears at its first increment misses that increment).
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.leader.set(0)

    # --- recording --------------------------------------------------------------------------

    def record_decision(self, decision: Decision, policy: PolicyFile) -> None:
        """Keep one tick's decision for the next scrape; usable directly as a
        `loop.DecisionHook`. Plain dict writes: O(roles), no metric children touched."""
        if policy is not self._policy:
            self._policy = policy
            self._configured = frozenset((p.name, r) for p in policy.pools for r in p.roles)
            self._slo_targets = slo_targets_of(policy)
            names = {p.name for p in policy.pools}
            for pool in [p for p in self._dry_run if p not in names]:
                del self._dry_run[pool]
        now = time.time()
        roles = self._roles
        counts = self._decisions
        for pool_name, pd in decision.pools.items():
            self._dry_run[pool_name] = pd.dry_run
            for role, rd in pd.roles.items():
                roles[(pool_name, role)] = rd
                direction = (
                    "up"
                    if rd.desired > rd.current
                    else "down"
                    if rd.desired < rd.current
                    else "hold"
                )
                ckey = (pool_name, role.value, direction, driver_of(rd), _first_clip(rd))
                c = counts.get(ckey)
                if c is None:
                    counts[ckey] = [1.0, now]
                else:
                    c[0] += 1
        for gone in [k for k in roles if k not in self._configured]:
            del roles[gone]
        self.last_tick.set(now)

    def record_samples(self, samples: RoleSamples) -> None:
        """Keep what the metric source reported (value and reporting replicas per key)."""
        self._samples = samples

    def record_forecast(
        self, pool: str, role: str, *, series: str, value: float, horizon_s: float
    ) -> None:
        """A forecast policy's prediction (e.g. series="request_rate") `horizon_s` ahead."""
        self._forecasts[(pool, role, series)] = (value, horizon_s)

    def record_refit(self, key: str, result: models.FitResult) -> None:
        """One finished forecast refit of `key` ("pool/role") and its CPU seconds (a
        `controller.refits.ProcessRefitter` `on_result` hook)."""
        pool, _, role = key.rpartition("/")
        c = self._refits.setdefault((pool, role), [0.0, 0.0, 0.0])
        c[0 if result.ok else 1] += 1
        c[2] += result.cpu_s

    def observe_tick(self, seconds: float) -> None:
        self.tick_seconds.observe(seconds)

    def metric_source_error(self, *, query: str, reason: str) -> None:
        self.source_errors.labels(query, reason).inc()

    def kubernetes_api_error(self, *, operation: str, code: int | str) -> None:
        self.kube_errors.labels(operation, str(code)).inc()

    def config_reload(self, *, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self.reload_ok.set(1 if ok else 0)
        self.reload_time.set(time.time())

    def set_leader(self, *, leader: bool) -> None:
        self.leader.set(1 if leader else 0)

    def render(self) -> bytes:
        """The exposition text (classic format, CONTENT_TYPE) for `/metrics`."""
        return self._pool_series.text().encode() + generate_latest(self._fixed)


class _Forward(Collector):
    """Another registry's families, so that `Telemetry.registry` holds everything."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterable[Metric]:
        return self._inner.collect()


_go = cast("Callable[[float], str]", floatToGoString)  # the library's own number format


def _esc(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


_NUMBER_CACHE = 20_000
"""Formatted values kept between scrapes (observed rates rarely repeat; counts and flags do)."""

_Row = tuple[tuple[str, ...], float]
_Fam = tuple[str, str, str, tuple[str, ...], list[_Row], list[_Row]]
"""name, HELP, type, label names, rows (label values, value), `_created` rows (counters)."""


def _fam(name: str, doc: str, labels: tuple[str, ...], kind: str = "gauge") -> _Fam:
    return (name, doc, kind, labels, [], [])


class _PoolSeries(Collector):
    """The per-pool families, built from `Telemetry`'s dicts at scrape time."""

    def __init__(self, tel: Telemetry) -> None:
        self._tel = tel
        # Scrape after scrape the same series come back: their label text and most of their
        # values (replica counts, targets, flags) repeat. Both are kept between scrapes, so a
        # series costs two dict lookups rather than escaping, sorting and formatting each time
        # (at 1,000 pools, 80,000 series: issue 16's per-tick budget).
        self._labels: dict[tuple[str, ...], dict[tuple[str, ...], str]] = {}
        self._numbers: dict[float, str] = {}
        self._last_rows = 0

    def describe(self) -> Iterator[Metric]:
        # Names only (no samples): lets the registry refuse a duplicate name at registration
        # without running a whole collection.
        return (_metric(f) for f in self._empty())

    def collect(self) -> Iterator[Metric]:
        return (_metric(f) for f in self.rows())

    def text(self) -> str:
        """The families in the classic text format, line for line as prometheus_client's
        `generate_latest` writes them (labels sorted by name; a counter as `<name>_total` and
        a `<name>_created` gauge family), straight from the rows: at 1,000 pools a scrape has
        ~80,000 series, and the generic writer (a `Sample` and a label sort per series) cost
        more CPU than the tick itself."""
        fams = self.rows()
        n_rows = sum(len(f[4]) + len(f[5]) for f in fams)
        # Series of roles a reload removed would stay in the caches for good: start afresh
        # when they hold far more than a scrape uses.
        cached = sum(len(c) for c in self._labels.values())
        if cached > 2 * max(n_rows, self._last_rows) + 1000:
            self._labels.clear()
        if len(self._numbers) > _NUMBER_CACHE:
            self._numbers.clear()
        self._last_rows = n_rows
        numbers = self._numbers
        out: list[str] = []
        for name, help_text, kind, labels, rows, created in fams:
            doc = help_text.replace("\\", r"\\").replace("\n", r"\n")
            shown = f"{name}_total" if kind == "counter" else name
            out.append(f"# HELP {shown} {doc}\n# TYPE {shown} {kind}\n")
            order = sorted(range(len(labels)), key=labels.__getitem__)
            heads = [f'{labels[i]}="' for i in order]
            texts = self._labels.setdefault(labels, {})
            for suffix, part in (("", rows), ("_created", created)):
                if suffix:
                    if not part:
                        continue
                    out.append(f"# HELP {name}{suffix} {doc}\n# TYPE {name}{suffix} gauge\n")
                prefix = f"{shown}{{" if not suffix else f"{name}{suffix}{{"
                for values, value in part:
                    lbl = texts.get(values)
                    if lbl is None:
                        lbl = '",'.join([h + _esc(values[i]) for h, i in zip(heads, order,
                                                                               strict=True)])
                        texts[values] = lbl
                    num = numbers.get(value)
                    if num is None:
                        num = _go(value)
                        numbers[value] = num
                    out.append(f'{prefix}{lbl}"}} {num}\n')
        return "".join(out)

    @staticmethod
    def _empty() -> tuple[_Fam, ...]:
        pr, prs, prk, prf = _PR, (*_PR, "signal"), (*_PR, "key"), (*_PR, "series")
        return (
            _fam("pd_autoscaler_desired_replicas", "Replicas the controller wants.", pr),
            _fam("pd_autoscaler_recommended_replicas",
                 "Raw need (max over sources) before hysteresis, limits and coupling.", pr),
            _fam("pd_autoscaler_current_replicas", "Deployment spec.replicas.", pr),
            _fam("pd_autoscaler_ready_replicas", "Ready replicas.", pr),
            _fam("pd_autoscaler_pending_replicas", "Requested, not yet ready replicas.", pr),
            _fam("pd_autoscaler_min_replicas", "Configured lower bound.", pr),
            _fam("pd_autoscaler_max_replicas", "Configured upper bound.", pr),
            _fam("pd_autoscaler_panic", "1 while the role is in panic mode.", pr),
            _fam("pd_autoscaler_dry_run", "1 when decisions are not applied.", ("pool",)),
            _fam("pd_autoscaler_signal_value",
                 "A source's observed value (per-replica mean, fraction, seconds, or a "
                 "forecast).", prs),
            _fam("pd_autoscaler_signal_target", "The source's target per ready replica.", prs),
            _fam("pd_autoscaler_signal_wanted_replicas", "Replicas this source asks for.", prs),
            _fam("pd_autoscaler_signal_missing",
                 "1 when the source had no trustworthy data (it blocks scale-down).", prs),
            _fam("pd_autoscaler_observed_value",
                 "What the metric source reported per role and key (signals and rates).", prk),
            _fam("pd_autoscaler_observed_reporting_replicas",
                 "Pods that contributed to the observed value.", prk),
            _fam("pd_autoscaler_forecast_value",
                 "A forecast policy's prediction of a series at its horizon.", prf),
            _fam("pd_autoscaler_forecast_horizon_seconds", "How far ahead the forecast looks.",
                 prf),
            _fam("pd_autoscaler_decisions",
                 "Decisions per role by direction, driving source and first clipping rule.",
                 (*_PR, "direction", "driver", "clipped_by"), "counter"),
            _fam("pd_autoscaler_forecast_refits",
                 "Forecast model refits by result (a failure keeps the previous model).",
                 (*_PR, "result"), "counter"),
            _fam("pd_autoscaler_forecast_refit_cpu_seconds",
                 "CPU seconds spent fitting forecast models (in the refit worker processes).",
                 pr, "counter"),
            _fam("pd_autoscaler_slo_target_seconds",
                 "The latency SLO a policy kind sizes the role for (target: ttft_floor, the "
                 "TTFT every request is allowed; itl_mean, the mean inter-token latency).",
                 (*_PR, "target")),
        )

    def rows(self) -> tuple[_Fam, ...]:
        fams = self._empty()
        (desired, recommended, current, ready, pending, min_r, max_r, panic, dry_run, n_value,
         n_target, n_want, n_missing, observed, observed_replicas, forecast, horizon,
         decisions, refits, refit_cpu, slo_target) = (f[4] for f in fams)
        tel = self._tel
        policy = tel._policy
        slo_target.extend(tel._slo_targets)
        for (pool, role), rd in list(tel._roles.items()):
            key = (pool, role.value)
            desired.append((key, rd.desired))
            recommended.append((key, rd.recommended))
            current.append((key, rd.current))
            ready.append((key, rd.ready))
            pending.append((key, rd.pending))
            panic.append((key, 1 if rd.panic else 0))
            if policy is not None:
                spec = policy.pool(pool).roles[role]
                min_r.append((key, spec.min_replicas))
                max_r.append((key, spec.max_replicas))
            for need in rd.needs:
                nkey = (*key, need.source)
                n_want.append((nkey, need.want))
                n_missing.append((nkey, 1 if need.blocks_down else 0))
                if need.value is not None:
                    n_value.append((nkey, need.value))
                if need.target is not None:
                    n_target.append((nkey, need.target))
        for pool, dry in list(tel._dry_run.items()):
            dry_run.append(((pool,), 1 if dry else 0))
        for (pool, srole), by_key in list(tel._samples.items()):
            rname = srole.value  # an enum's .value is a descriptor call, once per role here
            for k, sample in by_key.items():
                skey = (pool, rname, k)
                if not sample.missing and sample.value is not None:
                    observed.append((skey, sample.value))
                observed_replicas.append((skey, sample.replicas))
        for fkey, (value, horizon_s) in list(tel._forecasts.items()):
            forecast.append((fkey, value))
            horizon.append((fkey, horizon_s))
        made = fams[17][5]
        for ckey, (count, at) in list(tel._decisions.items()):
            decisions.append((ckey, count))
            made.append((ckey, at))
        for (rpool, rrole), (ok, failed, cpu_s) in list(tel._refits.items()):
            refits.append(((rpool, rrole, "success"), ok))
            refits.append(((rpool, rrole, "failure"), failed))
            refit_cpu.append(((rpool, rrole), cpu_s))
        return fams


def slo_targets_of(policy: PolicyFile) -> list[tuple[tuple[str, str, str], float]]:
    """((pool, role, target), seconds) of every role whose policy kinds state a latency SLO (a
    config with `ttft_floor_s` / `itl_mean_s`, as the slo kind's): the dashboard draws them
    where a reactive policy's TTFT/ITL guard targets would be."""
    from autoscaler.policy import registry  # noqa: PLC0415 - only once a policy is recorded

    rows: list[tuple[tuple[str, str, str], float]] = []
    for p in policy.pools:
        for role, spec in p.roles.items():
            for i, ref in enumerate(spec.policies):
                try:
                    cfg = registry.validate_ref(
                        ref, where=f"pools.{p.name}.roles.{role.value}.policies.{i}"
                    )
                except errors.ConfigError:
                    continue  # the loop rejects it; nothing to draw
                for target, field in (("ttft_floor", "ttft_floor_s"), ("itl_mean", "itl_mean_s")):
                    value = getattr(cfg, field, None)
                    if isinstance(value, (int, float)):
                        rows.append(((p.name, role.value, target), float(value)))
    return rows


def _metric(f: _Fam) -> Metric:
    name, doc, kind, labels, rows, created = f
    if kind == "counter":
        c = CounterMetricFamily(name, doc, labels=labels)
        at = dict(created)
        for values, value in rows:
            c.add_metric(list(values), value, created=at.get(values))
        return c
    g = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        g.add_metric(list(values), value)
    return g


class InstrumentedSource:
    """A MetricsSource that exports what the wrapped source saw and how long it took."""

    def __init__(self, inner: MetricsSource, telemetry: Telemetry) -> None:
        self.inner = inner
        self.telemetry = telemetry

    async def fetch(self, targets: Sequence[RoleTarget], *, now: float) -> RoleSamples:
        start = time.perf_counter()
        try:
            samples = await self.inner.fetch(targets, now=now)
        except errors.MetricsUnavailable:
            self.telemetry.metric_source_error(query="all", reason="unavailable")
            raise
        finally:
            self.telemetry.fetch_seconds.observe(time.perf_counter() - start)
        self.telemetry.record_samples(samples)
        return samples


def driver_of(rd: RoleDecision) -> str:
    """A bounded label for what set the number: the driving need's source, or a missing-data
    class ("missing-data", "missing-data-floor"); read from the decision's data, never its prose."""
    return rd.cause.label()


def _first_clip(rd: RoleDecision) -> str:
    # The rule's code ("ratio"), not its parameters ("1:3").
    return rd.clips[0].code.value if rd.clips else "none"


# --- a process-wide default, for the wiring in cli/server ----------------------------------------

DEFAULT = Telemetry()


def record_decision(decision: Decision, policy: PolicyFile) -> None:
    """Record into the process default (a `loop.DecisionHook`)."""
    DEFAULT.record_decision(decision, policy)


def render() -> bytes:
    """The process default's exposition text."""
    return DEFAULT.render()
