"""Built-in workload generator: realistic request streams without shipping any trace.

A user's machine has no traces, and the shared ones must not be copied into the repository, so
the generator carries a handful of numbers fitted to them (`fit_workload`, run on the shared
files; the figures are in the comments of `AZURE_CONV` and `AZURE_CODE`):

* **Arrivals**: a Cox process. Time is cut into `burst_window_s` windows; each window's rate is
  `mean_rate_rps x diurnal(t) x M`, with M ~ Gamma(mean 1, variance `burst_var`), and its count
  is Poisson. Per-second counts then have CV^2 = 1/rate + burst_var, so `burst_var` is fitted as
  (CV of per-second arrivals)^2 - 1/(mean rate). The window length is 10 s, the scale of the
  bursts the traces README reports (peaks over 10 s; up to 327 requests in 10 s for code).
* **Daily shape**: `diurnal(t) = 1 + a·cos(2π(t - peak)/1 day)` (mean 1 over a day), fitted to
  the ServeGen language-model envelope: the one-hour Azure traces cannot show a day.
* **Lengths**: independent lognormals matched to the trace's p50 and p99
  (sigma = ln(p99/p50) / z_0.99), rounded and clipped to [1, the trace's maximum].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoscaler.sim.traces import Trace

# z-score of the 99th percentile of a standard normal.
_Z99 = 2.3263478740408408
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Parameters of the generator (see the module docstring)."""

    name: str
    mean_rate_rps: float
    """Mean arrival rate over a day, requests/s."""
    burst_var: float
    """Variance of the per-window rate multiplier (0 = Poisson)."""
    burst_window_s: float
    prompt_p50: float
    prompt_p99: float
    prompt_max: int
    output_p50: float
    output_p99: float
    output_max: int
    diurnal_amplitude: float = 0.0
    """a in 1 + a·cos(...): daily peak/trough = (1+a)/(1-a)."""
    diurnal_peak_s: float = 0.0
    """Time of day of the daily peak, seconds after midnight."""

    def with_rate(self, mean_rate_rps: float) -> WorkloadSpec:
        """The same shape at another mean rate (the burstiness CV^2 - 1/rate is kept)."""
        return WorkloadSpec(
            name=self.name,
            mean_rate_rps=mean_rate_rps,
            burst_var=self.burst_var,
            burst_window_s=self.burst_window_s,
            prompt_p50=self.prompt_p50,
            prompt_p99=self.prompt_p99,
            prompt_max=self.prompt_max,
            output_p50=self.output_p50,
            output_p99=self.output_p99,
            output_max=self.output_max,
            diurnal_amplitude=self.diurnal_amplitude,
            diurnal_peak_s=self.diurnal_peak_s,
        )


# ServeGen (servegen_aggregate_rate_10min.csv, model language/m-large, 14 days): hourly means
# have a median daily peak/trough of 2.55 (m-mid 2.48, m-small 2.79) and a first harmonic
# peaking at 18.9 h of the ServeGen day. a = (2.55 - 1) / (2.55 + 1) = 0.437.
SERVEGEN_DIURNAL_AMPLITUDE = 0.437
SERVEGEN_DIURNAL_PEAK_S = 18.9 * 3600.0

# Fitted by fit_workload(load_trace("AzureLLMInferenceTrace_conv.csv")) (the shared Azure 2023
# conversation trace): 19,366 requests over 3,502 s: mean 5.530 req/s; per-second CV 0.501
# (Poisson would give 0.425), so burst_var = 0.501^2 - 1/5.530 = 0.0698; prompt p50 1,020 /
# p99 4,142 / max 14,050; output p50 129 / p99 601 / max 1,000. The lognormals match p50 and
# p99 exactly; their means (1,222 prompt, 160 output tokens) differ from the trace's (1,155, 211).
AZURE_CONV = WorkloadSpec(
    name="azure-conv",
    mean_rate_rps=5.530,
    burst_var=0.0698,
    burst_window_s=10.0,
    prompt_p50=1020.0,
    prompt_p99=4142.0,
    prompt_max=14050,
    output_p50=129.0,
    output_p99=601.0,
    output_max=1000,
    diurnal_amplitude=SERVEGEN_DIURNAL_AMPLITUDE,
    diurnal_peak_s=SERVEGEN_DIURNAL_PEAK_S,
)

