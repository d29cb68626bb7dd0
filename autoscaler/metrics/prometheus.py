"""PrometheusSource: the MetricsSource that reads vLLM series from a Prometheus server.

It sends one instant query per signal key per tick (see `queries.py` for how one query, whose
size does not depend on the pool count, covers every pool and role), form-encoded in the POST
body, over aiohttp (`metrics/http.py`: a deadline for the whole query and a cap on the body),
and judges every answer before using it (`metrics/validate.py`). It never decides what bad data
means; it reports it:

- a pod whose series is NaN/Inf, negative or absurd (validate.value_problem), or whose newest
  gauge sample is older than `max_sample_age_s`, is left out, so `SignalSample.replicas` drops
  below the ready count (partial data); so is a pod whose row is malformed;
- a role with no usable series gets `value=None` (missing);
- a query that failed (HTTP error, deadline missed, body over the size cap, a body that is not
  an instant vector) gives `value=None` for every role it covers;
- `MetricsUnavailable` is raised only when no query got an HTTP answer at all (Prometheus down
  or unreachable), so the controller can tell "no eyes" from "blurry eyes".

Each problem increments `pd_autoscaler_metric_source_errors_total{query,reason}` (when a
`Telemetry` is given) and is logged once when it starts and once when it clears, naming the
query, so a persistent gap does not flood the log.

`range_rates` (the `controller.backfill.RangeRates` protocol) is the other entry point, on the
same transport (`http.range_query`: form-encoded POST body, a deadline of `range_timeout_s` for
the whole request, the same body cap): range queries of one role's rate or concurrency, sent
once at start-up to refill forecast history. It raises `MetricsUnavailable` when a range query
fails after retries, and returns empty arrays when Prometheus has no data for the role.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import numpy as np
import numpy.typing as npt
import structlog

from autoscaler import errors
from autoscaler.metrics import http, queries, samples, source, validate
from autoscaler.metrics.settings import PrometheusSettings
from autoscaler.types import Role, SignalSample

log = structlog.get_logger(__name__)
T = TypeVar("T")

FloatArray = npt.NDArray[np.float64]



@dataclass(slots=True)
class _Outcome:
    """The result of one query: rows, or why there are none."""

    rows: Sequence[Any] | None
    """validate.Row for instant queries, Prometheus' matrix rows for range queries."""
    reason: str = ""
    error: str = ""
    answered: bool = True


@dataclass(slots=True)
class SourceStats:
    """Counters for tests and debugging (the Prometheus-facing ones live in telemetry)."""

    queries: int = 0
    """HTTP query requests sent, retries included."""
    range_queries: int = 0
    """HTTP query_range requests sent (backfill), retries included."""
    ticks: int = 0
    last_tick_queries: int = 0
    problems: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    """(query key, reason) -> count."""


