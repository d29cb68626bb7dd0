"""The prefill queue as the engine runs it: steps of up to the token budget, first come first
served, each prompt done at the end of the step that holds its last chunk.

An M/G/c queue serves each request alone, and under-counts the engine's TTFT misses 2-10x below
saturation (`benchmarks/slo_queue_model.py`): a prompt's first token comes at the end of its
step, after the prompts packed behind it in the same step, and the wait is not exponential.
This model keeps both, analytically:

- **One replica's backlog at step boundaries** is a Markov chain on prompt work (tokens plus
  their attention, `work_tokens`, in units of 1/16 of the budget): a step serves
  min(backlog, budget) and lasts the profile's step time for
  it; during it prompts arrive as a compound Poisson process over the prompt mix. An empty
  engine waits for the next arrival, whose prompt then starts a step. Its stationary law is one
  dense linear solve.
- **A request's TTFT** follows from what it finds on arrival (Poisson arrivals see time
  averages): the rest of the step in progress, the units queued ahead (left over at the step's
  start plus those arrived since), then full steps until its own last unit is served, the last
  of them lengthened by the prompts that arrived behind it and fit in the budget.
- **Several replicas behind least-loaded routing**: a request goes to the replica with the
  fewest outstanding prompt tokens, so it misses only if it would miss on every one of them.
  With each replica taken as an independent one-replica queue at its share of the rate, the
  miss share of a prompt at c replicas is its one-replica miss to the power c. Replicas behind
  one router are loaded together, not independently, so this under-counts where single huge
  prompts block replicas for seconds (long-prompt mixes at 4+ replicas; measured in the
  benchmark), which is why the slo kind takes the larger of this and its M/G/c tail.

What it leaves out: the decode tokens that share an aggregated replica's steps (the prefill role
of a disaggregated pool has none), preemption, and the front end's queue.

The chain takes tens of milliseconds, so `StepCurves` tabulates each prompt's one-replica miss
over utilisation once per prompt mix and interpolates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from autoscaler.profile import Profile

# States of the backlog chain at most: the dense solve is cubic (300 states: about 3 ms); the
# answers at 300 and 600 agree within 1 % of the miss share on the long-prompt mix.
_MAX_STATES = 300
# A step's budget in units (512 tokens each at the default 8,192 budget). Each prompt's units are
# split between the two whole numbers around it, keeping the mean, and the answers at 16, 32
# and 64 units agree within a few per cent of the miss share
# (tests/sim/test_prefill_steps.py::test_the_answer_does_not_depend_on_the_grid).
_STEP_UNITS = 16
# Points at which the elapsed share of the step in progress is sampled (midpoint rule).
_ELAPSED_POINTS = 8
# Token utilisations (of one replica running full steps) the curves are tabulated at; the
# interpolation is log-linear in the miss share, which the curves follow closely.
UTILISATIONS = (
    0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
    0.8, 0.84, 0.88, 0.91, 0.94, 0.96, 0.98,
)  # fmt: skip
_FLOOR = 1e-9


@dataclass(frozen=True)
class PromptMix:
    """The prompt mix as the model sees it: equal-probability prompt lengths (tokens) and, for
    each, the seconds its TTFT may take in the engine (its limit less the front end and the KV
    transfer, which do not queue); and the arriving prompts' lengths, equal-probability too
    and finer in the tail (default: the same points). The rare huge prompt holds a replica for
    a second or more and everything queued behind it waits: 64 points of a coding mix end at
    7k tokens where its top 0.1 % reach 26k, and with them the model's small-prompt misses were
    half the step-level replay's."""

    tokens: tuple[float, ...]
    allowance_s: tuple[float, ...]
    arrivals: tuple[float, ...] = ()


def work_tokens(profile: Profile, tokens: np.ndarray) -> np.ndarray:
    """Each prompt's work in token-equivalents: its tokens plus its attention (gamma q^2 over
    all its chunks, Profile.idle_prefill_s) at the marginal cost of a token. A long prompt's
    later chunks attend its whole prefix and make their steps longer; counted as work, they
    hold the replica as long as they do in the engine, where a mean attention per token would
    spread them over every step and leave the prompts queued behind them too little wait."""
    per_token = profile.prefill_beta_ms_per_token + profile.allreduce_ms_per_token
    return np.asarray(tokens + profile.prefill_gamma_ms_per_token2 / per_token * tokens * tokens)


def arrival_work(profile: Profile, mix: PromptMix) -> np.ndarray:
    """The arriving prompts' work in token-equivalents."""
    return work_tokens(profile, np.asarray(mix.arrivals or mix.tokens, dtype=float))


def full_step_s(profile: Profile, mix: PromptMix) -> float:
    """One replica's step over a full budget of work."""
    return float(_step_s(profile, mix, np.asarray([float(profile.max_num_batched_tokens)]))[0])