# Fitted by fit_workload(load_trace("AzureLLMInferenceTrace_code.csv")) (the shared Azure 2023
# coding trace): 8,819 requests over 3,436 s: mean 2.567 req/s; per-second CV 2.266 (Poisson
# 0.624), so burst_var = 4.746; prompt p50 1,469 / p99 7,436 / max 7,437 (the 8k context cap);
# output p50 13 / p99 251 / max 1,899 (trace means 2,048 prompt, 28 output tokens).
AZURE_CODE = WorkloadSpec(
    name="azure-code",
    mean_rate_rps=2.567,
    burst_var=4.746,
    burst_window_s=10.0,
    prompt_p50=1469.0,
    prompt_p99=7436.0,
    prompt_max=7437,
    output_p50=13.0,
    output_p99=251.0,
    output_max=1899,
    diurnal_amplitude=SERVEGEN_DIURNAL_AMPLITUDE,
    diurnal_peak_s=SERVEGEN_DIURNAL_PEAK_S,
)

BUILTIN_WORKLOADS: dict[str, WorkloadSpec] = {w.name: w for w in (AZURE_CONV, AZURE_CODE)}


def generate(
    spec: WorkloadSpec = AZURE_CONV,
    *,
    duration_s: float,
    seed: int = 0,
    start_time_of_day_s: float = 0.0,
    diurnal: bool = True,
) -> Trace:
    """A synthetic trace of `duration_s` seconds (deterministic given `seed`).

    `start_time_of_day_s` places t=0 on the daily cycle (e.g. 8 * 3600 starts at 08:00).
    """
    if duration_s <= 0:
        msg = f"duration_s must be > 0, got {duration_s}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    w = spec.burst_window_s
    n_win = math.ceil(duration_s / w)
    starts = np.arange(n_win) * w
    widths = np.minimum(w, duration_s - starts)
    if spec.burst_var > 0:
        shape = 1.0 / spec.burst_var
        mult = rng.gamma(shape, spec.burst_var, n_win)
    else:
        mult = np.ones(n_win)
    if diurnal and spec.diurnal_amplitude:
        mid = starts + widths / 2.0 + start_time_of_day_s
        shape_t = 1.0 + spec.diurnal_amplitude * np.cos(
            2.0 * math.pi * (mid - spec.diurnal_peak_s) / DAY_S
        )
    else:
        shape_t = np.ones(n_win)
    counts = rng.poisson(spec.mean_rate_rps * shape_t * mult * widths)
    t = np.repeat(starts, counts) + rng.random(int(counts.sum())) * np.repeat(widths, counts)
    t.sort()
    n = len(t)
    prompt = _lognormal(rng, spec.prompt_p50, spec.prompt_p99, spec.prompt_max, n)
    output = _lognormal(rng, spec.output_p50, spec.output_p99, spec.output_max, n)
    return Trace(t, prompt, output)


