"""The queueing and estimation maths behind the `slo` policy kind (`policy/slo.py`).

Pure functions and small stateful estimators with no configuration or profile of their own: the
Erlang-C waiting probability, the lognormal quantile of a replica's KV footprint, the prompt
spread estimated from the rates alone (`PromptSpread`) and a role's rate history with its burst
headroom and trend line (`RateSeries`). The policy feeds them samples and reads numbers back;
the reasons it reports are composed there.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from statistics import NormalDist

# The level a burst multiplier is taken against: the mean window rate over the last 10 minutes,
# long enough that one 10-60 s burst moves it little, short enough to follow a day's swing.
LEVEL_S = 600.0
# Windows needed before the estimated prompt spread replaces the prior (8 minutes at 60 s).
MIN_SPREAD_WINDOWS = 8
# Quadrature for the prompt-length average: 64 equal-probability points of a standard normal.
QUAD = 64
_QUAD_Z = tuple(NormalDist().inv_cdf((i + 0.5) / QUAD) for i in range(QUAD))


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with c servers and offered load a (< c) Erlangs."""
    if a <= 0:
        return 0.0
    # Erlang B by the stable recursion, then C from B.
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1.0 - rho + rho * b)


def lognormal_points(mean: float, cv: float, *, top: float, n: int = QUAD) -> list[float]:
    """`n` (default `QUAD`) equal-probability points of a lognormal with the given mean (at
    least 1) and CV, each capped at top: the prompt mix the prefill and KV models average over."""
    sigma = math.sqrt(math.log1p(cv * cv))
    mu = math.log(max(mean, 1.0)) - sigma * sigma / 2.0
    zs = _QUAD_Z if n == QUAD else [NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)]
    return [min(math.exp(mu + sigma * z), top) for z in zs]


def lognormal_quantile(mean: float, second: float, z: float) -> float:
    """Quantile (at standard-normal z) of a positive sum of the given mean and variance, taken
    as the lognormal with that mean and variance (Fenton-Wilkinson): a heavy right tail, as a
    few long prompts give a replica's KV cache, where a normal approximation would be thin."""
    if mean <= 0:
        return 0.0
    s2 = math.log1p(second / (mean * mean))
    return math.exp(math.log(mean) - s2 / 2.0 + z * math.sqrt(s2))


def rate_bins(
    pts: Sequence[tuple[float, float, float]], tick_s: float, bins: int = 24
) -> list[tuple[float, float]]:
    """The short-window rates (rate, weight, age) net of their Poisson noise, as at most `bins`
    (rate, weight) groups of equal weight.

    A short-window rate is a Poisson count over about a tick recovered from two window rates
    (variance about 2 m / tick at mean m). Its spread over a smooth load is that noise alone,
    and a convex miss curve averaged over it would count misses no load causes, so each rate is
    drawn towards the weighted mean by the share of its spread that is not noise (the spread's
    variance less the noise's, over the spread's). Grouping keeps the expected miss to a few
    model evaluations a tick."""
    total = sum(w for _, w, _ in pts)
    if total <= 0:
        return []
    m = sum(v * w for v, w, _ in pts) / total
    var = sum(w * (v - m) ** 2 for v, w, _ in pts) / total
    keep = math.sqrt(max(var - 2.0 * m / tick_s, 0.0) / var) if var > 0 else 0.0
    net = sorted((max(m + (v - m) * keep, 0.0), w) for v, w, _ in pts)
    out: list[tuple[float, float]] = []
    acc_v = acc_w = 0.0
    step = total / bins
    for v, w in net:
        acc_v += v * w
        acc_w += w
        if acc_w >= step * (1.0 - 1e-9):
            out.append((acc_v / acc_w, acc_w))
            acc_v = acc_w = 0.0
    if acc_w > 0:
        out.append((acc_v / acc_w, acc_w))
    return out