def _step_s(profile: Profile, mix: PromptMix, work: np.ndarray) -> np.ndarray:
    """One replica's step over `work` token-equivalents of the mix (`work_tokens`): the
    profile's token-linear step cost and its per-sequence scheduling cost."""
    mean_w = float(arrival_work(profile, mix).mean())
    linear = np.maximum(
        profile.decode_alpha_ms, profile.prefill_alpha_ms + profile.prefill_beta_ms_per_token * work
    ) + profile.allreduce_ms_per_token * np.maximum(work - profile.allreduce_latency_tokens, 0.0)
    seqs = np.where(work > 0, work / mean_w + 1.0, 0.0)
    return np.asarray((linear + profile.sched_ms_per_seq * seqs) / 1000.0)


def _compound_poisson(rates: np.ndarray, jump: np.ndarray, size: int) -> np.ndarray:
    """Laws (rows) of the units brought by a Poisson number of prompts, one row per expected
    prompt count in `rates`, on 0..size-1 (the mass beyond is folded onto size-1)."""
    n_fft = 1 << max(1, math.ceil(math.log2(2 * size + len(jump))))
    phi = np.fft.rfft(jump, n_fft)
    law = np.fft.irfft(np.exp(np.outer(rates, phi - 1.0)), n_fft)[:, :size]
    law = np.clip(law, 0.0, None)
    law[:, -1] += np.clip(1.0 - law.sum(axis=1), 0.0, None)
    return law


def one_replica_miss(profile: Profile, mix: PromptMix, lam: float) -> np.ndarray:
    """Each prompt's probability of missing its allowance on one replica at a steady `lam`
    requests/s of the mix (1 at or past the replica's token capacity)."""
    q = work_tokens(profile, np.asarray(mix.tokens, dtype=float))
    allow = np.asarray(mix.allowance_s, dtype=float)
    idle = np.asarray([profile.idle_prefill_s(max(1, round(t))) for t in mix.tokens])
    hopeless = (allow < idle).astype(float)
    budget = profile.max_num_batched_tokens
    full_s = full_step_s(profile, mix)
    if lam <= 0:
        return hopeless
    arriving = arrival_work(profile, mix)
    if lam * float(arriving.mean()) >= budget / full_s:
        return np.ones(len(q))
    # The backlog worth keeping: what one replica clears within the largest allowance, plus
    # the largest prompt; beyond it every arrival misses anyway.
    horizon_s = float(max(allow.max(), 0.0)) + 2.0 * full_s
    k = _STEP_UNITS
    while k > 1 and (budget / full_s * horizon_s + q.max()) * k / budget + k > _MAX_STATES:
        k //= 2
    unit = budget / k
    size = int(min(_MAX_STATES, math.ceil((budget / full_s * horizon_s + q.max()) / unit) + k))
    # A prompt's units, split between the two whole numbers around it so the mean is kept.
    own = np.minimum(q / unit, size - 1.0)
    units = np.minimum(arriving / unit, size - 1.0)
    lo = np.floor(units)
    low = np.bincount(lo.astype(int), weights=1.0 - (units - lo), minlength=size + 1)
    high = np.bincount(
        np.minimum(lo + 1, size - 1).astype(int), weights=units - lo, minlength=size + 1
    )
    jump = np.asarray(low[:size] + high[:size], dtype=float)
    jump /= jump.sum()
    dur = _step_s(profile, mix, np.arange(k + 1, dtype=float) * unit)
    dur[0] = 0.0
    arrive = _compound_poisson(lam * dur[1:], jump, size)  # row j-1: during a j-unit step
    # The chain at step boundaries: serve min(n, k), then the arrivals of that step; an empty
    # engine jumps to the next arrival's prompt.
    p = np.zeros((size, size))
    p[0] = jump
    for n in range(1, size):
        j = min(n, k)
        left = n - j
        p[n, left:] = arrive[j - 1, : size - left]
        p[n, -1] += 1.0 - p[n, left:].sum()
    a = p.T - np.eye(size)
    a[-1] = 1.0
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    # One thread: the solve is small, and BLAS threads on a shared node cost more than they
    # give (a 300-state solve took 160 ms threaded, 2.4 ms on one thread).
    with threadpool_limits(1, user_api="blas"):
        pi = np.linalg.solve(a, rhs)
    pi = np.clip(pi, 0.0, None)
    pi /= pi.sum()
    # Time weights: an idle engine waits 1/lam for its next arrival; a step from state n lasts
    # dur[min(n, k)].
    j_of = np.minimum(np.arange(size), k)
    w_idle = pi[0] / lam
    w_busy = pi * dur[j_of]
    w_busy[0] = 0.0
    total = w_idle + w_busy.sum()
    # What an arrival finds in a step: the units left over at its start (n - j) plus those
    # arrived in the elapsed share theta of it; the rest (1 - theta) of the step to wait.
    thetas = (np.arange(_ELAPSED_POINTS) + 0.5) / _ELAPSED_POINTS
    left_law = np.zeros((k, size))
    left_law[np.arange(k - 1), 0] = w_busy[1:k]
    left_law[k - 1, : size - k] = w_busy[k:]
    # The convolution of the left-over law with the compound Poisson arrivals since, done in
    # the Fourier domain on a grid long enough not to wrap; what lies beyond `size` still
    # counts in "at least r" through the total.
    n_fft = 1 << math.ceil(math.log2(3 * size + len(jump)))
    phi = np.fft.rfft(jump, n_fft)
    since_hat = np.exp(lam * np.outer(dur[1:], thetas).ravel()[:, None] * (phi - 1.0))
    ahead_hat = np.fft.rfft(left_law, n_fft)[:, None, :] * since_hat.reshape(k, _ELAPSED_POINTS, -1)
    ahead = np.clip(np.fft.irfft(ahead_hat, n_fft)[:, :, :size], 0.0, None)
    weight = left_law.sum(axis=1)[:, None, None] / _ELAPSED_POINTS
    ahead /= _ELAPSED_POINTS
    # P(units ahead >= r), weighted by time: the row's weight less what lies below r.
    below = np.concatenate([np.zeros((k, _ELAPSED_POINTS, 1)), np.cumsum(ahead, axis=2)], axis=2)
    at_least = np.clip(weight - below, 0.0, None)
    resid = np.outer(dur[1:], 1.0 - thetas)  # (step size, theta)
    # TTFT after the step in progress, for r units ahead of each prompt: full steps until its
    # last unit is served; the last step also holds the prompts that arrived behind it while it
    # waited, up to the budget.
    r = np.arange(size, dtype=float)[:, None]
    work = r + own[None, :]
    steps = np.ceil(work / k - 1e-9)
    last = work - (steps - 1.0) * k
    waited = (steps - 1.0) * full_s + float(resid.mean())
    behind = np.clip(lam * float(arriving.mean()) / unit * waited, 0.0, k - last)
    after = (steps - 1.0) * full_s + _step_s(profile, mix, (last + behind) * unit)
    # Per (step size, theta, prompt): how many units ahead still let it meet its allowance
    # (`after` grows with r, so a sorted search finds it).
    room = allow[None, None, :] - resid[:, :, None]
    fits = np.stack(
        [np.searchsorted(after[:, i], room[:, :, i].ravel(), side="right") for i in range(len(q))],
        axis=-1,
    ).reshape(k, _ELAPSED_POINTS, len(q))
    busy_miss = np.take_along_axis(at_least, fits, axis=2).sum(axis=(0, 1))
    return np.asarray(np.minimum(1.0, (busy_miss + w_idle * hopeless) / total))


