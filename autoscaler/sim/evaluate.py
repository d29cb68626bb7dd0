"""Evaluation of a simulated run: SLO attainment, latency, GPU-hours, stability, an oracle.

Follows docs/SIM-MODEL.md §3.2 (SLO attainment, cost, provisioning accuracy, stability):

* A request **meets the SLO** when it finished, its TTFT <= max(ttft_floor_s, ttft_slowdown x
  its prefill time on an idle replica) (a Splitwise-style slowdown bound with a floor, so short
  prompts are not held to a few milliseconds), and its mean ITL <= itl_mean_s (Dynamo's 50 ms
  default). One-token outputs have no ITL and pass that half. Unfinished requests miss.
* **GPU-hours**: every replica from the moment it was requested (cold start included) until it
  stopped (drain included), times its GPUs.
* **Scale events** and **reversals**: a reversal is a change of a role's replicas in the
  opposite direction of that role's previous change within `reversal_window_s` (10 min).
* **Oracle**: a fluid lower bound on the GPU-hours of a fleet reaching 99 % attainment (minute
  throughput and prefill bursts against the TTFT deadlines); see `oracle`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from autoscaler.types import Role

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from autoscaler.profile import Profile
    from autoscaler.sim.engine import RequestResults, ScaleEvent, SimPool, Simulation

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SLO:
    """Per-request service-level objective (defaults: the project's evaluation settings)."""

    ttft_floor_s: float = 0.5
    ttft_slowdown: float = 3.0
    itl_mean_s: float = 0.05


def idle_prefill_s(profile: Profile, prompt_tokens: IntArray) -> FloatArray:
    """Prefill time of each prompt alone on an idle replica (chunked by the token budget),
    vectorised `Profile.idle_prefill_s`."""
    m = profile.max_num_batched_tokens
    p = np.maximum(np.asarray(prompt_tokens, dtype=np.int64), 1)
    full, rest = np.divmod(p, m)
    a_d, a_p, b_p = (
        profile.decode_alpha_ms,
        profile.prefill_alpha_ms,
        profile.prefill_beta_ms_per_token,
    )
    rest_f = rest.astype(np.float64)
    # A step's token-linear cost is max(alpha_d, alpha_p + beta_p·tokens) (Profile.linear_ms);
    # each chunk attends to the prefix before it, so the attention terms sum to P² (engine.py).
    ar, ar0 = profile.allreduce_ms_per_token, profile.allreduce_latency_tokens
    ms = (
        full * (profile.linear_ms(m) + profile.sched_ms_per_seq)
        + np.where(
            rest > 0,
            np.maximum(a_d, a_p + b_p * rest_f)
            + ar * np.maximum(rest_f - ar0, 0.0)
            + profile.sched_ms_per_seq,
            0.0,
        )
        + profile.prefill_gamma_ms_per_token2 * p.astype(np.float64) ** 2
    )
    out: FloatArray = ms / 1000.0
    return out


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """Per-request latencies and SLO verdicts (NaN latencies for unfinished requests)."""

    ttft_s: FloatArray
    mean_itl_s: FloatArray
    idle_prefill_s: FloatArray
    ttft_limit_s: FloatArray
    finished: BoolArray
    ttft_ok: BoolArray
    itl_ok: BoolArray

    @property
    def met(self) -> BoolArray:
        ok: BoolArray = self.finished & self.ttft_ok & self.itl_ok
        return ok


def request_outcome(results: RequestResults, profile: Profile, slo: SLO = SLO()) -> RequestOutcome:
    """Each request's TTFT, mean ITL, idle prefill time and SLO verdicts."""
    ttft = results.ttft_s
    itl = results.mean_itl_s
    idle = idle_prefill_s(profile, results.prompt_tokens)
    limit = np.maximum(slo.ttft_floor_s, slo.ttft_slowdown * idle)
    finished = ~np.isnan(results.finish_s)
    with np.errstate(invalid="ignore"):
        ttft_ok = ttft <= limit
        itl_ok = np.isnan(itl) | (itl <= slo.itl_mean_s)
    return RequestOutcome(
        ttft_s=ttft,
        mean_itl_s=itl,
        idle_prefill_s=idle,
        ttft_limit_s=limit,
        finished=finished,
        ttft_ok=ttft_ok & finished,
        itl_ok=itl_ok & finished,
    )


# Latency summaries of OutcomeTally: logarithmic bins 0.1 % wide from 1 us to 1e6 s (a value is
# reported at its bin's geometric centre: within 0.05 % of the exact percentile's order statistic).
_Q_LO = 1e-6
_Q_STEP = math.log1p(1e-3)
_Q_BINS = math.ceil(math.log(1e12) / _Q_STEP)
# Finished requests buffered before they are judged in bulk.
_TALLY_BATCH = 4096


class OutcomeTally:
    """SLO verdicts of finished requests, counted as they finish, without keeping the requests
    (a `RequestSink` for `Simulation`: a multi-day replay keeps no per-request arrays).

    Exact: requests finished, met, TTFT-ok, ITL-ok (the attainment figures), and met requests
    per arrival bin (`met_by_bin`). Summarised: TTFT and mean ITL in logarithmic bins 0.1 %
    wide, so their percentiles are within 0.05 % of `evaluate`'s on per-request arrays. Unlike
    those arrays, a request that got its first token but never finished is not in the TTFT
    percentiles (a backtest runs until every request finished, so none is)."""

    def __init__(
        self, profile: Profile, slo: SLO = SLO(), *, bin_s: float = 60.0, start_s: float = 0.0
    ) -> None:
        self.profile = profile
        self.slo = slo
        self.bin_s = bin_s
        # Requests arriving before start_s (a warm-up) are counted in `skipped`, not judged.
        self.start_s = start_s
        self.skipped = 0
        self._buf: list[tuple[float, int, int, float, float, int]] = []
        self._finished = 0
        self._met = 0
        self._ttft_ok = 0
        self._itl_ok = 0
        self._met_by_bin = np.zeros(0, dtype=np.int64)
        self._ttft = np.zeros(_Q_BINS, dtype=np.int64)
        self._itl = np.zeros(_Q_BINS, dtype=np.int64)

    def add(self, record: tuple[float, int, int, float, float, int]) -> None:
        """(arrival, prompt tokens, output tokens, first token, finish, preemptions)."""
        if record[0] < self.start_s:
            self.skipped += 1
            return
        self._buf.append(record)
        if len(self._buf) >= _TALLY_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        a, prompt, output, first, finish, _ = (np.asarray(c) for c in zip(*self._buf, strict=True))
        self._buf = []
        ttft = first - a
        gaps = (output - 1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            itl = np.where(gaps > 0, (finish - first) / gaps, np.nan)
        limit = np.maximum(
            self.slo.ttft_floor_s, self.slo.ttft_slowdown * idle_prefill_s(self.profile, prompt)
        )
        with np.errstate(invalid="ignore"):
            ttft_ok = ttft <= limit
            itl_ok = np.isnan(itl) | (itl <= self.slo.itl_mean_s)
        met = ttft_ok & itl_ok
        self._finished += len(a)
        self._met += int(met.sum())
        self._ttft_ok += int(ttft_ok.sum())
        self._itl_ok += int(itl_ok.sum())
        b = (a // self.bin_s).astype(np.int64)
        top = int(b.max()) + 1
        if len(self._met_by_bin) < top:
            grown = np.zeros(max(top, 2 * len(self._met_by_bin)), dtype=np.int64)
            grown[: len(self._met_by_bin)] = self._met_by_bin
            self._met_by_bin = grown
        np.add.at(self._met_by_bin, b[met], 1)
        self._ttft += _log_hist(ttft)
        self._itl += _log_hist(itl[~np.isnan(itl)])

    @property
    def finished(self) -> int:
        self._flush()
        return self._finished

    @property
    def met(self) -> int:
        self._flush()
        return self._met

    @property
    def ttft_ok(self) -> int:
        self._flush()
        return self._ttft_ok

    @property
    def itl_ok(self) -> int:
        self._flush()
        return self._itl_ok

    def met_by_bin(self, nbins: int) -> IntArray:
        """Requests that met the SLO per arrival bin (bins of `bin_s`), `nbins` of them."""
        self._flush()
        out = np.zeros(nbins, dtype=np.int64)
        n = min(nbins, len(self._met_by_bin))
        out[:n] = self._met_by_bin[:n]
        return out

    def ttft_percentile(self, q: float) -> float:
        self._flush()
        return _hist_percentile(self._ttft, q)

    def itl_percentile(self, q: float) -> float:
        self._flush()
        return _hist_percentile(self._itl, q)


def in_spans(t: float, spans: Sequence[tuple[float, float]]) -> bool:
    """Whether t lies in one of the spans [a, b)."""
    return any(a <= t < b for a, b in spans)


def judged_mask(arrival_s: FloatArray, skip: Sequence[tuple[float, float]]) -> BoolArray:
    """The requests arriving outside every skipped span [a, b)."""
    keep = np.ones(len(arrival_s), dtype=bool)
    for a, b in skip:
        keep &= (arrival_s < a) | (arrival_s >= b)
    return keep


def leading_skip_s(skip: Sequence[tuple[float, float]]) -> float:
    """Where judging starts when a skipped span leads from 0 (a warm-up), else 0."""
    return max((b for a, b in skip if a <= 0), default=0.0)


def warmup_spans(starts: Sequence[float], warmup_s: float) -> tuple[tuple[float, float], ...]:
    """The skipped spans of a warm-up of `warmup_s` after each start (none when it is 0)."""
    return tuple((s, s + warmup_s) for s in starts) if warmup_s > 0 else ()


def _log_hist(x: FloatArray) -> IntArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        i = np.floor(np.log(np.maximum(x, _Q_LO) / _Q_LO) / _Q_STEP)
    return np.bincount(np.clip(i, 0, _Q_BINS - 1).astype(np.int64), minlength=_Q_BINS)


def _hist_percentile(hist: IntArray, q: float) -> float:
    """np.percentile's order statistic (rank q/100 x (n - 1), rounded down), read from the bins."""
    n = int(hist.sum())
    if not n:
        return math.nan
    rank = math.floor(q / 100.0 * (n - 1))
    i = int(np.searchsorted(np.cumsum(hist), rank, side="right"))
    return _Q_LO * math.exp((i + 0.5) * _Q_STEP)


def count_reversals(events: Sequence[ScaleEvent], *, window_s: float = 600.0) -> int:
    """Changes of a role's replicas opposite to that role's previous change, within window_s."""
    last: dict[tuple[str, Role], tuple[float, int]] = {}
    n = 0
    for e in sorted(events, key=lambda e: e.t):
        direction = 1 if e.to_replicas > e.from_replicas else -1
        key = (e.pool, e.role)
        prev = last.get(key)
        if prev is not None and prev[1] != direction and e.t - prev[0] <= window_s:
            n += 1
        last[key] = (e.t, direction)
    return n


def _pct(x: FloatArray, q: float) -> float:
    x = x[~np.isnan(x)]
    return float(np.percentile(x, q)) if x.size else math.nan


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The summary of one pool's run (what the backtest reports per policy)."""

    requests: int
    finished: int
    slo_attainment: float
    ttft_attainment: float
    itl_attainment: float
    ttft_p50_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p99_s: float
    gpu_hours: float
    gpu_hours_by_role: dict[Role, float]
    scale_events: int
    scale_events_by_role: dict[Role, int]
    reversals: int
    preemptions: int
    oracle_gpu_hours: float | None = None
    prefix_cache_hit_rate: float = math.nan
    """Prefix-cache hits / queries in tokens (nan when the trace has no block hashes)."""
    extra: dict[str, float] = field(default_factory=dict)


def evaluate(
    sim: Simulation,
    pool: str,
    *,
    slo: SLO = SLO(),
    end_s: float | None = None,
    reversal_window_s: float = 600.0,
    with_oracle: bool = True,
    skip: Sequence[tuple[float, float]] = (),
) -> Evaluation:
    """Summarise pool `pool` of `sim` up to `end_s` (default: the simulation's now), leaving out
    the spans [a, b) in `skip` (warm-ups, `ReplayConfig.warmup_s`; one per window when windows
    are replayed back to back): requests arriving in them, GPU-seconds held in them and scale
    events in them are not judged."""
    p = sim.pool(pool)
    events = [e for e in sim.scale_events() if e.pool == pool and not in_spans(e.t, skip)]
    roles = list(p.deployments)
    end = sim.now if end_s is None else end_s

    def held(role: Role) -> float:
        total = sim.gpu_seconds(pool=pool, role=role, at=end)
        for a, b in skip:
            if a < end:
                total -= sim.gpu_seconds(pool=pool, role=role, at=min(b, end)) - sim.gpu_seconds(
                    pool=pool, role=role, at=a
                )
        return total / 3600.0

    gpu_by_role = {r: held(r) for r in roles}
    if not p.keep:
        return _evaluate_tally(p, slo, events, gpu_by_role, reversal_window_s, skip=skip)
    res = p.results()
    if skip:
        res = res.take(judged_mask(res.arrival_s, skip))
    out = request_outcome(res, p.profile, slo)
    n = len(res.arrival_s)
    oracle_h = None
    if with_oracle and n:
        oracle_h = oracle(
            res.arrival_s - leading_skip_s(skip),  # its bins start where judging does
            res.prompt_tokens,
            res.output_tokens,
            p.profile,
            disaggregated=p.disaggregated,
            slo=slo,
        ).gpu_hours
    return Evaluation(
        requests=n,
        finished=int(out.finished.sum()),
        slo_attainment=float(out.met.mean()) if n else math.nan,
        ttft_attainment=float(out.ttft_ok.mean()) if n else math.nan,
        itl_attainment=float(out.itl_ok.mean()) if n else math.nan,
        ttft_p50_s=_pct(out.ttft_s, 50),
        ttft_p99_s=_pct(out.ttft_s, 99),
        itl_p50_s=_pct(out.mean_itl_s, 50),
        itl_p99_s=_pct(out.mean_itl_s, 99),
        gpu_hours=sum(gpu_by_role.values()),
        gpu_hours_by_role=gpu_by_role,
        scale_events=len(events),
        scale_events_by_role={r: sum(1 for e in events if e.role is r) for r in roles},
        reversals=count_reversals(events, window_s=reversal_window_s),
        preemptions=int(res.preemptions.sum()),
        oracle_gpu_hours=oracle_h,
        prefix_cache_hit_rate=p.prefix_cache_hit_rate(),
    )


@dataclass(frozen=True, slots=True)
class Oracle:
    """Per-bin fewest replicas per role and the GPU-hours they add up to.

    `replicas` / `gpu_hours`: the SLO-aware bound (throughput and prefill bursts, at the
    attainment target); `throughput_*`: the minute-mean throughput part alone;
    `all_requests_gpu_hours`: the SLO-aware bound with no request allowed to miss."""

    bin_start_s: FloatArray
    replicas: dict[Role, IntArray]
    gpu_hours: float
    prefill_capacity_tok_s: float
    decode_capacity_tok_s: FloatArray
    throughput_replicas: dict[Role, IntArray]
    throughput_gpu_hours: float
    all_requests_gpu_hours: float
    attainment: float
    miss_budget: int


def _evaluate_tally(
    p: SimPool,
    slo: SLO,
    events: list[ScaleEvent],
    gpu_by_role: dict[Role, float],
    reversal_window_s: float,
    *,
    skip: Sequence[tuple[float, float]],
) -> Evaluation:
    """`evaluate` of a pool whose finished requests went to an OutcomeTally (no oracle: the
    caller has the stream; `oracle_of_stream`)."""
    tally = p.sink
    if not isinstance(tally, OutcomeTally) or tally.slo != slo or tally.profile != p.profile:
        msg = f"pool {p.name}: keeps no results and its sink is not an OutcomeTally for this SLO"
        raise ValueError(msg)
    if tuple(skip) != warmup_spans((0.0,), tally.start_s):
        msg = (
            f"pool {p.name}: its OutcomeTally judges from {tally.start_s:g} s, the evaluation "
            f"skips {list(skip)} (a streamed pool takes one leading warm-up)"
        )
        raise ValueError(msg)
    # Requests that arrived in the warm-up were loaded but not judged (the tally skipped them).
    n = p.loaded - tally.skipped
    roles = list(gpu_by_role)
    return Evaluation(
        requests=n,
        finished=tally.finished,
        slo_attainment=tally.met / n if n else math.nan,
        ttft_attainment=tally.ttft_ok / n if n else math.nan,
        itl_attainment=tally.itl_ok / n if n else math.nan,
        ttft_p50_s=tally.ttft_percentile(50),
        ttft_p99_s=tally.ttft_percentile(99),
        itl_p50_s=tally.itl_percentile(50),
        itl_p99_s=tally.itl_percentile(99),
        gpu_hours=sum(gpu_by_role.values()),
        gpu_hours_by_role=gpu_by_role,
        scale_events=len(events),
        scale_events_by_role={r: sum(1 for e in events if e.role is r) for r in roles},
        reversals=count_reversals(events, window_s=reversal_window_s),
        preemptions=p.n_preemptions,
        prefix_cache_hit_rate=p.prefix_cache_hit_rate(),
    )


# Window widths (seconds) of the prefill burst bound: windows anchored at every arrival, clipped
# to its minute. More widths only tighten the bound (each window is a valid constraint).
BURST_WIDTHS_S: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)


def _range_max_table(x: FloatArray) -> list[FloatArray]:
    """Sparse table: level j holds max(x[i : i + 2**j]) at index i."""
    table = [x]
    k = 1
    while 2 * k <= len(x):
        prev = table[-1]
        table.append(np.maximum(prev[:-k], prev[k:]))
        k *= 2
    return table


def _range_max(table: list[FloatArray], lo: IntArray, hi: IntArray) -> FloatArray:
    """max(x[lo:hi]) per row (hi > lo), vectorised."""
    span = hi - lo
    level = np.frexp(span.astype(np.float64))[1].astype(np.int64) - 1  # floor(log2(span))
    out = np.empty(len(lo), dtype=np.float64)
    for j in np.unique(level).tolist():
        m = level == j
        tab = table[j]
        out[m] = np.maximum(tab[lo[m]], tab[hi[m] - (1 << j)])
    return out


def _bin_max(values: IntArray, b: IntArray, nbins: int) -> IntArray:
    """Max of values per bin (b sorted); 0 for empty bins."""
    out = np.zeros(nbins, dtype=np.int64)
    if len(b):
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        out[b[starts]] = np.maximum.reduceat(values, starts)
    return out


# Requests per slice of `prefill_misses_needed` (its range-max tables take n·log2(n) floats).
_MISSES_SLICE = 1 << 17


def prefill_misses_needed(
    t: FloatArray,
    work_s: FloatArray,
    deadline_s: FloatArray,
    *,
    bin_s: float,
    nbins: int,
    widths_s: Sequence[float] = BURST_WIDTHS_S,
) -> IntArray:
    """need[m, n]: a lower bound on how many requests arriving in bin m miss their first-token
    deadline when the bin has n prefill replicas (n = 0 .. the most any window asks for).

    Fluid argument: the requests of a window of arrivals [s, e] cannot start before s and, if
    they all meet their deadlines, are done by d = their latest deadline, so their work W (in
    replica-seconds) fits in n·(d - s). When it does not, some must miss; dropping the k largest
    removes at most k·w_max, so at least ceil((W - n·(d - s)) / w_max) miss. Windows are
    anchored at every arrival with each width, clipped to the arrival's bin, and kept only when
    d falls inside that bin too (so each constraint is about that bin's fleet alone, and misses
    counted in different bins are different requests).

    Every window lies inside one bin, so the trace is worked through in slices of whole bins
    (`_MISSES_SLICE` requests or so each): the same table, in memory bounded by the slice."""
    b = np.minimum((t // bin_s).astype(np.int64), nbins - 1)
    parts: list[tuple[int, IntArray]] = []
    lo, n = 0, len(t)
    while lo < n:
        # Cut after the bin of the slice's last request, so no bin spans two slices.
        hi = min(lo + _MISSES_SLICE, n)
        hi = int(np.searchsorted(b, b[hi - 1], side="right"))
        b0 = int(b[lo])
        nb = int(b[hi - 1]) - b0 + 1
        table = _misses_needed(
            t[lo:hi], work_s[lo:hi], deadline_s[lo:hi], b[lo:hi],
            b0=b0, nb=nb, bin_s=bin_s, widths_s=widths_s,
        )  # fmt: skip
        parts.append((b0, table))
        lo = hi
    return _assemble_need(parts, nbins)


def _assemble_need(parts: Sequence[tuple[int, IntArray]], nbins: int) -> IntArray:
    """The whole table from slices (first bin, rows): a slice's table stops at the level where
    none of its windows needs a miss, so it is zeros beyond."""
    width = max((part.shape[1] for _, part in parts), default=1)
    need = np.zeros((nbins, width), dtype=np.int64)
    for b0, part in parts:
        need[b0 : b0 + part.shape[0], : part.shape[1]] = part
    return need


def _misses_needed(
    t: FloatArray,
    work_s: FloatArray,
    deadline_s: FloatArray,
    b: IntArray,
    *,
    b0: int,
    nb: int,
    bin_s: float,
    widths_s: Sequence[float],
) -> IntArray:
    """`prefill_misses_needed` on one slice of whole bins, b0 .. b0 + nb - 1 (`b`: each request's
    bin); rows are the slice's bins."""
    n = len(t)
    if n == 0:
        return np.zeros((nb, 1), dtype=np.int64)
    nbins = nb
    local = b - b0
    cum = np.concatenate(([0.0], np.cumsum(work_s)))
    d_table = _range_max_table(deadline_s)
    w_table = _range_max_table(work_s)
    bin_end_idx = np.searchsorted(local, np.arange(nbins), side="right")[local]
    bin_end_t = (b + 1) * bin_s
    lo = np.arange(n, dtype=np.int64)
    rows: list[tuple[IntArray, FloatArray, FloatArray, FloatArray]] = []
    top = 0.0
    for w in widths_s:
        hi = np.minimum(np.searchsorted(t, t + w, side="right"), bin_end_idx)
        d = _range_max(d_table, lo, hi)
        keep = d <= bin_end_t
        span = np.maximum(d - t, 1e-12)
        work = cum[hi] - cum[lo]
        keep &= work > 0
        if not keep.any():
            continue
        rows.append((local[keep], work[keep], span[keep], _range_max(w_table, lo[keep], hi[keep])))
        top = max(top, float(np.max(work[keep] / span[keep])))
    levels = math.ceil(top - 1e-9) if top > 0 else 0
    need = np.zeros((nbins, levels + 1), dtype=np.int64)
    for bw, work, span, wmax in rows:
        for lev in range(levels + 1):
            excess = work - lev * span
            k = np.ceil(np.maximum(excess, 0.0) / wmax - 1e-9).astype(np.int64)
            need[:, lev] = np.maximum(need[:, lev], _bin_max(k, bw, nbins))
    return need


def _fewest_with_budget(need: IntArray, floor: IntArray, budget: int) -> IntArray:
    """Replicas per bin, each >= floor, minimising their sum while the misses need[m, n] add up
    to at most `budget` (a small knapsack over bins: dynamic programming on the misses used).

    Only bins whose floor still leaves misses take part in the programme: a bin with
    need[m, floor] = 0 has one sensible choice (its floor; more replicas only cost more), and
    the budget beyond the misses all floors together leave is never needed (every bin at its
    floor is then the unique cheapest allocation). Both cuts give the same allocation as the
    full programme; without them its table is bins x budget (a 14-day trace: 20,160 minutes
    x 16,000 misses, 2.6 GB)."""
    nbins, width = need.shape
    out = np.asarray(floor, dtype=np.int64).copy()
    if nbins == 0:
        return out
    at_floor = np.where(out < width, need[np.arange(nbins), np.minimum(out, width - 1)], 0)
    active = np.flatnonzero(at_floor > 0)
    budget = min(budget, int(at_floor[active].sum()))
    if active.size == 0 or budget == int(at_floor[active].sum()):
        return out
    top = max(width - 1, int(out.max()))
    inf = np.iinfo(np.int64).max // 4
    best = np.zeros(budget + 1, dtype=np.int64)  # best[k]: min replicas so far, <= k misses
    pick = np.zeros((len(active), budget + 1), dtype=np.min_scalar_type(top))
    for row, m in enumerate(active.tolist()):
        new = np.full(budget + 1, inf, dtype=np.int64)
        arg = np.zeros(budget + 1, dtype=np.int64)
        for lev in range(int(out[m]), top + 1):
            k = int(need[m, lev]) if lev < width else 0
            if k > budget:
                continue
            cand = np.full(budget + 1, inf, dtype=np.int64)
            cand[k:] = best[: budget + 1 - k] + lev
            better = cand < new
            new[better] = cand[better]
            arg[better] = lev
            if k == 0:
                break  # more replicas only cost more
        best = new
        pick[row] = arg
    k = budget
    for row in range(len(active) - 1, -1, -1):
        m = int(active[row])
        lev = int(pick[row, k])
        out[m] = lev
        k -= int(need[m, lev]) if lev < width else 0
    return out


def oracle(
    arrival_s: FloatArray,
    prompt_tokens: IntArray,
    output_tokens: IntArray,
    profile: Profile,
    *,
    disaggregated: bool,
    slo: SLO = SLO(),
    bin_s: float = 60.0,
    min_replicas: int = 1,
    attainment: float = 0.99,
) -> Oracle:
    """A fluid lower bound on GPU-hours: per bin (a minute), the fewest replicas per role whose
    modelled capacity covers that bin's demand at the SLO for all but (1 - attainment) of the
    requests, with no cold start and perfect foresight (replicas appear and vanish at bin edges,
    at least `min_replicas` each). Per bin it is the larger of two bounds.

    **Throughput** (`throughput_replicas`): the prompt and output tokens of the requests arriving
    in the bin, per second, against the capacity per replica:

    * Prefill (compute-bound): a replica running back-to-back full steps of B = max_num_batched_
      tokens spends alpha_p/B + beta_p + gamma_p·n̄ per token, where n̄ = sum(p²)/sum(p) is the
      token-weighted prompt length of the bin (a prompt's chunks attend to their whole prefix, so
      its attention costs gamma_p·p² however it is chunked). Queueing delay is ignored
      (utilisation may reach 1); so are the scheduler's per-sequence costs, as a bound should.
    * Decode (memory-bound, ITL-limited): the largest batch whose step time stays within the
      ITL SLO: step(B) = max(alpha_d, alpha_p + beta_p·B) + (beta_d + s + gamma_d·L̄)·B (s = the
      scheduler's per-sequence cost) <= itl_mean_s, capped by max_num_seqs and
      by KV (B*·L̄ <= capacity), with L̄ the output-weighted mean context (prompt + output/2);
      throughput B*/step(B*) tokens/s, the most any replica can give within the SLO.
    * Aggregated replicas share their time: n = ceil(prefill demand / prefill capacity + decode
      demand / decode capacity) (the mixed step's shared fixed cost is ignored, as a bound
      should).

    **Prefill bursts** (the TTFT half of the SLO, which a minute's mean cannot see): a request
    arriving at a with prompt p must have its first token by a + max(ttft_floor_s,
    ttft_slowdown x idle prefill(p)), so its prefill must end by that minus its KV transfer
    (disaggregated). Its work, in replica-seconds, is at least p·(alpha/B + beta_p) + gamma_p·p²
    (full steps share the fixed cost; the chunks' attention terms sum to p²). For windows of
    arrivals [s, e] (anchored at every arrival, widths `BURST_WIDTHS_S`, within one bin, latest
    deadline d in the bin) the work that meets its deadlines fits in n·(d - s), which gives how
    many requests must miss with n replicas (`prefill_misses_needed`). Decode has no such term:
    ITL is a per-step property, and the throughput bound already runs every replica at the
    largest batch whose step meets the ITL SLO; a decode burst only raises the batch for a few
    steps of requests that average their ITL over all their steps.

    **Attainment**: a fleet reaching `attainment` over the trace may miss M = floor((1 -
    attainment) x requests) requests, placed wherever they save most. The bound gives the misses
    to the bins by a small dynamic programme (fewest replica-bins such that the misses each bin
    needs add up to <= M), so it never charges for a burst that a 99 % fleet could sacrifice,
    and it does not depend on a handful of requests. With attainment = 1 no request may miss
    (`all_requests_gpu_hours`).

    Worked example (constants of docs/simulator.md at the time of writing: 8B, B=8192,
    n̄=1500): alpha_p/B + beta_p + gamma_p·1500 per token; the decode bound takes the largest
    batch within the ITL SLO and the KV capacity (tests/sim/test_evaluate.py recomputes it).
    """
    return oracle_of_stream(
        [(arrival_s, prompt_tokens, output_tokens)],
        profile,
        disaggregated=disaggregated,
        slo=slo,
        bin_s=bin_s,
        min_replicas=min_replicas,
        attainment=attainment,
    )


# Requests per slice of the oracle's stream (a slice ends at a bin edge).
_ORACLE_SLICE = 1 << 17


def _whole_bins(chunks: Iterable[Sequence[Any]], bin_s: float) -> Iterator[tuple[FloatArray, ...]]:
    """(t, prompt, output) slices of a time-ordered stream, each ending at a bin edge: every
    per-bin figure is then computed from one slice, in the order a single pass would."""
    carry: list[tuple[FloatArray, FloatArray, FloatArray]] = []
    held = 0
    for chunk in chunks:
        t = np.asarray(chunk[0], dtype=np.float64)
        if not len(t):
            continue
        carry.append((t, np.asarray(chunk[1]), np.asarray(chunk[2])))
        held += len(t)
        if held < _ORACLE_SLICE:
            continue
        t, p, o = (np.concatenate(col) for col in zip(*carry, strict=True))
        b = (t // bin_s).astype(np.int64)
        # Slices of about _ORACLE_SLICE requests ending at bin edges; the last bin is kept (it
        # may continue in the next chunk).
        lo = 0
        last = int(np.searchsorted(b, b[-1], side="left"))
        while last - lo >= _ORACLE_SLICE:
            hi = int(np.searchsorted(b, b[lo + _ORACLE_SLICE - 1], side="right"))
            hi = min(hi, last)
            yield t[lo:hi], p[lo:hi], o[lo:hi]
            lo = hi
        carry = [(t[lo:], p[lo:], o[lo:])]
        held = len(t) - lo
    if held:
        yield tuple(np.concatenate(col) for col in zip(*carry, strict=True))


def oracle_of_stream(
    chunks: Iterable[Sequence[Any]],
    profile: Profile,
    *,
    disaggregated: bool,
    slo: SLO = SLO(),
    bin_s: float = 60.0,
    min_replicas: int = 1,
    attainment: float = 0.99,
) -> Oracle:
    """`oracle` over a request stream: chunks (arrival_s, prompt_tokens, output_tokens, ...) in
    time order (a `traces.TraceStream`, or one chunk of whole arrays), in memory bounded by a
    slice of the stream and the bins. Per-bin sums and burst tables come from whole bins, so
    the figures are those of `oracle` on the joined arrays, bit for bit."""
    if not 0.0 < attainment <= 1.0:
        msg = f"attainment must be in (0, 1], got {attainment}"
        raise ValueError(msg)
    m = float(profile.max_num_batched_tokens)
    ar, ar0 = profile.allreduce_ms_per_token, float(profile.allreduce_latency_tokens)
    # All-reduce bandwidth per prompt token in a full-budget prefill step (0 at TP1).
    ar_tok = ar * max(m - ar0, 0.0) / m
    if disaggregated:
        alpha_ms = profile.prefill_alpha_ms
    else:
        # A mixed step's fixed cost is alpha_d: take the smaller of the two.
        alpha_ms = min(profile.prefill_alpha_ms, profile.decode_alpha_ms)
    # Per-bin sums: prompt tokens, their squares, output tokens, output x mean context.
    sums = np.zeros((4, 0))
    parts: list[tuple[int, IntArray]] = []
    n_total = 0
    hopeless_total = 0
    t_max = 0.0
    for t, prompt_tokens, output_tokens in _whole_bins(chunks, bin_s):
        p = np.maximum(np.asarray(prompt_tokens, dtype=np.float64), 1.0)
        o = np.maximum(np.asarray(output_tokens, dtype=np.float64), 1.0)
        b = (t // bin_s).astype(np.int64)
        b0 = int(b[0])
        nb = int(b[-1]) - b0 + 1
        if sums.shape[1] < b0 + nb:
            sums = np.pad(sums, ((0, 0), (0, max(b0 + nb, 2 * sums.shape[1]) - sums.shape[1])))
        local = b - b0
        for row, w in enumerate((p, p * p, o, o * (p + o / 2.0))):
            sums[row, b0 : b0 + nb] += np.bincount(local, weights=w, minlength=nb)
        # Prefill bursts against the TTFT SLO.
        work = (
            p * (alpha_ms / m + profile.prefill_beta_ms_per_token + ar_tok)
            + profile.prefill_gamma_ms_per_token2 * p * p
        ) / 1000.0
        prompts = np.maximum(np.asarray(prompt_tokens, dtype=np.int64), 1)
        limit = np.maximum(slo.ttft_floor_s, slo.ttft_slowdown * idle_prefill_s(profile, prompts))
        deadline = t + limit
        if disaggregated:
            deadline -= (
                profile.kv_bytes_per_token * p / profile.kv_transfer_bytes_per_s
                + profile.kv_transfer_setup_s
            )
        # A request whose deadline is before its arrival misses with any fleet: it spends budget.
        hopeless = deadline <= t
        work[hopeless] = 0.0
        deadline[hopeless] = t[hopeless]
        hopeless_total += int(hopeless.sum())
        table = _misses_needed(
            t, work, deadline, b, b0=b0, nb=nb, bin_s=bin_s, widths_s=BURST_WIDTHS_S
        )
        parts.append((b0, table))
        n_total += len(t)
        t_max = float(t[-1])
    nbins = max(1, math.ceil((t_max + 1e-9) / bin_s)) if n_total else 1
    sums = np.pad(sums, ((0, 0), (0, max(0, nbins - sums.shape[1]))))[:, :nbins]
    p_sum, p_sq, o_sum, ctx = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        nbar = np.where(p_sum > 0, p_sq / p_sum, 0.0)
        lbar = np.where(o_sum > 0, ctx / o_sum, 0.0)
    per_tok_ms = (
        profile.prefill_alpha_ms / m
        + profile.prefill_beta_ms_per_token
        + ar_tok
        + profile.prefill_gamma_ms_per_token2 * nbar
    )
    cap_p = 1000.0 / per_tok_ms
    itl_ms = slo.itl_mean_s * 1000.0
    room = max(itl_ms - profile.decode_alpha_ms, 0.0)
    # Above the roofline knee a step's linear part is alpha_p + beta_p·B (Profile.linear_ms).
    room_p = max(itl_ms - profile.prefill_alpha_ms, 0.0)
    per_seq = (
        profile.decode_beta_ms_per_seq
        + profile.sched_ms_per_seq
        + profile.decode_gamma_ms_per_ctx_token * lbar
    )
    b_p = profile.prefill_beta_ms_per_token
    # Each branch of the step's linear part, with the all-reduce term (zero up to ar0 tokens)
    # as a second constraint: the smallest bound is the exact largest batch within the ITL.
    bstar = np.floor(
        np.minimum(
            np.minimum(room / per_seq, room_p / (per_seq + b_p)),
            np.minimum(
                (room + ar * ar0) / (per_seq + ar), (room_p + ar * ar0) / (per_seq + b_p + ar)
            ),
        )
    )
    bstar = np.minimum(bstar, profile.max_num_seqs)
    with np.errstate(divide="ignore"):
        bstar = np.minimum(bstar, np.floor(profile.kv_capacity_tokens / np.maximum(lbar, 1.0)))
    bstar = np.maximum(bstar, 1.0)
    step_ms = (
        np.maximum(
            profile.decode_alpha_ms,
            profile.prefill_alpha_ms + profile.prefill_beta_ms_per_token * bstar,
        )
        + ar * np.maximum(bstar - ar0, 0.0)
        + per_seq * bstar
    )
    cap_d = bstar / step_ms * 1000.0
    dem_p = p_sum / bin_s
    dem_d = o_sum / bin_s
    thru: dict[Role, IntArray]
    if disaggregated:
        n_p = np.maximum(np.ceil(dem_p / cap_p - 1e-9), min_replicas).astype(np.int64)
        n_d = np.maximum(np.ceil(dem_d / cap_d - 1e-9), min_replicas).astype(np.int64)
        thru = {Role.PREFILL: n_p, Role.DECODE: n_d}
        burst_role = Role.PREFILL
    else:
        n_a = np.maximum(np.ceil(dem_p / cap_p + dem_d / cap_d - 1e-9), min_replicas)
        thru = {Role.AGGREGATED: n_a.astype(np.int64)}
        burst_role = Role.AGGREGATED
    budget = math.floor((1.0 - attainment) * n_total + 1e-9)
    budget = max(budget - hopeless_total, 0)
    need = _assemble_need(parts, nbins)
    floor = thru[burst_role]
    replicas = dict(thru)
    replicas[burst_role] = _fewest_with_budget(need, floor, budget)
    strict = _fewest_with_budget(need, floor, 0)
    per_bin = profile.gpus_per_replica * bin_s / 3600.0

    def hours(reps: dict[Role, IntArray]) -> float:
        return sum(int(v.sum()) for v in reps.values()) * per_bin

    strict_h = hours({**thru, burst_role: strict})
    return Oracle(
        bin_start_s=np.arange(nbins, dtype=np.float64) * bin_s,
        replicas=replicas,
        gpu_hours=hours(replicas),
        prefill_capacity_tok_s=float(np.mean(cap_p)),
        decode_capacity_tok_s=cap_d,
        throughput_replicas=thru,
        throughput_gpu_hours=hours(thru),
        all_requests_gpu_hours=strict_h,
        attainment=attainment,
        miss_budget=budget,
    )