def value_near(points: Iterable[tuple[float, float]], t: float, within: float) -> float | None:
    """The value of the (time, value) point nearest to t, the earliest of equals, if one lies
    within `within` seconds of it; None otherwise."""
    best: tuple[float, float] | None = None
    for ts, v in points:
        d = abs(ts - t)
        if d <= within and (best is None or d < best[0]):
            best = (d, v)
    return None if best is None else best[1]


def _excess_point(pts: list[tuple[float, float]], budget: float, *, floor: float) -> float:
    """The smallest x >= floor with sum over (value, weight) of max(value - x, 0) x weight
    <= budget: the level above which the weighted excess stays within the budget."""
    pts = sorted(pts, reverse=True)
    a = w_sum = 0.0
    for k, (v, w) in enumerate(pts):
        a += v * w
        w_sum += w
        nxt = pts[k + 1][0] if k + 1 < len(pts) else floor
        if a - max(nxt, floor) * w_sum > budget:
            # The excess passes the budget between v and the next value: a - x w_sum = budget.
            return max((a - budget) / w_sum, nxt, floor)
    return floor


class PromptSpread:
    """The spread of prompt lengths, estimated from the rates alone.

    A rate window of W seconds holding N = lambda W requests has a mean prompt p_i whose
    variance across windows is sigma^2 / N for independent prompts of variance sigma^2, so
    neighbouring windows differ by p_i - p_(i+1) of variance sigma^2 (1/N_i + 1/N_(i+1)), and
    sigma^2 is the mean of (p_i - p_(i+1))^2 / (1/N_i + 1/N_(i+1)) over k non-overlapping
    windows; cv = sigma / p. A mix drifting over many windows cancels out of neighbours."""

    def __init__(self, *, window_s: float, memory_s: float) -> None:
        self.window_s = window_s
        self.memory_s = memory_s
        self.obs: deque[tuple[float, float, float]] = deque()  # (t, N, mean prompt)

    def add(self, t: float, lam: float, p: float) -> None:
        if self.obs and t - self.obs[-1][0] < self.window_s - 1e-6:
            return  # overlapping window: not independent of the last one
        self.obs.append((t, lam * self.window_s, p))
        while self.obs and self.obs[0][0] < t - self.memory_s:
            self.obs.popleft()

    def cv(self) -> tuple[float | None, int]:
        k = len(self.obs)
        tot = sum(n for _, n, _ in self.obs)
        if k < MIN_SPREAD_WINDOWS or tot <= 0:
            return None, k
        mean = sum(n * p for _, n, p in self.obs) / tot
        # Successive differences, not deviations from the overall mean: p_i - p_(i+1) has
        # variance sigma^2 (1/N_i + 1/N_(i+1)) for independent prompts, and a mix that drifts
        # over tens of minutes (sessions, the hour's shape) cancels out of neighbours instead of
        # inflating sigma, as it did about 2x on the Azure conversation hour.
        obs = list(self.obs)
        terms = [
            (a[2] - b[2]) ** 2 / (1.0 / a[1] + 1.0 / b[1])
            for a, b in itertools.pairwise(obs)
            if a[1] > 0 and b[1] > 0
        ]
        if not terms:
            return None, k
        var = sum(terms) / len(terms)
        return (math.sqrt(var) / mean if mean > 0 else None), k


