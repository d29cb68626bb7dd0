"""Refill policy history from Prometheus at start-up, so a restart keeps what policies learnt.

Without it a restarted controller forecasts nothing for `min_history_s` and no seasonal model
for 2 days, and an `slo` policy forgets its burst headroom and trend: it sizes on the current
rate alone and, once the scale-down window has passed, releases the replicas the last bursts
needed (a leader failover or a rolling update would scale a pool down). Prometheus already
holds the series (the same rates the source reads each tick), so the controller asks for them
once, as range queries (at a forecast's bin width, at an slo policy's tick), and loads them
into each policy's history before the first tick.

The adapter (`metrics/prometheus.py`) implements `RangeRates`; this module only needs that
one-method protocol, so it is tested with a fake. Timestamps: Prometheus speaks wall-clock
seconds, the policies the controller's clock (`now`); the offset between the two is passed in.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import structlog

from autoscaler.loop import Loop
from autoscaler.metrics.source import MetricsSource, RoleTarget
from autoscaler.policy.base import Policy
from autoscaler.policy.forecast import ForecastPolicy
from autoscaler.policy.slo import SLOPolicy
from autoscaler.types import RATE_KEYS, Role

log = structlog.get_logger(__name__)

FloatArray = npt.NDArray[np.float64]


class RangeRates(Protocol):
    async def __call__(
        self, target: RoleTarget, series: str, *, start: float, end: float, step: float
    ) -> tuple[FloatArray, FloatArray]:
        """(wall-clock timestamps, values) of one role's `series` (a RATE_KEYS name, or
        `running` for total decode concurrency) over [start, end] every `step` seconds; a
        missing point is absent or NaN. May raise; backfill then skips that role."""
        ...


@dataclass(frozen=True, slots=True)
class Filled:
    pool: str
    role: Role
    series: str
    bins: int
    error: str = ""


def to_bins(
    ts: FloatArray, values: FloatArray, *, start_bin: int, n: int, bin_s: float, offset: float
) -> FloatArray:
    """Average points into bins `start_bin .. start_bin+n-1` of the policy clock
    (t_policy = t_wall + offset); NaN where no point fell."""
    sums = np.zeros(n)
    counts = np.zeros(n)
    ok = np.isfinite(values)
    k = np.floor((ts[ok] + offset) / bin_s).astype(np.int64) - start_bin
    inside = (k >= 0) & (k < n)
    np.add.at(sums, k[inside], values[ok][inside])
    np.add.at(counts, k[inside], 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(counts > 0, sums / counts, np.nan)
    return out


async def backfill_policy(
    policy: ForecastPolicy,
    target: RoleTarget,
    fetch: RangeRates,
    *,
    now: float,
    wall_now: float,
    max_history_s: float | None = None,
) -> int:
    """Load up to `history_s` (and at most `max_history_s`) of complete bins before `now` into
    one policy's history."""
    s = policy.settings
    hist = policy.forecaster.history
    offset = now - wall_now
    end_bin = math.floor(now / s.bin_s)  # the bin holding `now` is open: fill up to it
    n = hist.capacity
    if max_history_s is not None:
        n = min(n, max(1, math.floor(max_history_s / s.bin_s)))
    start_bin = end_bin - n
    ts, values = await fetch(
        target,
        policy.series,
        start=start_bin * s.bin_s - offset,
        end=end_bin * s.bin_s - offset,
        step=s.bin_s,
    )
    binned = to_bins(
        np.asarray(ts, dtype=np.float64),
        np.asarray(values, dtype=np.float64),
        start_bin=start_bin,
        n=n,
        bin_s=s.bin_s,
        offset=offset,
    )
    # Skip the leading bins before the series existed: an empty prefix is not history.
    first = np.flatnonzero(~np.isnan(binned))
    if len(first) == 0:
        return 0
    return hist.load(start_bin + int(first[0]), binned[first[0] :])


# The rates an slo policy's history is made of, in `SLOPolicy.prime`'s order.
SLO_SERIES = "+".join(RATE_KEYS)