class PrometheusSource:
    """Reads every role's signals from Prometheus; see the module docstring for semantics."""

    def __init__(
        self,
        settings: PrometheusSettings,
        *,
        telemetry: source.ErrorSink | None = None,
    ) -> None:
        if settings.rate_window_s <= 0 or settings.timeout_s <= 0 or settings.retries < 0:
            msg = "rate_window_s and timeout_s must be > 0, retries >= 0"
            raise errors.ConfigError([f"prometheus: {msg}"])
        if settings.max_response_bytes < 1024:
            msg = "max_response_bytes must be >= 1024"
            raise errors.ConfigError([f"prometheus: {msg}"])
        if settings.range_timeout_s <= 0 or not 1 <= settings.range_points_per_query <= 11000:
            msg = "range_timeout_s must be > 0, range_points_per_query 1-11000"
            raise errors.ConfigError([f"prometheus: {msg}"])
        self.settings = settings
        self.stats = SourceStats()
        self._telemetry = telemetry
        self._names = queries.Names.all()
        self._discovered_at: float | None = None
        self._last_plan: tuple[queries.Builder, Sequence[source.RoleTarget], queries.Plan] | None
        self._last_plan = None
        self._open_problems: dict[tuple[str, str, str], str] = {}
        self._sem = asyncio.Semaphore(settings.max_concurrency)
        self._endpoint = http.Endpoint(
            url=settings.url,
            ssl=http.ssl_context(ca_file=settings.ca_file, insecure=settings.insecure_skip_verify),
        )
        self._session: aiohttp.ClientSession | None = None
        self._auth = self._headers()

    def close(self) -> None:
        """Nothing to release: each fetch and each backfill opens and closes its own session.
        Kept so callers can treat every source alike."""

    @property
    def names(self) -> queries.Names:
        """The metric spellings currently queried."""
        return self._names

    def _headers(self) -> dict[str, str] | None:
        token = self.settings.bearer_token
        if self.settings.bearer_token_file:
            token = Path(self.settings.bearer_token_file).read_text(encoding="utf-8").strip()
        return {"Authorization": f"Bearer {token}"} if token else None

    # --- transport --------------------------------------------------------------------------

    async def _attempts(
        self, send: Callable[[], Awaitable[T]], *, count: str
    ) -> tuple[T | None, _Outcome, int]:
        """`send()` up to 1 + retries times with doubling backoff, each attempt counted in
        `stats.<count>` and run under the concurrency bound. Returns the answer (None after
        the last failure), the last failure and the number of attempts; never raises except
        on cancellation. Instant and range reads share it so their retry rules cannot drift
        apart."""
        delay = self.settings.backoff_s
        outcome = _Outcome(rows=None)
        attempt = 0
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            setattr(self.stats, count, getattr(self.stats, count) + 1)
            try:
                async with self._sem:
                    answer = await send()
            except http.QueryFailed as exc:
                outcome = _Outcome(
                    rows=None, reason=exc.reason, error=exc.error, answered=exc.answered
                )
                if not exc.retry:
                    break
            else:
                return answer, outcome, attempt + 1
        return None, outcome, attempt + 1

    async def _query(
        self, key: str, promql: str, only: tuple[str, frozenset[str]] | None = None
    ) -> _Outcome:
        """Run one instant query with retries and backoff; never raises except on
        cancellation. Rows dropped as malformed are counted and logged here."""
        session = self._session
        assert session is not None, "instant queries run inside fetch()"

        async def send() -> validate.Vector:
            return await http.instant_query(
                session,
                self._endpoint,
                promql,
                deadline_s=self.settings.timeout_s,
                max_bytes=self.settings.max_response_bytes,
                headers=self._auth,
                only=only,
            )

        vector, outcome, attempts = await self._attempts(send, count="queries")
        if vector is not None:
            self._track_dropped(key, vector.dropped)
            self._track_query(key, None)
            return _Outcome(rows=vector.rows)
        self._track_query(key, outcome, attempts=attempts)
        self._problem(key, outcome.reason)
        return outcome

    def _track_query(self, key: str, failed: _Outcome | None, *, attempts: int = 0) -> None:
        """Log a query's failure when it starts or its reason changes, and its recovery; a
        hostile answer repeated every tick is one line, not one per tick (it is counted in
        telemetry every time)."""
        slot = (key, "query", "")
        previous = self._open_problems.get(slot, "")
        if failed is None:
            if previous:
                del self._open_problems[slot]
                log.info("prometheus_query_recovered", query=key, was=previous)
            return
        if failed.reason == previous:
            return
        self._open_problems[slot] = failed.reason
        log.warning(
            "prometheus_query_failed",
            query=key,
            reason=failed.reason,
            error=failed.error[:300],
            attempts=attempts,
        )

    def _track_dropped(self, key: str, dropped: tuple[str, ...]) -> None:
        """Malformed rows: counted every time, logged when the query's problem changes."""
        for _ in dropped:
            self._problem(key, "malformed")
        slot = (key, "", "")
        problem = f"{len(dropped)} malformed rows, first: {dropped[0]}" if dropped else ""
        previous = self._open_problems.get(slot, "")
        if problem == previous:
            return
        if problem:
            self._open_problems[slot] = problem
            log.warning("metric_rows_dropped", query=key, count=len(dropped), first=dropped[0])
        else:
            del self._open_problems[slot]
            log.info("metric_rows_recovered", query=key, was=previous)

    async def _range(
        self,
        session: aiohttp.ClientSession,
        key: str,
        promql: str,
        *,
        first: float,
        last: float,
        step: float,
    ) -> _Outcome:
        """One range request with retries and backoff (as `_query`); every failure is logged,
        since the backfill runs once per leadership. The session is the caller's, so range
        reads never share state with a tick's fetch."""

        async def send() -> list[Any]:
            return await http.range_query(
                session,
                self._endpoint,
                promql,
                start=first,
                # Half a step of slack keeps the last point whatever the decimal rounding of
                # start and end (Prometheus evaluates start, start + step, ... up to end).
                end=last + step / 2,
                step=step,
                deadline_s=self.settings.range_timeout_s,
                max_bytes=self.settings.max_response_bytes,
                headers=self._auth,
            )

        rows, outcome, attempts = await self._attempts(send, count="range_queries")
        if rows is not None:
            return _Outcome(rows=rows)
        log.warning(
            "prometheus_query_failed",
            query=key,
            reason=outcome.reason,
            error=outcome.error[:300],
            attempts=attempts,
        )
        self._problem(key, outcome.reason)
        return outcome

    # --- discovery --------------------------------------------------------------------------

    async def _maybe_discover(self, now: float) -> None:
        interval = self.settings.discovery_interval_s
        if self._discovered_at is not None and now - self._discovered_at < interval:
            return
        self._discovered_at = now
        outcome = await self._query("discovery", queries.discovery_query())
        if outcome.rows is None:
            return  # keep the previous (or the full) set of spellings
        present = {row.labels.get("__name__", "") for row in outcome.rows}
        names = queries.Names.from_present(present)
        if names != self._names or not present:
            escaped = sorted(n for n in present if n.startswith("vllm_"))
            log.info(
                "vllm_metric_names",
                found=sorted(present),
                queried={f.value: list(n) for f, n in names.by_family.items()},
                escaped=escaped,
            )
            if escaped:
                log.warning(
                    "vllm_escaped_names",
                    names=escaped,
                    hint="a scrape path rewrote 'vllm:' to 'vllm_' (see docs/prometheus.md); "
                    "both spellings are read",
                )
        self._names = names

    # --- the MetricsSource protocol ---------------------------------------------------------

    @property
    def rate_window_s(self) -> float:
        """The window of every rate and histogram quantile this source reports (policies that
        recover short-window rates need it: `metrics.source.rate_window_of`)."""
        return self.settings.rate_window_s

    async def fetch(
        self, targets: Sequence[source.RoleTarget], *, now: float
    ) -> source.RoleSamples:
        if not targets:
            return {}
        if self.settings.bearer_token_file:
            self._auth = self._headers()
        # One session per tick: aiohttp sessions belong to an event loop, and a tick's few
        # queries share its connections; a new TCP connection every tick period costs nothing.
        connector = aiohttp.TCPConnector(limit=self.settings.max_concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            self._session = session
            try:
                return await self._fetch(targets, now=now)
            finally:
                self._session = None

    async def _fetch(
        self, targets: Sequence[source.RoleTarget], *, now: float
    ) -> source.RoleSamples:
        await self._maybe_discover(now)
        builder = queries.Builder(
            names=self._names,
            rate_window_s=self.settings.rate_window_s,
            pod_label=self.settings.pod_label,
            namespace_label=self.settings.namespace_label,
            max_sample_age_s=self.settings.max_sample_age_s,
        )
        plan = self._plan(targets, builder)
        before = self.stats.queries
        outcomes = await asyncio.gather(*(self._query(q.key, q.promql, q.only)
                                          for q in plan.queries))
        self.stats.ticks += 1
        self.stats.last_tick_queries = self.stats.queries - before
        if outcomes and all(not o.answered for o in outcomes):
            msg = f"Prometheus at {self.settings.url} unreachable: {outcomes[0].error[:200]}"
            raise errors.MetricsUnavailable(msg)
        samples: dict[tuple[str, Role], dict[str, SignalSample]] = {
            (t.pool, t.role): {} for t in targets
        }
        # batched_tokens is tokens per step over the role's token budget (types.SignalName).
        scale = {(t.pool, t.role.value): float(t.spec.max_num_batched_tokens) for t in targets}
        with http.paused_gc():  # a row's worth of small objects per pod, no cycles
            for q, outcome in zip(plan.queries, outcomes, strict=True):
                per_role = self._interpret(
                    q, outcome, scale=scale if q.key == "batched_tokens" else {}
                )
                for pool, role in q.roles:
                    samples[(pool, Role(role))][q.key] = per_role[(pool, role)]
        for (pool, role), why in plan.invalid.items():
            for key in plan.expected[(pool, role)]:
                samples[(pool, Role(role))][key] = SignalSample(value=None, detail=why)
                self._track(key, (pool, role), ("invalid_selector",), why)
        return samples

    def _plan(self, targets: Sequence[source.RoleTarget], builder: queries.Builder) -> queries.Plan:
        """The tick's queries; the previous tick's when neither the roles (the very same spec
        objects, which the policy holds until it is reloaded) nor the spellings changed:
        building them walks every role's signals (~0.07 s at 1,000 pools)."""
        last = self._last_plan
        if (
            last is not None
            and last[0] == builder
            and len(last[1]) == len(targets)
            and all(
                a.spec is b.spec and a.pool == b.pool and a.role is b.role
                for a, b in zip(last[1], targets, strict=True)
            )
        ):
            return last[2]
        plan = queries.plan(targets, builder)
        # The targets are kept with the plan, so no spec compared by identity can be freed
        # and its address reused while the plan is cached.
        self._last_plan = (builder, list(targets), plan)
        return plan

    # --- range queries (forecast backfill) --------------------------------------------------

    async def range_rates(
        self, target: source.RoleTarget, series: str, *, start: float, end: float, step: float
    ) -> tuple[FloatArray, FloatArray]:
        """One role's `series` (a RATE_KEYS name, or `running` for the sum of running requests)
        over [start, end) in wall-clock seconds: one point per step, evaluated in the middle of
        each interval [start + i*step, start + (i+1)*step), as the average tick inside a bin
        would read it. Each point is the instant query's expression at that time (the rate
        window widened to `step` when that is longer, so no sample falls between two points),
        summed over the role's pods. Returns (timestamps, values), oldest first; a step where
        no pod reported is absent.

        Spellings: every name of a family is queried (not only what discovery found now), so
        history from before a vLLM upgrade that renamed a metric is read too.

        Raises ValueError for a series it cannot query or a role selector that cannot be built,
        and MetricsUnavailable when a request fails after retries (any one of the range's
        requests: the role then starts with no history rather than a hole in it)."""
        empty = np.empty(0, dtype=np.float64)
        if step <= 0 or end <= start:
            return empty, empty.copy()
        s = self.settings
        builder = queries.Builder(
            names=queries.Names.all(),
            rate_window_s=max(s.rate_window_s, step),
            pod_label=s.pod_label,
            namespace_label=s.namespace_label,
        )
        selector = queries.role_selector(
            target, pod_label=s.pod_label, namespace_label=s.namespace_label
        )
        promql = builder.role_total(series, selector)
        if s.bearer_token_file:
            self._auth = self._headers()
        n = math.ceil((end - start) / step - 1e-9)
        per = s.range_points_per_query
        key = f"range_{series}"
        connector = aiohttp.TCPConnector(limit=s.max_concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            outcomes = await asyncio.gather(
                *(
                    self._range(
                        session,
                        key,
                        promql,
                        first=start + (i + 0.5) * step,
                        last=start + (min(i + per, n) - 0.5) * step,
                        step=step,
                    )
                    for i in range(0, n, per)
                )
            )
        for outcome in outcomes:
            if outcome.rows is None:
                where = f"{target.pool}/{target.role.value}"
                msg = (
                    f"range query {series} of {where} failed ({outcome.reason}): "
                    f"{outcome.error[:200]}"
                )
                raise errors.MetricsUnavailable(msg)
        points = samples.range_points(row for outcome in outcomes for row in outcome.rows or ())
        if not points:
            log.info(
                "prometheus_range_empty",
                query=key,
                pool=target.pool,
                role=target.role.value,
                start=start,
                end=end,
            )
            return empty, empty.copy()
        points.sort()
        ts = np.fromiter((t for t, _ in points), dtype=np.float64, count=len(points))
        values = np.fromiter((v for _, v in points), dtype=np.float64, count=len(points))
        return ts, values

    # --- interpretation ---------------------------------------------------------------------

    def _interpret(
        self, q: queries.Query, outcome: _Outcome, *, scale: Mapping[tuple[str, str], float]
    ) -> Mapping[tuple[str, str], SignalSample]:
        if outcome.rows is None:
            detail = f"query failed: {outcome.reason}"
            return {pr: SignalSample(value=None, replicas=0, detail=detail) for pr in q.roles}
        grouped = samples.by_role(q, outcome.rows, namespace_label=self.settings.namespace_label)
        out: dict[tuple[str, str], SignalSample] = {}
        derived: dict[tuple[str, str], tuple[str, str]] | None = None
        for pr, rows in grouped.items():
            if q.kind is queries.Kind.QUANTILE:
                sample, reasons = samples.quantile(rows)
            elif q.kind is queries.Kind.SPREAD:
                sample, reasons = samples.spread(rows)
            else:
                sample, reasons = samples.per_pod(
                    q.kind,
                    rows,
                    scale=scale.get(pr, 1.0),
                    pod_label=self.settings.pod_label,
                    max_sample_age_s=self.settings.max_sample_age_s,
                )
            if not rows and q.deployments:
                # Say how the role's pods were looked for: a role found by pod name whose pods
                # are not a ReplicaSet's (a StatefulSet, relabelled names) needs a pod_regex.
                if derived is None:
                    derived = {p: d for d, ps in q.deployments.items() for p in ps}
                where = derived.get(pr)
                if where is not None:
                    hint = (
                        f"; looked for pods named {where[1]}-<hash>-<suffix> in namespace "
                        f"{where[0]} (other pod names need metrics.pod_regex)"
                    )
                    sample = SignalSample(
                        value=sample.value, replicas=sample.replicas, detail=sample.detail + hint
                    )
            out[pr] = sample
            self._track(q.key, pr, reasons, sample.detail)
        return out

    # --- problem tracking -------------------------------------------------------------------

    def _problem(self, key: str, reason: str) -> None:
        self.stats.problems[(key, reason)] += 1
        if self._telemetry is not None:
            self._telemetry.metric_source_error(query=key, reason=reason)

    def _track(self, key: str, pr: tuple[str, str], reasons: tuple[str, ...], detail: str) -> None:
        """Count every occurrence; log only when a role's problem starts, changes or clears."""
        for reason in reasons:
            self._problem(key, reason)
        slot = (key, pr[0], pr[1])
        problem = detail if reasons else ""
        previous = self._open_problems.get(slot, "")
        if problem == previous:
            return
        if problem:
            self._open_problems[slot] = problem
            log.warning(
                "metric_data_problem",
                query=key,
                pool=pr[0],
                role=pr[1],
                reasons=list(reasons),
                detail=detail,
            )
        else:
            del self._open_problems[slot]
            log.info("metric_data_recovered", query=key, pool=pr[0], role=pr[1], was=previous)