def with_sessions(
    trace: Trace,
    *,
    sessions: int,
    prefix_tokens: int,
    turns_share: float = 0.0,
    seed: int = 0,
    block_tokens: int = 16,
) -> Trace:
    """Give a trace's prompts shared prefixes, as sessions of a chat or agent front end make:
    each request belongs to one of `sessions` sessions (uniformly), whose first
    `prefix_tokens` tokens (a system prompt, tool definitions) every request of the session
    repeats. With `turns_share` > 0, that share of requests is a follow-up turn: it also
    repeats the whole previous prompt of its session (conversation history). The rest of each
    prompt is its own. The result carries block hashes of `block_tokens` tokens (vLLM's block
    size by default), chained like vLLM's: a block's hash stands for its whole prefix.

    No trace the project ships has session ids; these numbers are the caller's scenario."""
    if sessions < 1 or prefix_tokens < 0 or not 0.0 <= turns_share <= 1.0:
        msg = (
            "sessions >= 1, prefix_tokens >= 0, 0 <= turns_share <= 1; "
            f"got {sessions}, {prefix_tokens}, {turns_share}"
        )
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    n = len(trace.arrival_s)
    sess = rng.integers(0, sessions, n)
    follow = rng.random(n) < turns_share
    prompts = trace.prompt_tokens.copy()
    last: dict[int, tuple[int, ...]] = {}
    out: list[tuple[int, ...]] = []
    for i in range(n):
        s_id = int(sess[i])
        shared = [hash(("session", s_id, b)) for b in range(prefix_tokens // block_tokens)]
        prev = last.get(s_id)
        if follow[i] and prev is not None:
            # A follow-up turn: the previous prompt (its blocks) and then new tokens.
            base = list(prev)
            prompts[i] = max(int(prompts[i]), (len(base) + 1) * block_tokens)
        else:
            base = shared
            prompts[i] = max(int(prompts[i]), prefix_tokens)
        n_blocks = int(prompts[i]) // block_tokens
        own = [hash(("request", i, b)) for b in range(len(base), n_blocks)]
        hashes = tuple((base + own)[:n_blocks])
        last[s_id] = hashes
        out.append(hashes)
    return Trace(trace.arrival_s, prompts, trace.output_tokens, out, block_tokens)


def _lognormal(
    rng: np.random.Generator, p50: float, p99: float, cap: int, n: int
) -> np.ndarray[tuple[int], np.dtype[np.int64]]:
    sigma = math.log(p99 / p50) / _Z99
    x = rng.lognormal(math.log(p50), sigma, n)
    return np.clip(np.rint(x), 1, cap).astype(np.int64)


@dataclass(frozen=True, slots=True)
class WorkloadFit:
    """What `fit_workload` measured on a trace (the source figures of a WorkloadSpec)."""

    requests: int
    duration_s: float
    mean_rate_rps: float
    cv_per_second: float
    burst_var: float
    prompt_p50: float
    prompt_p99: float
    prompt_max: int
    prompt_mean: float
    output_p50: float
    output_p99: float
    output_max: int
    output_mean: float

    def spec(self, name: str, *, burst_window_s: float = 10.0) -> WorkloadSpec:
        return WorkloadSpec(
            name=name,
            mean_rate_rps=self.mean_rate_rps,
            burst_var=self.burst_var,
            burst_window_s=burst_window_s,
            prompt_p50=self.prompt_p50,
            prompt_p99=self.prompt_p99,
            prompt_max=self.prompt_max,
            output_p50=self.output_p50,
            output_p99=self.output_p99,
            output_max=self.output_max,
            diurnal_amplitude=SERVEGEN_DIURNAL_AMPLITUDE,
            diurnal_peak_s=SERVEGEN_DIURNAL_PEAK_S,
        )


def fit_workload(trace: Trace) -> WorkloadFit:
    """Measure the generator's parameters on a trace: rate, per-second CV, length quantiles."""
    t = trace.arrival_s
    n = len(t)
    if n < 2:
        msg = "need at least 2 requests to fit a workload"
        raise ValueError(msg)
    duration = float(t[-1] - t[0])
    rate = n / duration
    per_s = np.bincount(np.floor(t - t[0]).astype(np.int64))
    cv = float(per_s.std() / per_s.mean())
    p = trace.prompt_tokens
    o = trace.output_tokens
    return WorkloadFit(
        requests=n,
        duration_s=duration,
        mean_rate_rps=rate,
        cv_per_second=cv,
        burst_var=max(0.0, cv * cv - 1.0 / rate),
        prompt_p50=float(np.percentile(p, 50)),
        prompt_p99=float(np.percentile(p, 99)),
        prompt_max=int(p.max()),
        prompt_mean=float(p.mean()),
        output_p50=float(np.percentile(o, 50)),
        output_p99=float(np.percentile(o, 99)),
        output_max=int(o.max()),
        output_mean=float(o.mean()),
    )