async def backfill_slo(
    policy: SLOPolicy,
    target: RoleTarget,
    fetch: RangeRates,
    *,
    now: float,
    wall_now: float,
    max_history_s: float | None = None,
) -> int:
    """Load the span an slo policy remembers (burst memory and shape, trend and length
    windows) before `now`, one point per tick, into its history (`SLOPolicy.prime`). The three
    rates are fetched separately and joined on their timestamps; a step missing from any is
    left out."""
    c = policy.config
    span = max(
        c.burst_memory_s,
        c.burst_shape_memory_s,
        c.trend_window_s,
        c.length_window_s,
        2 * policy.window_s,
    )
    if max_history_s is not None:
        span = min(span, max_history_s)
    step = c.tick_s
    offset = now - wall_now
    end = math.floor(now / step) * step  # whole ticks before now, on the policy's clock
    start = end - math.floor(span / step) * step
    if end <= start:
        return 0
    columns: list[dict[float, float]] = []
    for key in RATE_KEYS:
        ts, values = await fetch(target, key, start=start - offset, end=end - offset, step=step)
        columns.append(
            {round(float(t) + offset, 3): float(v) for t, v in zip(ts, values, strict=True)}
        )
    requests, prompt, generated = columns
    common = sorted(set(requests).intersection(prompt, generated))
    return policy.prime([(t, requests[t], prompt[t], generated[t]) for t in common if t < now])


async def backfill(
    policies: Mapping[tuple[str, Role], Sequence[Policy]],
    targets: Iterable[RoleTarget],
    fetch: RangeRates,
    *,
    now: float,
    wall_now: float,
    max_history_s: float | None = None,
) -> list[Filled]:
    """Backfill every forecast and slo policy of the given roles; one role's failure skips
    only it. `max_history_s` caps how far back each policy is filled (a forecast's
    `history_s`, an slo policy's memory are the other cap)."""
    out = []
    for target in targets:
        for p in policies.get((target.pool, target.role), ()):
            series: str
            if isinstance(p, ForecastPolicy):
                series = p.series
                fill = backfill_policy(
                    p, target, fetch, now=now, wall_now=wall_now, max_history_s=max_history_s
                )
            elif isinstance(p, SLOPolicy):
                series = SLO_SERIES
                fill = backfill_slo(
                    p, target, fetch, now=now, wall_now=wall_now, max_history_s=max_history_s
                )
            else:
                continue
            try:
                n = await fill
            except Exception as exc:  # any adapter error: that role starts empty
                out.append(Filled(target.pool, target.role, series, 0, f"{exc}"))
                log.warning(
                    "forecast_backfill_failed",
                    pool=target.pool,
                    role=target.role.value,
                    series=series,
                    error=str(exc),
                )
                continue
            out.append(Filled(target.pool, target.role, series, n))
            log.info(
                "forecast_backfilled",
                pool=target.pool,
                role=target.role.value,
                series=series,
                bins=n,
            )
    return out


def range_rates_of(source: MetricsSource) -> RangeRates | None:
    """The source's range queries for the forecast backfill (PrometheusSource's
    `range_rates`, also behind telemetry's InstrumentedSource); None if it has none."""
    for candidate in (source, getattr(source, "inner", None)):
        fetch = getattr(candidate, "range_rates", None)
        if callable(fetch):
            found: RangeRates = fetch
            return found
    return None


async def refill(loop: Loop, source: MetricsSource, *, history_s: float, timeout_s: float,
                 clock: Callable[[], float], wall: Callable[[], float]) -> None:
    """Refill the history of forecast and slo policies that have none yet (a new leader, or
    roles a reload added) from Prometheus range queries, so a restart keeps the daily shape
    and the burst headroom. Bounded by `timeout_s`; a failure only logs (those roles learn
    live)."""
    fetch = range_rates_of(source)
    if fetch is None or history_s <= 0:
        return
    empty = {key: [p for p in ps
                   if (isinstance(p, ForecastPolicy) and p.forecaster.history.end_bin is None)
                   or (isinstance(p, SLOPolicy) and not p.has_history)]
             for key, ps in loop.policies.items()}
    todo = {key: ps for key, ps in empty.items() if ps}
    if not todo:
        return
    targets = [t for t in loop.targets() if (t.pool, t.role) in todo]
    t0 = clock()
    try:
        async with asyncio.timeout(timeout_s):
            filled = await backfill(todo, targets, fetch, now=clock(), wall_now=wall(),
                                    max_history_s=history_s)
    except TimeoutError:
        # Roles filled before the deadline keep their history (each load is atomic).
        log.warning("forecast_backfill_timeout", timeout_s=timeout_s, roles=len(todo))
        return
    except Exception as exc:  # never fatal: the forecast learns live instead
        log.warning("forecast_backfill_failed", error=repr(exc))
        return
    log.info("forecast_backfill_done", policies=len(filled),
             bins=sum(f.bins for f in filled), failed=sum(1 for f in filled if f.error),
             seconds=round(clock() - t0, 3))
