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
* **Oracle**: a lower bound on GPU-hours; see `oracle`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from autoscaler.types import Role

if TYPE_CHECKING:
    from collections.abc import Sequence

    from autoscaler.sim.engine import RequestResults, ScaleEvent, Simulation
    from autoscaler.sim.profile import Profile

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
    a = profile.prefill_alpha_ms
    b = profile.prefill_beta_ms_per_token
    g = profile.prefill_gamma_ms_per_token2
    full_ms = full * (a + b * m + g * m * m)
    rest_f = rest.astype(np.float64)
    rest_ms = np.where(rest > 0, a + b * rest_f + g * rest_f * rest_f, 0.0)
    out: FloatArray = (full_ms + rest_ms) / 1000.0
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
    extra: dict[str, float] = field(default_factory=dict)


def evaluate(
    sim: Simulation,
    pool: str,
    *,
    slo: SLO = SLO(),
    end_s: float | None = None,
    reversal_window_s: float = 600.0,
    with_oracle: bool = True,
) -> Evaluation:
    """Summarise pool `pool` of `sim` up to `end_s` (default: the simulation's now)."""
    p = sim.pool(pool)
    res = p.results()
    out = request_outcome(res, p.profile, slo)
    n = len(res.arrival_s)
    events = [e for e in sim.scale_events() if e.pool == pool]
    roles = list(p.deployments)
    gpu_by_role = {r: sim.gpu_seconds(pool=pool, role=r, at=end_s) / 3600.0 for r in roles}
    oracle_h = None
    if with_oracle and n:
        oracle_h = oracle(
            res.arrival_s,
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
    )


@dataclass(frozen=True, slots=True)
class Oracle:
    """Per-bin fewest replicas per role and the GPU-hours they add up to."""

    bin_start_s: FloatArray
    replicas: dict[Role, IntArray]
    gpu_hours: float
    prefill_capacity_tok_s: float
    decode_capacity_tok_s: FloatArray


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
) -> Oracle:
    """A lower bound on GPU-hours: per bin (a minute), the fewest replicas per role whose
    modelled capacity covers that bin's demand at the SLO, with no cold start and perfect
    foresight (replicas appear and vanish at bin edges, at least `min_replicas` each).

    Demand of a bin: the prompt and output tokens of the requests arriving in it, per second.
    Capacity, from the profile:

    * Prefill (compute-bound): a replica running back-to-back full steps of B = max_num_batched_
      tokens spends alpha_p/B + beta_p + gamma_p·n̄ per token, where n̄ = sum(p²)/sum(p) (capped at
      B) is the token-weighted prompt length of the bin (a step's sum(n²) ≈ B·n̄). Queueing delay
      is ignored (utilisation may reach 1), which is what makes it a lower bound.
    * Decode (memory-bound, ITL-limited): the largest batch whose step time stays within the
      ITL SLO, B* = (itl_mean_s - alpha_d) / (beta_d + gamma_d·L̄), capped by max_num_seqs and
      by KV (B*·L̄ <= capacity), with L̄ the output-weighted mean context (prompt + output/2);
      throughput B*/step(B*) tokens/s, the most any replica can give within the SLO.
    * Aggregated replicas share their time: n = ceil(prefill demand / prefill capacity + decode
      demand / decode capacity) (the mixed step's shared fixed cost is ignored, as a bound
      should).

    Worked example (8B, B=8192, n̄=1500): 4/8192 + 0.025 + 7e-7·1500 = 0.02654 ms/token ->
    37.7k prompt tok/s per replica; at L̄=1200 the ITL bound allows (50-6.5)/(0.03+0.072) = 426
    sequences but KV only 430000/1200 = 358, so B* = 358, step 43.0 ms -> 8.3k output tok/s.
    """
    t = np.asarray(arrival_s, dtype=np.float64)
    p = np.maximum(np.asarray(prompt_tokens, dtype=np.float64), 1.0)
    o = np.maximum(np.asarray(output_tokens, dtype=np.float64), 1.0)
    nbins = max(1, math.ceil((float(t.max()) + 1e-9) / bin_s)) if t.size else 1
    b = np.minimum((t // bin_s).astype(np.int64), nbins - 1)
    p_sum = np.bincount(b, weights=p, minlength=nbins)
    p_sq = np.bincount(b, weights=p * p, minlength=nbins)
    o_sum = np.bincount(b, weights=o, minlength=nbins)
    ctx = np.bincount(b, weights=o * (p + o / 2.0), minlength=nbins)
    m = float(profile.max_num_batched_tokens)
    with np.errstate(invalid="ignore", divide="ignore"):
        nbar = np.where(p_sum > 0, np.minimum(p_sq / p_sum, m), 0.0)
        lbar = np.where(o_sum > 0, ctx / o_sum, 0.0)
    per_tok_ms = (
        profile.prefill_alpha_ms / m
        + profile.prefill_beta_ms_per_token
        + profile.prefill_gamma_ms_per_token2 * nbar
    )
    cap_p = 1000.0 / per_tok_ms
    itl_ms = slo.itl_mean_s * 1000.0
    room = max(itl_ms - profile.decode_alpha_ms, 0.0)
    per_seq = profile.decode_beta_ms_per_seq + profile.decode_gamma_ms_per_ctx_token * lbar
    bstar = np.floor(room / per_seq)
    bstar = np.minimum(bstar, profile.max_num_seqs)
    with np.errstate(divide="ignore"):
        bstar = np.minimum(bstar, np.floor(profile.kv_capacity_tokens / np.maximum(lbar, 1.0)))
    bstar = np.maximum(bstar, 1.0)
    step_ms = profile.decode_alpha_ms + per_seq * bstar
    cap_d = bstar / step_ms * 1000.0
    dem_p = p_sum / bin_s
    dem_d = o_sum / bin_s
    replicas: dict[Role, IntArray]
    if disaggregated:
        n_p = np.maximum(np.ceil(dem_p / cap_p - 1e-9), min_replicas).astype(np.int64)
        n_d = np.maximum(np.ceil(dem_d / cap_d - 1e-9), min_replicas).astype(np.int64)
        replicas = {Role.PREFILL: n_p, Role.DECODE: n_d}
    else:
        n_a = np.maximum(np.ceil(dem_p / cap_p + dem_d / cap_d - 1e-9), min_replicas)
        replicas = {Role.AGGREGATED: n_a.astype(np.int64)}
    total = sum(int(v.sum()) for v in replicas.values())
    gpu_hours = total * profile.gpus_per_replica * bin_s / 3600.0
    return Oracle(
        bin_start_s=np.arange(nbins, dtype=np.float64) * bin_s,
        replicas=replicas,
        gpu_hours=gpu_hours,
        prefill_capacity_tok_s=float(np.mean(cap_p)),
        decode_capacity_tok_s=cap_d,
    )