@dataclass
class StepCurves:
    """Each prompt's one-replica miss over token utilisation, tabulated once for a prompt mix:
    `miss(c, lam)` then interpolates in microseconds."""

    profile: Profile
    mix: PromptMix
    capacity_rps: float = 0.0  # requests/s one replica's full steps clear
    log_miss: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def __post_init__(self) -> None:
        mean_q = float(arrival_work(self.profile, self.mix).mean())
        self.capacity_rps = (
            self.profile.max_num_batched_tokens / full_step_s(self.profile, self.mix) / mean_q
        )
        rows = [
            one_replica_miss(self.profile, self.mix, u * self.capacity_rps) for u in UTILISATIONS
        ]
        self.log_miss = np.log(np.maximum(np.asarray(rows), _FLOOR))

    def miss(self, replicas: int, lam: float) -> float:
        """The share of requests missing their allowance at `replicas` replicas and a steady
        `lam` requests/s: each prompt's one-replica miss at the replica's share, to the power
        of the replicas (it misses only if every replica would make it)."""
        c = max(int(replicas), 1)
        u = lam / c / self.capacity_rps
        if u >= 1.0:
            return 1.0
        grid = np.asarray(UTILISATIONS)
        if u <= grid[0]:
            per = np.exp(self.log_miss[0])
        else:
            i = min(int(np.searchsorted(grid, u)), len(grid) - 1)
            u0, u1 = grid[i - 1], grid[i]
            w = min((u - u0) / (u1 - u0), 1.0)
            per = np.exp(self.log_miss[i - 1] * (1.0 - w) + self.log_miss[i] * w)
        if u > grid[-1]:
            # Past the last tabulated point the queue is near saturation: no lower than there.
            per = np.exp(self.log_miss[-1])
        per = np.where(per <= _FLOOR * 1.0001, 0.0, per)
        return float(np.mean(per**c))