class RateSeries:
    """A role's rate over time: per-minute means (for the trend) and recent short-window rates
    with a decaying maximum (for the burst headroom).

    The metric source reports rates over a window of W seconds (`rate_window_s`), once a tick
    (tau seconds apart). Two successive samples differ by what entered the window in the last
    tau seconds minus what left it, so the arrivals of the last tau seconds are about
    W (r_t - r_(t - tau)) + tau r_(t - W) (what left is taken at the older window's mean rate):
    a burst shorter than the window shows at tick resolution instead of diluted over W. With
    `short` off (decode: generation spreads a burst over each request's decode time) the
    window rates themselves are remembered.

    The difference is only a count of arrivals while the same replicas report throughout the
    window: a replica that just became ready reports a rate over its few seconds of samples
    next to the others' 60-second means, so the sum jumps when it joins (and drops when one
    leaves) with no change in arrivals, and W / tau amplifies the jump 4x into a phantom burst
    that the headroom then holds for half an hour. Within a window of a change in the number
    of reporting replicas the window rate itself is taken."""

    def __init__(
        self,
        *,
        memory_s: float,
        halflife_s: float,
        trend_s: float,
        window_s: float,
        short: bool,
        shape_memory_s: float = 0.0,
        shape_halflife_s: float = 3600.0,
    ) -> None:
        self.memory_s = memory_s
        self.halflife_s = halflife_s
        self.trend_s = trend_s
        self.window_s = window_s
        self.short = short
        self.shape_memory_s = shape_memory_s
        self.shape_halflife_s = shape_halflife_s
        self.samples: deque[tuple[float, float, float]] = deque()  # (t, window rate, short)
        # The level the burst shape is relative to: window rates of the last LEVEL_S seconds.
        self.level_win: deque[tuple[float, float]] = deque()
        # (t, short-window rate, level, its span): the burst shape, kept for shape_memory_s.
        self.shape: deque[tuple[float, float, float, float]] = deque()
        # (t, reporting replicas) of every sample within the last window.
        self.reporting: deque[tuple[float, int]] = deque()
        self.minutes: deque[tuple[float, float, int]] = deque()  # (minute start, sum, n)

    def _at(self, t: float) -> float | None:
        """The window rate sampled nearest to t (within half a window), if any."""
        return value_near(((ts, r) for ts, r, _ in self.samples), t, self.window_s / 2)

    def add(self, t: float, v: float, replicas: int = 0) -> float:
        """Record the window rate v at t, summed over `replicas` reporting replicas; returns
        the short-window rate estimate."""
        short = v
        self.reporting.append((t, replicas))
        while self.reporting and self.reporting[0][0] < t - self.window_s:
            self.reporting.popleft()
        steady = all(n == replicas for _, n in self.reporting)
        if self.short and self.samples and steady:
            t_prev, r_prev, _ = self.samples[-1]
            tau = t - t_prev
            old = self._at(t - self.window_s)
            if 0 < tau < self.window_s and old is not None:
                short = max(0.0, self.window_s / tau * (v - r_prev) + old)
        keep = max(self.memory_s, self.trend_s, self.window_s * 2)
        self.samples.append((t, v, short))
        while self.samples and self.samples[0][0] < t - keep:
            self.samples.popleft()
        self.level_win.append((t, v))
        while self.level_win and self.level_win[0][0] <= t - LEVEL_S:
            self.level_win.popleft()
        if self.short and self.shape_memory_s > 0 and len(self.samples) > 1:
            level = self.level()
            span = t - self.samples[-2][0]
            if level > 0 and span > 0:
                self.shape.append((t, short, level, span))
            while self.shape and self.shape[0][0] < t - self.shape_memory_s:
                self.shape.popleft()
        m = math.floor(t / 60.0) * 60.0
        if self.minutes and self.minutes[-1][0] == m:
            _, s, n = self.minutes[-1]
            self.minutes[-1] = (m, s + v, n + 1)
        else:
            self.minutes.append((m, v, 1))
        while self.minutes and self.minutes[0][0] < t - self.trend_s - 60.0:
            self.minutes.popleft()
        return short

    def short_rates(self, t: float) -> list[tuple[float, float, float]]:
        """The remembered short-window rates as (rate, weight, age): each sample weighs its
        requests (rate x tick), halved every half-life, so a one-off burst's weight fades."""
        pts = []
        prev = None
        for ts, _, v in self.samples:
            if ts >= t - self.memory_s and prev is not None and v > 0:
                pts.append((v, v * (ts - prev) * 0.5 ** ((t - ts) / self.halflife_s), t - ts))
            prev = ts
        return pts

    def headroom(self, t: float, level: float) -> tuple[float, float]:
        """(request-weighted `level` quantile of the short-window rates over the memory, the age
        of the sample it came from): the rate that all but 1 - level of the recent requests
        arrived at or below, so bursts that carry more than that share of requests are sized
        for, and a one-off burst's weight fades."""
        pts = self.short_rates(t)
        if not pts:
            return 0.0, 0.0
        total = sum(w for _, w, _ in pts)
        pts.sort(key=lambda x: x[0], reverse=True)
        above = 0.0
        for v, w, age in pts:
            above += w
            if above > (1.0 - level) * total:
                return v, age
        return pts[-1][0], pts[-1][2]

    def level(self) -> float:
        """The mean window rate of the last `LEVEL_S` seconds: what a burst is relative to. A
        burst lifts it for those ten minutes (the shape's rate is capped at the largest rate
        seen, so this cannot ask for more than a burst was); a median, which a burst does not
        lift, sits far below the mean of bursty traffic, so bursts seen at a quiet moment read
        as multipliers of x30 and more (the Azure coding hour)."""
        n = len(self.level_win)
        if not n:
            return 0.0
        return max(sum(v for _, v in self.level_win) / n, 0.0)

    def shape_headroom(self, t: float, attainment: float) -> tuple[float, float, float]:
        """(the burst rate the shape asks to hold now, the age of the largest remembered burst,
        the current level `self.level()`).

        Each remembered sample has a rate r, its short-window rate less that estimate's
        Poisson noise at the `attainment` quantile (z sqrt(2 L / tick) at the sample's level L: the
        variance of a rate recovered from two window rates; without it a quiet night's
        15-second counts would read as a burst shape), and a multiplier r / L. The multiplier
        held is the smallest x whose excess, sum((m_i - x) span_i) over the samples above it
        (`_excess_point`), is within 1 - attainment of all remembered requests counted at their own
        level (short_i / L_i x span_i): a fleet sized for x lets about that share arrive beyond
        it. Weights halve every `shape_halflife_s`, so a burst that recurs hourly weighs half
        at its next occurrence, and a one-off burst's share is diluted by the hours of requests
        around it.

        The rate held is min(x times the current level, the largest r remembered). The
        multiplier, not the rate, is what is remembered: a pattern that recurs at the load's
        own scale is held across a day's swing at the size the current level gives it (a night
        fleet is not held at the afternoon's bursts, a morning fleet not at the night's). The
        cap keeps a burst seen at a quiet moment (a batch job at 3 a.m., x20 of its level) from
        being scaled up with the day's level to rates never seen."""
        z = NormalDist().inv_cdf(attainment)
        mults: list[tuple[float, float]] = []
        total = 0.0
        top = 0.0
        largest = (0.0, 0.0)  # (multiplier, age) of the largest burst remembered
        for ts, short, lvl, span in self.shape:
            decay = 0.5 ** ((t - ts) / self.shape_halflife_s)
            total += short / lvl * span * decay
            r = short - z * math.sqrt(2.0 * lvl / span)
            if r > lvl:
                mults.append((r / lvl, span * decay))
                top = max(top, r)
                largest = max(largest, (r / lvl, t - ts))
        cur = self.level()
        if not mults or cur <= 0:
            return 0.0, 0.0, cur
        x = _excess_point(mults, (1.0 - attainment) * total, floor=1.0)
        return min(x * cur, top), largest[1], cur

    def trend(self, t: float, horizon_s: float) -> float | None:
        """The rise of the least-squares line through the closed minute means of the window
        from t to t + horizon; None when it does not rise or without half a window of
        minutes."""
        if self.trend_s <= 0:
            return None
        cur = math.floor(t / 60.0) * 60.0
        pts = [(m + 30.0, s / n) for m, s, n in self.minutes if m < cur and m >= t - self.trend_s]
        if len(pts) < max(3, int(self.trend_s / 120.0)):
            return None
        n = len(pts)
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        if sxx <= 0:
            return None
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
        # Only the rise from now to the horizon: the line's own value there carries the
        # window's mean level, which after a hump (a busy quarter of an hour, then a fall)
        # stays above the current rate for half the window while the load is already falling
        # (on the Azure conversation hour at 2.5x it held 13.5 req/s against 1.6 now).
        return slope * horizon_s if slope > 0 else None
