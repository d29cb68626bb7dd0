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

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from autoscaler import errors

if TYPE_CHECKING:
    from autoscaler.metrics.source import MetricsSource, RoleSamples, RoleTarget
    from autoscaler.spec import PolicyFile
    from autoscaler.types import Decision, RoleDecision

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Classic text format 0.0.4: every Prometheus version parses it (see docs/prometheus.md on
why the controller never negotiates OpenMetrics)."""

_PR = ("pool", "role")

# Tick durations: from a few ms (cached, small) to the 30 s where a 15 s tick has fallen behind.
_TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Telemetry:
    """Every controller metric, in `self.registry`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.desired = Gauge(
            "pd_autoscaler_desired_replicas", "Replicas the controller wants.", _PR, registry=r
        )
        self.recommended = Gauge(
            "pd_autoscaler_recommended_replicas",
            "Raw need (max over sources) before hysteresis, limits and coupling.",
            _PR,
            registry=r,
        )
        self.current = Gauge(
            "pd_autoscaler_current_replicas", "Deployment spec.replicas.", _PR, registry=r
        )
        self.ready = Gauge("pd_autoscaler_ready_replicas", "Ready replicas.", _PR, registry=r)
        self.pending = Gauge(
            "pd_autoscaler_pending_replicas", "Requested, not yet ready replicas.", _PR, registry=r
        )
        self.min_replicas = Gauge(
            "pd_autoscaler_min_replicas", "Configured lower bound.", _PR, registry=r
        )
        self.max_replicas = Gauge(
            "pd_autoscaler_max_replicas", "Configured upper bound.", _PR, registry=r
        )
        self.panic = Gauge(
            "pd_autoscaler_panic", "1 while the role is in panic mode.", _PR, registry=r
        )
        self.dry_run = Gauge(
            "pd_autoscaler_dry_run", "1 when decisions are not applied.", ("pool",), registry=r
        )
        self.need_value = Gauge(
            "pd_autoscaler_signal_value",
            "A source's observed value (per-replica mean, fraction, seconds, or a forecast).",
            (*_PR, "signal"),
            registry=r,
        )
        self.need_target = Gauge(
            "pd_autoscaler_signal_target",
            "The source's target per ready replica.",
            (*_PR, "signal"),
            registry=r,
        )
        self.need_want = Gauge(
            "pd_autoscaler_signal_wanted_replicas",
            "Replicas this source asks for.",
            (*_PR, "signal"),
            registry=r,
        )
        self.need_missing = Gauge(
            "pd_autoscaler_signal_missing",
            "1 when the source had no trustworthy data (it blocks scale-down).",
            (*_PR, "signal"),
            registry=r,
        )
        self.observed = Gauge(
            "pd_autoscaler_observed_value",
            "What the metric source reported per role and key (signals and rates).",
            (*_PR, "key"),
            registry=r,
        )
        self.observed_replicas = Gauge(
            "pd_autoscaler_observed_reporting_replicas",
            "Pods that contributed to the observed value.",
            (*_PR, "key"),
            registry=r,
        )
        self.forecast = Gauge(
            "pd_autoscaler_forecast_value",
            "A forecast policy's prediction of a series at its horizon.",
            (*_PR, "series"),
            registry=r,
        )
        self.forecast_horizon = Gauge(
            "pd_autoscaler_forecast_horizon_seconds",
            "How far ahead the forecast looks.",
            (*_PR, "series"),
            registry=r,
        )
        self.decisions = Counter(
            "pd_autoscaler_decisions",
            "Decisions per role by direction, driving source and first clipping rule.",
            (*_PR, "direction", "driver", "clipped_by"),
            registry=r,
        )
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
        self._need_keys: set[tuple[str, str, str]] = set()
        self._observed_keys: set[tuple[str, str, str]] = set()
        self._role_keys: set[tuple[str, str]] = set()
        # Pre-create the unlabelled-by-data children so a fresh controller exports zeros (rate()
        # over a counter that appears at its first increment misses that increment).
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.leader.set(0)

    # --- recording --------------------------------------------------------------------------

    def record_decision(self, decision: Decision, policy: PolicyFile) -> None:
        """Export one tick's decision; usable directly as a `loop.DecisionHook`."""
        seen_roles: set[tuple[str, str]] = set()
        seen_needs: set[tuple[str, str, str]] = set()
        for pool_name, pd in decision.pools.items():
            self.dry_run.labels(pool_name).set(1 if pd.dry_run else 0)
            try:
                pool_spec = policy.pool(pool_name)
            except KeyError:
                pool_spec = None
            for role, rd in pd.roles.items():
                key = (pool_name, role.value)
                seen_roles.add(key)
                self.desired.labels(*key).set(rd.desired)
                self.recommended.labels(*key).set(rd.recommended)
                self.current.labels(*key).set(rd.current)
                self.ready.labels(*key).set(rd.ready)
                self.pending.labels(*key).set(rd.pending)
                self.panic.labels(*key).set(1 if rd.panic else 0)
                if pool_spec is not None and role in pool_spec.roles:
                    spec = pool_spec.roles[role]
                    self.min_replicas.labels(*key).set(spec.min_replicas)
                    self.max_replicas.labels(*key).set(spec.max_replicas)
                direction = (
                    "up"
                    if rd.desired > rd.current
                    else "down"
                    if rd.desired < rd.current
                    else "hold"
                )
                self.decisions.labels(
                    *key, direction, driver_of(rd), _first_clip(rd)
                ).inc()
                for need in rd.needs:
                    nkey = (*key, need.source)
                    seen_needs.add(nkey)
                    self.need_want.labels(*nkey).set(need.want)
                    self.need_missing.labels(*nkey).set(1 if need.blocks_down else 0)
                    _set_or_drop(self.need_value, nkey, need.value)
                    _set_or_drop(self.need_target, nkey, need.target)
        # A role or source that left the policy stops being exported (hot reload), instead of
        # freezing at its last value.
        # Roles configured but not decided this tick (their pool was unobserved) keep their last
        # values; roles and sources that left the policy are dropped, not frozen.
        configured = {(p.name, r.value) for p in policy.pools for r in p.roles}
        undecided = configured - seen_roles
        kept_needs = {k for k in self._need_keys if k[:2] in undecided}
        for gone in self._need_keys - seen_needs - kept_needs:
            for g in (self.need_value, self.need_target, self.need_want, self.need_missing):
                _drop(g, gone)
        self._need_keys = seen_needs | kept_needs
        for gone_role in (self._role_keys | seen_roles) - configured:
            for g in (
                self.desired,
                self.recommended,
                self.current,
                self.ready,
                self.pending,
                self.panic,
                self.min_replicas,
                self.max_replicas,
            ):
                _drop(g, gone_role)
        self._role_keys = (self._role_keys | seen_roles) & configured
        self.last_tick.set(time.time())

    def record_samples(self, samples: RoleSamples) -> None:
        """Export what the metric source reported (value and reporting replicas per key)."""
        seen: set[tuple[str, str, str]] = set()
        for (pool, role), by_key in samples.items():
            for k, sample in by_key.items():
                key = (pool, role.value, k)
                seen.add(key)
                value = None if sample.missing else sample.value
                _set_or_drop(self.observed, key, value)
                self.observed_replicas.labels(*key).set(sample.replicas)
        for gone in self._observed_keys - seen:
            _drop(self.observed, gone)
            _drop(self.observed_replicas, gone)
        self._observed_keys = seen

    def record_forecast(
        self, pool: str, role: str, *, series: str, value: float, horizon_s: float
    ) -> None:
        """A forecast policy's prediction (e.g. series="request_rate") `horizon_s` ahead."""
        self.forecast.labels(pool, role, series).set(value)
        self.forecast_horizon.labels(pool, role, series).set(horizon_s)

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
        return generate_latest(self.registry)


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


def _set_or_drop(g: Gauge, key: tuple[str, ...], value: float | None) -> None:
    if value is None:
        _drop(g, key)
    else:
        g.labels(*key).set(value)


def _drop(g: Gauge, key: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        g.remove(*key)


# --- a process-wide default, for the wiring in cli/server ----------------------------------------

DEFAULT = Telemetry()


def record_decision(decision: Decision, policy: PolicyFile) -> None:
    """Record into the process default (a `loop.DecisionHook`)."""
    DEFAULT.record_decision(decision, policy)


def render() -> bytes:
    """The process default's exposition text."""
    return DEFAULT.render()
