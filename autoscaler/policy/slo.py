"""The `slo` policy kind: size a role from the stated SLO and a performance profile.

The user states the SLO (TTFT as a floor plus a slowdown over the prompt's idle prefill time, or
absolute; mean ITL; the attainment target) and names a profile (model x GPU x vLLM version: a
built-in simulator profile or a profile YAML). Each tick the policy estimates the workload from
the role's own vLLM rates and turns it into replicas with the profile's step-time model; there is
no per-trace target to tune. Every number is in the Need's description (the decision reason).

**Workload estimate**: request rate lambda, prompt and generated tokens/s (the rates every metric
source reports); mean prompt p and mean output o are the prompt and generated rates over the
request rate, summed over the last `length_window_s` (10 min).
The spread of prompt lengths (their CV) is estimated from how the mean prompts of neighbouring,
non-overlapping rate windows differ (`PromptSpread`: a window of N requests has a mean prompt of
variance sigma^2 / N; a drifting mix cancels out of neighbours), unless configured. Prompts
are modelled as a lognormal of that mean and CV, averaged at 64 equal-probability points.

**Arrivals, not completions**: vLLM counts a request when it finishes (`request_success_total`),
so a role's request rate is what its replicas served, which a load beyond their capacity does
not raise: the excess waits, and a policy sized on completions would add about one replica per
cold start to a fleet that needs several. For prefill and aggregated roles the steady load is
the arrivals over the rate window, the completions plus the growth of the requests in the role
(waiting + running, vLLM's two gauges) over the same window: A(t) = C(t) + (Q(t) - Q(t - W)) / W
when the backlog grew, C(t) otherwise (a draining queue needs the capacity that serves it).
Without the gauges the completions are taken as they are. The burst headroom's short-window
series stays on completions (see `_arrivals`).

**Load to size for**: the current rate or the **trend at the cold-start horizon**, whichever is
larger, for the steady queueing model; and the **burst headroom**: the short-window rates (see
`RateSeries`) of the last `burst_memory_s`, each weighted by its requests and halved every
`burst_halflife_s`, net of their Poisson noise, sized so that their requests, each window at
the model's miss for its rate, expect at most 1 - attainment late (recurring bursts find
capacity waiting, since a replica takes a cold start to arrive; a one-off burst's weight fades;
for decode, the rates' 1 - attainment quantile); and, for prefill and aggregated
roles, the **burst shape**: burst multipliers over the 10-minute level remembered for
`burst_shape_memory_s` (3 h), held at the current level and capped at the largest rate seen
(`RateSeries.shape_headroom`), so a burst that recurs further apart than the 30-minute memory
(hourly) finds capacity waiting at the size today's level gives it. The trend is a
least-squares line through the per-minute means of the last `trend_window_s` (30 min, needing
half of it) at now + cold start + one tick: minute means over 30 minutes do not follow
15-second noise, and only a rising trend adds anything. Steady load, the burst headroom and the
shape are all sized by the queueing model below (a burst of a few seconds lasts tens of
prefill times, long enough for its queue to reach the steady state), the headroom and the
shape less their Poisson noise over a tick; the role gets the largest.

**Prefill** (against each prompt's own TTFT limit): a prompt P takes S(P), the profile's idle
prefill time (`Profile.idle_prefill_s`, so a recalibrated profile changes the sizing, not this
code), and its limit is max(floor, k S(P)) less its KV transfer. The policy asks for the fewest
replicas c whose share of late requests is at most 1 - attainment, the larger of two models
(each under-counts the engine by what it leaves out; `benchmarks/slo_queue_model.py`):
- the **step model** (prefill_steps.py): one replica's backlog as a Markov chain over steps of
  up to the token budget, each prompt done at the end of the step holding its last chunk, after
  the prompts packed behind it; c replicas behind least-loaded routing as independent queues at
  their share of the rate, a request late only if it would be late on each;
- the **M/G/c waiting tail** with offered load a = lambda E[S]: C(c, a) x mean over prompts of
  exp(-(c - a) w(P) / E[S] x 2 / (1 + cs^2)), w(P) the queueing its limit allows (Erlang C,
  the exponential tail with the heavy-traffic correction for the spread cs^2 of S), which keeps
  the replicas' shared load where huge prompts block several at once.
Prompts whose limit no fleet can meet (an absolute TTFT below their prefill) count as misses;
if they alone exceed the budget the role is sized for load only and says so.

**Decode** (Little's law, the ITL target, the KV cache): with n replicas each runs B = N / n
sequences of mean context L = p + o/2; a step takes alpha_d + (beta_d + gamma_d L) B; by Little's
law N = lambda o step, so N = lambda o alpha_d / (1 - lambda o (beta_d + gamma_d L) / n). The
fewest n whose step meets the mean-ITL target, with B <= max_num_seqs and each replica's KV in
use (B footprints of p + o tokens: mean B m, variance B m2 with the prompt spread, a lognormal
of that mean and variance) at the attainment quantile within kv_capacity_tokens.

**Aggregated** roles add the decode share (generated tokens/s over one replica's capacity at
the ITL-limited batch) to the prefill replicas.

When a rate is missing the policy holds (want = keep = current, blocks scale-down): missing
metrics never scale down; before any request is seen it holds too. keep = want: the decaying
headroom and the trend pace scale-down, with the role's behavior (stabilization, rate limits).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscaler import errors
from autoscaler.forecast import engine
from autoscaler.policy.base import Policy, RoleContext
from autoscaler.policy.forecast import ForecastConfig, settings_for
from autoscaler.policy.prefill_steps import PromptMix, StepCurves
from autoscaler.policy.slo_model import (
    PromptSpread,
    RateSeries,
    erlang_c,
    lognormal_points,
    lognormal_quantile,
    rate_bins,
    value_near,
)
from autoscaler.spec import RoleSpec
from autoscaler.types import (
    GENERATION_TOKENS_RATE,
    PROMPT_LENGTH_CV,
    PROMPT_TOKENS_RATE,
    REQUEST_RATE,
    Need,
    Role,
    RoleObservation,
    SignalName,
)

# ceil() of a ratio that is an integer up to float noise must not add a replica.
_EPS = 1e-9
# The gauges of the requests in a role (totals = per-replica mean x reporting replicas).
_WAITING = SignalName.QUEUE_DEPTH.value
_RUNNING = SignalName.RUNNING.value
# The rate window assumed until the metric source says its own: the simulator's.
DEFAULT_RATE_WINDOW_S = 60.0
# Largest fleet the Erlang-C search considers beyond the offered load (a bound on the loop).
_MAX_EXTRA = 1024
# Short-window rates needed before the burst headroom weighs them (two minutes at 15-s ticks).
_MIN_BURST_RATES = 8
# The step model's curves are tabulated per prompt mix with its mean rounded to 5 % and its CV
# to 0.05 (a coding hour visits about 13 such mixes, a long-prompt hour 21), shared by every
# policy of the same profile and SLO in the process (tune replays the same traffic many times).
_MIX_MEAN_STEP = math.log(1.05)
_MIX_CV_STEP = 0.05
_CURVES: dict[tuple[object, ...], StepCurves] = {}
# The arriving prompts' law in the step model: finer than the 64 quadrature points in the tail,
# where the rare huge prompt sits (prefill_steps.PromptMix).
_ARRIVAL_POINTS = 2048
_MAX_CURVES = 512
# Fields of the forecast kind an slo policy's `forecast` does not take.
_NOT_IN_SLO_FORECAST = frozenset(
    {"series", "capacity_per_replica", "horizon_s", "tick_s", "learn_band", "learn_halflife_s"}
)


class SLOConfig(BaseModel):
    """An SLO-driven policy for one role (`policies: [{kind: slo, profile: ..., ...}]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    profile: str = Field(min_length=1)
    """Performance profile: a built-in name (llama-8b-h100, llama-70b-tp4-h100,
    llama-8b-h100-pcie) or a profile YAML path (relative paths are taken from the working
    directory)."""
    ttft_floor_s: float = Field(default=0.5, gt=0)
    """TTFT limit floor, seconds: a request meets TTFT when TTFT <= max(floor, slowdown x its
    idle prefill time)."""
    ttft_slowdown: float | None = Field(default=3.0, gt=1)
    """TTFT slowdown over the prompt's idle prefill time; null: TTFT <= floor (absolute)."""
    itl_mean_s: float = Field(default=0.05, gt=0)
    """Mean inter-token latency limit per request, seconds."""
    attainment: float = Field(default=0.99, gt=0.5, lt=1)
    """Share of requests that must meet the SLO: the Erlang-C tail is held at 1 - attainment."""
    prompt_length_cv: float | None = Field(default=None, ge=0, le=10)
    """Coefficient of variation of prompt lengths (std / mean): it sets the prompt mix the
    prefill and KV models average over (a lognormal of the observed mean and this CV). Null:
    estimated from how the mean prompts of neighbouring rate windows differ (`PromptSpread`), with
    `prompt_length_cv_prior` until `slo_model.MIN_SPREAD_WINDOWS` windows are seen."""
    prompt_length_cv_prior: float = Field(default=1.0, ge=0, le=10)
    """The CV used before there is enough history to estimate it (1.0: exponential-like)."""
    length_window_s: float = Field(default=600, gt=0, le=86400)
    """The mean prompt and output lengths are ratios of summed rates over this window, seconds:
    10 minutes hold hundreds of requests even at 1 req/s, so one window with a few very long
    prompts does not swing the sizing, and a change of mix is followed within minutes."""
    rate_window_s: float | None = Field(default=None, gt=0, le=3600)
    """The metric source's rate window, seconds: how many requests each rate sample averages,
    and the W of the short-window recovery (`RateSeries`). Null (the default): the source's
    own, which the controller and the simulator tell the policy (the in-cluster Prometheus
    source's `rate_window_s`, 120 s; the simulator's 60 s). A number is used only with a
    source that does not say its window; where the source says, its window wins."""
    burst_memory_s: float = Field(default=1800, ge=0, le=86400)
    """How long short-window rates are remembered for the burst headroom, seconds (0: none)."""
    burst_halflife_s: float = Field(default=600, gt=0)
    """Half-life of a remembered burst's weight, seconds: its requests 10 min ago count half."""
    burst_shape_memory_s: float = Field(default=10800, ge=0, le=7 * 86400)
    """How long burst multipliers (short-window rate over the 10-minute level) are remembered,
    seconds (0: none). Prefill and aggregated roles also size for the multiplier at the
    attainment quantile times the current level (`RateSeries.shape_headroom`): a pattern that
    recurs at the load's scale more than `burst_memory_s` apart (an hourly job) is held at
    the size the current level gives it. 3 h: three half-lives."""
    burst_shape_halflife_s: float = Field(default=3600, gt=0)
    """Half-life of a remembered multiplier's weight, seconds: a burst that recurs hourly
    weighs half at its next occurrence."""
    trend_window_s: float = Field(default=1800, ge=0, le=86400)
    """History of per-minute means the trend line is fitted on, seconds (0: no trend)."""
    tick_s: float = Field(default=15, gt=0, le=600)
    """The controller's tick interval, seconds, until the policy has seen its own: from the
    second tick on it uses the interval between its last two ticks (a controller run with
    `--tick-s 30` then gets a 30-s noise term and trend horizon without setting this). The trend
    horizon is cold start + one tick; a configured forecast's horizon stays at this value."""
    forecast: ForecastConfig | None = None
    """Forecast the role's workload (requests/s for prefill and aggregated, generated tokens/s
    for decode) at the cold-start horizon with the `forecast` kind's models, and size for
    max(now, the forecast's quantile); `{}` takes every default (model auto, usable from 30 min
    of history). While the forecast has nothing to say (too little history, no fit) the
    30-minute trend stands in. `series`, `capacity_per_replica`, `horizon_s`, `tick_s` and the
    `learn_*` fields are the slo kind's own and cannot be set here."""

    @model_validator(mode="after")
    def _check(self) -> SLOConfig:
        if self.ttft_slowdown is None and self.ttft_floor_s <= 0:
            msg = "an absolute TTFT needs ttft_floor_s > 0"
            raise ValueError(msg)
        fc = self.forecast
        if fc is not None:
            # The forecast kind's own sizing and timing fields mean nothing here: the slo kind
            # picks the series, sizes with its profile and forecasts at its cold-start horizon.
            for name in sorted(fc.model_fields_set & _NOT_IN_SLO_FORECAST):
                msg = (
                    f"forecast.{name}: {getattr(fc, name)!r} cannot be set here (the slo "
                    f"kind forecasts its own rates at its cold-start horizon)"
                )
                raise ValueError(msg)
        return self


@dataclass(frozen=True, slots=True)
class SLONeed(Need):
    """A Need whose description carries the sizing arithmetic."""

    explanation: str = ""

    def describe(self) -> str:
        if self.value is None:
            return f"{self.source}: {self.note or 'no estimate'}"
        return f"{self.source}: {self.explanation} -> {self.want}"


def _load_profile(name: str) -> object:
    from autoscaler.profile import BUILTIN_PROFILES, load_profile  # noqa: PLC0415

    if name in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name]
    path = Path(name)
    if not path.exists():
        known = ", ".join(sorted(BUILTIN_PROFILES))
        msg = f"slo.profile: {name!r} is neither a built-in profile ({known}) nor a file"
        raise errors.ConfigError([msg])
    return load_profile(path)


class SLOPolicy:
    """The SLO policy of one role of one pool."""

    # The prompt mix from vLLM's prompt-length histogram (prompt_cv falls back without it);
    # prefill and aggregated roles also read the requests waiting and running (arrivals).
    extra_keys: tuple[str, ...] = (PROMPT_LENGTH_CV,)

    def __init__(self, config: SLOConfig, *, pool: str, role: Role, spec: RoleSpec) -> None:
        from autoscaler.profile import Profile  # noqa: PLC0415

        prof = _load_profile(config.profile)
        assert isinstance(prof, Profile)
        self.profile = prof
        self.config = config
        self.role = role
        self.pool = pool
        self.source = f"slo:{role.value}"
        if role is not Role.DECODE:
            self.extra_keys = (PROMPT_LENGTH_CV, _WAITING, _RUNNING)
        # (t, requests in the role) of the last rate window, for the arrivals (_arrivals).
        self.backlog: deque[tuple[float, float]] = deque()
        self.cold_start_s = spec.cold_start_s
        # The tick in use: configured until two ticks are seen, then measured (_observe_tick).
        self.tick_s = config.tick_s
        self._last_now: float | None = None
        self._intervals: deque[float] = deque(maxlen=8)
        # The source's rate window until the source says (bind_rate_window).
        self.window_s = config.rate_window_s or DEFAULT_RATE_WINDOW_S
        self._new_history()
        # Last seen mean lengths: kept through idle ticks (rate 0 says nothing about lengths).
        self.p_mean: float | None = None
        self.lengths: deque[tuple[float, float, float, float]] = deque()
        self._moments: dict[tuple[int, float], tuple[float, float, list[float]]] = {}
        # What the step model's curves depend on besides the mix (the process-wide cache key).
        self._curve_ns = (
            prof.model_dump_json(), role.value, config.ttft_floor_s, config.ttft_slowdown
        )
        self.o_mean: float | None = None
        # (t, req/s, mean prompt, CV) of the ticks whose source measured the prompt-length CV.
        self.measured: deque[tuple[float, float, float, float]] = deque()
        # The forecast of the series the role is sized on (requests/s, or generated tokens/s
        # for decode), at the same horizon as the trend.
        self.forecaster: engine.Forecaster | None = None
        if config.forecast is not None:
            settings = settings_for(config.forecast, self.horizon_s)
            # "pool/role", as the forecast kind's: refit CPU is exported per pool and role.
            self.forecaster = engine.Forecaster(settings, key=f"{pool}/{role.value}")

    @property
    def horizon_s(self) -> float:
        """How far ahead the trend (or forecast) is read: a cold start plus one tick."""
        return self.cold_start_s + self.tick_s

    # --- the model --------------------------------------------------------------------------

    def service_s(self, p: float) -> float:
        """Idle prefill time of a p-token prompt: the profile's own chunked-prefill model."""
        return float(self.profile.idle_prefill_s(max(1, round(p))))

    def prompt_points(self, p: float, cv: float) -> list[float]:
        """The quadrature prompt lengths of mean p and CV cv, capped by the KV cache: vLLM
        rejects longer requests."""
        return lognormal_points(p, cv, top=float(self.profile.kv_capacity_tokens - 1))

    def prefill_model(self, p: float, cv: float) -> tuple[float, float, list[float]]:
        """E[S], the squared CV of S, and each quadrature prompt's waiting allowance (seconds it
        may queue and still meet its TTFT limit), through the profile's idle prefill time (a
        recalibrated profile changes the sizing, not this code)."""
        key = (round(p), round(cv, 2))
        hit = self._moments.get(key)
        if hit is not None:
            return hit
        pr = self.profile
        xs, waits = [], []
        for q in self.prompt_points(p, cv):
            sv = self.service_s(q)
            xs.append(sv)
            limit = self.ttft_limit_s(sv)
            xfer = 0.0
            if self.role is Role.PREFILL:
                xfer = pr.kv_bytes_per_token * q / pr.kv_transfer_bytes_per_s
                xfer += pr.kv_transfer_setup_s
            waits.append(limit - sv - xfer)
        es = sum(xs) / len(xs)
        es2 = sum(x * x for x in xs) / len(xs)
        cs2 = max(es2 / (es * es) - 1.0, 0.0) if es > 0 else 0.0
        if len(self._moments) > 4096:
            self._moments.clear()
        out = (es, cs2, waits)
        self._moments[key] = out
        return out

    def hopeless_share(self, p: float, cv: float) -> float:
        """The share of the mix's prompts whose TTFT limit no fleet can meet (their prefill
        alone takes longer): misses every sizing counts first."""
        _, _, waits = self.prefill_model(p, cv)
        return sum(1 for w in waits if w <= 0) / len(waits)

    def prefill_replicas(self, lam: float, p: float, cv: float) -> tuple[int, float, str]:
        """Fewest replicas c at which the prefill model (`prefill_miss`) lets all but
        1 - attainment of the requests meet their own TTFT limits."""
        es, _, _ = self.prefill_model(p, cv)
        a = lam * es
        tail = 1.0 - self.config.attainment
        hopeless = self.hopeless_share(p, cv)
        slo = (
            f"TTFT <= {self.config.ttft_floor_s:g} s"
            if self.config.ttft_slowdown is None
            else f"TTFT <= max({self.config.ttft_floor_s:g} s, "
            f"{self.config.ttft_slowdown:g} x idle prefill)"
        )
        head = (
            f"{lam:.3g} req/s x {es * 1000:.0f} ms prefill (mean prompt {p:.0f} tok, cv "
            f"{cv:.2f}) = {a:.2f} replicas busy"
        )
        if hopeless >= tail:
            c = max(1, math.ceil(a + _EPS))
            return c, a, (
                f"{head}; {slo} unreachable for {hopeless:.1%} of prompts on this profile: "
                f"sized for load only -> {c}"
            )
        if a <= 0:
            return 0, 0.0, f"{head} -> 0"
        c = max(1, math.floor(a + _EPS) + 1)
        for _ in range(_MAX_EXTRA):
            miss = self.prefill_miss(c, lam, p, cv)
            if miss <= tail:
                break
            c += 1
        return c, a, (
            f"{head}; step model and M/G/c tail vs each prompt's {slo}: {miss:.2%} miss at {c} "
            f"(<= {tail:.2%}) -> {c}"
        )

    def prefill_miss(self, c: int, lam: float, p: float, cv: float) -> float:
        """The model's share of requests missing their TTFT limit at c replicas and a steady
        lam req/s: the larger of the M/G/c waiting tail and the step model's miss.

        Each leaves out what the other keeps, and each under-counts the engine by what it
        leaves out (`benchmarks/slo_queue_model.py`): the M/G/c tail serves each prompt alone
        (the engine finishes it at the end of a step shared with the prompts behind it) and
        has an exponential tail; the step model keeps the steps but takes the replicas behind
        the router as independent, where huge prompts load them together."""
        return max(self.mgc_miss(c, lam, p, cv), self.step_curves(p, cv).miss(c, lam))

    def mgc_miss(self, c: int, lam: float, p: float, cv: float) -> float:
        """The M/G/c waiting tail averaged over the prompt mix; 1 at or past saturation (the
        backlog passes a sub-second allowance within seconds)."""
        es, cs2, waits = self.prefill_model(p, cv)
        a = lam * es
        if a <= 0:
            return 0.0
        if a >= c:
            return 1.0
        hopeless = self.hopeless_share(p, cv)
        k = 2.0 / (1.0 + cs2)
        decay = (c - a) / es * k
        return hopeless + erlang_c(c, a) * sum(math.exp(-decay * w) for w in waits if w > 0) / len(
            waits
        )

    def step_curves(self, p: float, cv: float) -> StepCurves:
        """The step model's curves for the mix nearest (p, cv) on its grid, computed once per
        process for this profile, role and SLO."""
        pk = round(math.log(max(p, 1.0)) / _MIX_MEAN_STEP)
        ck = round(cv / _MIX_CV_STEP)
        key = (self._curve_ns, pk, ck)
        hit = _CURVES.get(key)
        if hit is not None:
            return hit
        pq, cq = math.exp(pk * _MIX_MEAN_STEP), ck * _MIX_CV_STEP
        pr = self.profile
        tokens, allowance = [], []
        for q in self.prompt_points(pq, cq):
            limit = self.ttft_limit_s(self.service_s(q))
            xfer = pr.kv_transfer_s(round(q)) if self.role is Role.PREFILL else 0.0
            tokens.append(q)
            allowance.append(limit - xfer - pr.frontend_ms / 1000.0)
        arrivals = lognormal_points(
            pq, cq, top=float(pr.kv_capacity_tokens - 1), n=_ARRIVAL_POINTS
        )
        curves = StepCurves(pr, PromptMix(tuple(tokens), tuple(allowance), tuple(arrivals)))
        if len(_CURVES) >= _MAX_CURVES:
            _CURVES.pop(next(iter(_CURVES)))
        _CURVES[key] = curves
        return curves

    def ttft_limit_s(self, idle_s: float) -> float:
        """The TTFT limit of a prompt whose idle prefill takes idle_s: the SLO's own form."""
        c = self.config
        return c.ttft_floor_s if c.ttft_slowdown is None else max(
            c.ttft_floor_s, c.ttft_slowdown * idle_s
        )

    def decode_capacity(self, p: float, o: float) -> tuple[float, int, str]:
        """Generated tokens/s one replica sustains within the ITL target, and its batch B*."""
        pr = self.profile
        ctx = p + o / 2.0
        per_seq = pr.decode_beta_ms_per_seq + pr.decode_gamma_ms_per_ctx_token * ctx
        room = self.config.itl_mean_s * 1000.0 - pr.decode_alpha_ms
        if room <= 0:
            itl_ms = self.config.itl_mean_s * 1000
            return 0.0, 0, f"ITL {itl_ms:g} ms < the {pr.decode_alpha_ms:g} ms step floor"
        b_itl = math.floor(room / per_seq)
        b_kv = math.floor(pr.kv_capacity_tokens / max(p + o, 1.0))
        b = max(1, min(b_itl, b_kv, pr.max_num_seqs))
        step_ms = pr.decode_alpha_ms + per_seq * b
        limit = "ITL" if b == b_itl else ("KV" if b == b_kv else "max_num_seqs")
        return b / step_ms * 1000.0, b, (
            f"B*={b} ({limit}-bound, context {ctx:.0f} tok, step {step_ms:.1f} ms)"
        )

    def prompt_cv(self) -> tuple[float, str]:
        """The prompt-length CV in use and where it comes from: configured, else measured
        (vLLM's prompt-length histogram, pooled over the length window), else estimated from
        the rate windows (`PromptSpread`, biased high where sessions send runs of similar
        prompts), else the prior."""
        if self.config.prompt_length_cv is not None:
            return self.config.prompt_length_cv, "configured"
        weight = sum(x[1] for x in self.measured)
        if weight > _EPS and self.p_mean:
            # Pooled within-window variance: each window's spread around its own mean, weighed
            # by its requests; a mix drifting between windows is not a spread a queue sees.
            var = sum(lam * (cv * p) ** 2 for _, lam, p, cv in self.measured) / weight
            n = len(self.measured)
            return math.sqrt(var) / self.p_mean, f"measured (prompt-length histogram, {n} ticks)"
        est, k = self.spread.cv()
        if est is None:
            return self.config.prompt_length_cv_prior, f"prior ({k} windows)"
        return est, f"estimated over {k} windows"

    def decode_replicas(self, g: float, p: float, o: float, cv: float) -> tuple[int, float, str]:
        """The fewest decode replicas whose steps meet the ITL target and whose KV caches hold
        their sequences at the attainment quantile.

        With n replicas each runs B = N / n sequences of mean context L = p + o/2, a step takes
        alpha_d + (beta_d + gamma_d L) B, and by Little's law N = requests/s x o x step, so
        N = lambda o alpha_d / (1 - lambda o (beta_d + gamma_d L) / n) (n must exceed
        lambda o (beta_d + gamma_d L)). The step must stay within the mean-ITL target, B within
        max_num_seqs, and each replica's KV in use, B sequences of p + o tokens with the prompt
        spread (mean B m, variance B m2: a Poisson number of footprints), at its attainment
        quantile (the lognormal of that mean and variance) within kv_capacity_tokens. Returns
        (n, the replicas' load in sequences, the explanation)."""
        pr = self.profile
        if o <= 0 or g <= 0:
            return 0, 0.0, "no generation"
        lam = g / o
        ctx = p + o / 2.0
        per_seq_s = (pr.decode_beta_ms_per_seq + pr.decode_gamma_ms_per_ctx_token * ctx) / 1e3
        alpha_s = pr.decode_alpha_ms / 1e3
        itl = self.config.itl_mean_s
        cv2 = cv * cv
        m = p + o
        m2 = p * p * (1 + cv2) + 2 * p * o + o * o
        z = NormalDist().inv_cdf(self.config.attainment)
        first = max(1, math.floor(lam * o * per_seq_s) + 1)
        for n in range(first, first + _MAX_EXTRA):
            n_seq = lam * o * alpha_s / (1.0 - lam * o * per_seq_s / n)
            b = n_seq / n
            step = alpha_s + per_seq_s * b
            kv = lognormal_quantile(b * m, b * m2, z)
            if step <= itl and b <= pr.max_num_seqs and kv <= pr.kv_capacity_tokens:
                return n, n_seq, (
                    f"{lam:.3g} req/s x {o:.0f} tokens: {n_seq:.1f} running, {b:.1f} per "
                    f"replica, step {step * 1000:.1f} ms <= {itl * 1000:g} ms, KV {kv / 1000:.0f}k"
                    f" (q{self.config.attainment:g}, {m:.0f} tok each) <= "
                    f"{pr.kv_capacity_tokens / 1000:.0f}k"
                )
        return first + _MAX_EXTRA, 0.0, "no fleet meets the ITL target: capped"

    # --- per tick ---------------------------------------------------------------------------

    def _new_history(self) -> None:
        """Empty rate series and prompt spread over the current window."""
        c = self.config
        # The series the role is sized on: requests for prefill (with the prompt mix), generated
        # tokens for decode, both for an aggregated server.
        def series(*, short: bool) -> RateSeries:
            return RateSeries(
                memory_s=c.burst_memory_s,
                halflife_s=c.burst_halflife_s,
                trend_s=c.trend_window_s,
                window_s=self.window_s,
                short=short,
                shape_memory_s=c.burst_shape_memory_s,
                shape_halflife_s=c.burst_shape_halflife_s,
            )

        self.rate = series(short=True)
        # Generated tokens spread a burst over each request's decode time: window rates only.
        self.gen = series(short=False)
        self.spread = PromptSpread(window_s=self.window_s, memory_s=max(1800.0, c.burst_memory_s))

    def bind_rate_window(self, window_s: float) -> None:
        """The metric source's rate window, told by the loop when the policy is built (see
        `Loop.set_policy`). The short-window recovery differences successive window rates and
        scales them by W / tick: a W that is not the source's turns every burst into the wrong
        rate (a 120-s window read as 60 s halves it). Before the first sample the history is
        rebuilt on it; a policy that already has history keeps it (a source's window does not
        change under a running loop)."""
        if window_s <= 0 or window_s == self.window_s or self.has_history:
            return
        self.window_s = window_s
        self._new_history()

    def _record(
        self, now: float, lam: float, ptok: float, gtok: float, *, n_req: int, n_gen: int
    ) -> None:
        """One sample of the role's rates into its history: the mean lengths, the prompt
        spread, the rate series (burst headroom, trend). Live ticks and a restart's backfill
        (`prime`) both go through here, so a primed history is the one ticks would have built."""
        if lam > _EPS:
            self.spread.add(now, lam, ptok / lam)
            self.lengths.append((now, lam, ptok, gtok))
        while self.lengths and self.lengths[0][0] < now - self.config.length_window_s:
            self.lengths.popleft()
        tot = sum(x[1] for x in self.lengths)
        if tot > _EPS:
            # Ratio of sums over the window: requests weigh in by their number, and a handful of
            # very long prompts in one rate window cannot swing the mean from tick to tick.
            self.p_mean = sum(x[2] for x in self.lengths) / tot
            self.o_mean = sum(x[3] for x in self.lengths) / tot
        if self.role is not Role.DECODE:
            self.rate.add(now, lam, n_req)
        self.gen.add(now, gtok, n_gen)

    @property
    def has_history(self) -> bool:
        """Whether any rate sample was recorded (live or primed)."""
        return bool(self.rate.samples or self.gen.samples)

    def prime(self, points: Sequence[tuple[float, float, float, float]]) -> int:
        """Load (t, requests/s, prompt tokens/s, generated tokens/s) samples from before the
        first tick, oldest first: a restarted controller's history from Prometheus range
        queries (controller/backfill.py). Without it a restart forgets the burst headroom and
        the trend, sizes on the current rate alone and, once the scale-down window passes,
        releases the replicas the last bursts needed. Only an empty history is primed (live
        samples win; the series are kept in time order); points that are not finite and
        non-negative (rates) or not finite (times) are skipped. Returns how many were loaded.

        The number of reporting replicas is not in a range query; every point is taken as
        from the same set, so a replica that joined within the range can show as a short
        burst, which only holds capacity (the safe side after a restart)."""
        if self.has_history:
            return 0
        n = 0
        for t, lam, ptok, gtok in sorted(points):
            # Rates must be counts per second; the time only finite: the policy's clock is the
            # controller's monotonic one, whose zero is the node's boot, so on a node up for
            # less than the memory (3 h) the older half of a refill lies before 0.
            if not math.isfinite(t) or not all(
                math.isfinite(x) and x >= 0 for x in (lam, ptok, gtok)
            ):
                continue
            self._record(t, lam, ptok, gtok, n_req=0, n_gen=0)
            if self.forecaster is not None:
                self.forecaster.observe(t, gtok if self.role is Role.DECODE else lam)
            n += 1
        return n

    def _arrivals(self, now: float, obs: RoleObservation, served: float) -> tuple[float, str]:
        """(arrival rate over the rate window, what was added to the served rate): the
        completions plus the growth of the requests in the role over the window (module doc),
        never below the completions.
        Both gauges are totals over the replicas that report them; with either missing, or no
        sample a window back, the served rate is all there is."""
        total = 0.0
        for key in (_WAITING, _RUNNING):
            got = obs.signals.get(key)
            value = None if got is None or got.missing else float(got.value or 0.0)
            if got is None or value is None or not math.isfinite(value) or value < 0:
                # Missing or not a count (a source bug or a hostile answer that got through):
                # the served rate stands, and the window starts afresh.
                self.backlog.clear()
                return served, ""
            total += value * got.replicas
        w = self.window_s
        self.backlog.append((now, total))
        while self.backlog and self.backlog[0][0] < now - 1.5 * w:
            self.backlog.popleft()
        # The sample nearest one window back (within half a window): the window rates' own span.
        then = value_near(self.backlog, now - w, w / 2)
        if then is None:
            return served, ""
        growth = (total - then) / w
        if growth <= _EPS:
            # A draining queue: fewer arrived than were served, but the drain needs the
            # capacity that served them, so the served rate stands.
            return served, ""
        return served + growth, f"served {served:.3g} + backlog growth {growth:.3g}"

    def _hold(self, ctx: RoleContext, why: str) -> Need:
        cur = ctx.obs.replicas
        return SLONeed(self.source, cur, cur, None, None, blocks_down=True, note=why)

    def _forecast(self, now: float, value: float) -> engine.Forecast | engine.Fallback | None:
        """Feed this tick's rate to the forecast and read it at the horizon (None: no forecast
        configured). Refits run through the process-wide refitter (inline in the simulator)."""
        f = self.forecaster
        if f is None:
            return None
        f.observe(now, value)
        f.maybe_refit(now)
        return f.predict(now)

    def _load(
        self,
        series: RateSeries,
        now: float,
        current: float,
        fc: engine.Forecast | engine.Fallback | None = None,
    ) -> tuple[float, float, str]:
        """(steady rate: max(current, forecast or else trend at the horizon), burst headroom,
        explanation)."""
        head, age = series.headroom(now, self.config.attainment)
        parts = [f"now {current:.3g}"]
        value = current
        if isinstance(fc, engine.Forecast):
            # The forecast replaces the trend: both read where the rate is going, the forecast
            # with a calibrated band (of the rate, not of one bin's noise).
            q = round(self.forecaster.settings.quantile * 100) if self.forecaster else 0
            verdict = "sized for" if fc.upper > current + _EPS else "not above now"
            parts.append(
                f"forecast[{fc.model}] P{q} {fc.upper:.3g} (median {fc.median:.3g}) within "
                f"+{self.horizon_s:.0f} s: {verdict}"
            )
            value = max(current, fc.upper)
            rise: float | None = None
        else:
            if isinstance(fc, engine.Fallback):
                parts.append(f"forecast: {fc.reason}, trend instead")
            rise = series.trend(now, self.horizon_s)
        if rise is not None and rise > _EPS:
            value = current + rise
            parts.append(f"trend +{rise:.3g} by +{self.horizon_s:.0f} s")
        if head > value + _EPS:
            qa = self.config.attainment
            parts.append(
                f"burst headroom {head:.3g} (q{qa:g} of recent short-window rates, {age:.0f} s ago)"
            )
        return value, head, ", ".join(parts)

    def burst_replicas(
        self, now: float, head: float, p: float, cv: float, start: int = 1
    ) -> tuple[int, str]:
        """Replicas (at least `start`) at which the requests of the recent short-window rates,
        net of their Poisson noise, expect at most 1 - attainment of them late.

        Attainment is a share of requests, so the headroom holds the requests the recent rates
        carried, each window at the prefill model's miss for its rate: a burst that carries a
        tenth of the requests is held to a tenth of the budget, not to the whole budget at the
        burst's rate (which, with a model as close to the engine as the step model, kept a
        second replica through every peak of a smooth daily swing: 2.92 GPU-h where 2.61 held
        the same 99.87 % on the demo's generated day). A burst of even a few seconds lasts tens
        of prefill times (60 ms for a 2k prompt), so its queue reaches its quasi-stationary
        state within it; a fluid bound (the burst's work drains within a tick) lets requests
        wait seconds, far past a TTFT limit of 0.5 s. Where prompts no fleet can serve in time
        alone fill the budget, or fewer than `_MIN_BURST_RATES` rates are remembered, the
        headroom is the steady sizing at `head` less its noise."""
        if head <= 0:
            return 0, ""
        tail = 1.0 - self.config.attainment
        hopeless = self.hopeless_share(p, cv)
        rates = self.rate.short_rates(now)
        # Too few rates to tell their spread from noise (a restart without backfill, or no
        # memory configured): the steady sizing at the burst's rate less its noise.
        if hopeless >= tail or len(rates) < _MIN_BURST_RATES:
            z = NormalDist().inv_cdf(self.config.attainment)
            noise = z * math.sqrt(2.0 * head / self.tick_s)
            c, _, expl = self.prefill_replicas(max(head - noise, 0.0), p, cv)
            return c, f"burst {head:.3g} - Poisson noise {noise:.3g} req/s: {expl}"
        groups = rate_bins(rates, self.tick_s)
        total = sum(w for _, w in groups)
        c = max(start, 1)
        late = 1.0
        for _ in range(_MAX_EXTRA):
            late = sum(w * self.prefill_miss(c, v, p, cv) for v, w in groups) / total
            if late <= tail:
                break
            c += 1
        top = max(v for v, _ in groups)
        return c, (
            f"burst: recent short-window rates net of Poisson noise (up to {top:.3g} req/s, "
            f"{len(groups)} groups of equal requests) expect {late:.2%} late at {c} "
            f"(<= {tail:.2%}) -> {c}"
        )

    def shape_replicas(self, now: float, p: float, cv: float) -> tuple[int, str, float]:
        """Replicas for the remembered burst shape at the current level (already net of
        Poisson noise, `RateSeries.shape_headroom`), through the same prefill model; with the
        explanation and the rate (req/s) they are sized for."""
        rate, age, level = self.rate.shape_headroom(now, self.config.attainment)
        if rate <= level + _EPS:
            return 0, "", 0.0
        c, _, expl = self.prefill_replicas(rate, p, cv)
        return c, (
            f"burst shape {rate:.3g} req/s (x{rate / level:.2f} of level {level:.3g}; largest "
            f"{age / 60:.0f} min ago): {expl}"
        ), rate

    def peak_replicas(
        self, now: float, head: float, p: float, cv: float, start: int = 1
    ) -> tuple[int, str, float]:
        """The larger of the burst headroom's (searched from `start`, the steady sizing: only
        more than that changes the role) and the burst shape's replicas, with its explanation
        and the burst rate (req/s) it holds (the headroom's on a tie)."""
        n_b, bexpl = self.burst_replicas(now, head, p, cv, start)
        n_s, sexpl, rate = self.shape_replicas(now, p, cv)
        return (n_b, bexpl, head) if n_b >= n_s else (n_s, sexpl, rate)

    def _observe_tick(self, now: float) -> None:
        """The controller's own tick: the median of the last 8 intervals between calls (a
        slow tick or a gap does not move it), bounded as the config's. The Poisson noise of a
        short-window rate and the trend's horizon depend on it."""
        if self._last_now is not None and 0 < now - self._last_now <= 600:
            self._intervals.append(now - self._last_now)
            self.tick_s = statistics.median(self._intervals)
        self._last_now = now

    def needs(self, ctx: RoleContext) -> list[Need]:
        self._observe_tick(ctx.now)
        sig = ctx.obs.signals
        got = {k: sig.get(k) for k in (REQUEST_RATE, PROMPT_TOKENS_RATE, GENERATION_TOKENS_RATE)}
        missing = [k for k, s in got.items() if s is None or s.missing]
        if missing:
            return [self._hold(ctx, f"missing {', '.join(missing)}: hold")]
        lam = float(got[REQUEST_RATE].value or 0.0)  # type: ignore[union-attr]
        ptok = float(got[PROMPT_TOKENS_RATE].value or 0.0)  # type: ignore[union-attr]
        gtok = float(got[GENERATION_TOKENS_RATE].value or 0.0)  # type: ignore[union-attr]
        now = ctx.now
        measured = sig.get(PROMPT_LENGTH_CV)
        if lam > _EPS and measured is not None and measured.value is not None:
            self.measured.append((now, lam, ptok / lam, float(measured.value)))
        while self.measured and self.measured[0][0] < now - self.config.length_window_s:
            self.measured.popleft()
        n_req = got[REQUEST_RATE].replicas  # type: ignore[union-attr]
        n_gen = got[GENERATION_TOKENS_RATE].replicas  # type: ignore[union-attr]
        self._record(now, lam, ptok, gtok, n_req=n_req, n_gen=n_gen)
        arr_why = ""
        if self.role is not Role.DECODE:
            # The steady load is the arrivals (module doc). The short-window series keeps the
            # served rates: a gauge read once a tick, differenced and scaled by W / tick, would
            # turn the queue's instant-to-instant noise into phantom bursts.
            lam, arr_why = self._arrivals(now, ctx.obs, lam)
        # Every tick with rates feeds the forecast, idle ones too (a zero rate is history).
        fc = self._forecast(now, gtok if self.role is Role.DECODE else lam)
        if self.p_mean is None or self.o_mean is None:
            return [self._hold(ctx, "no request seen yet: hold")]
        p, o = self.p_mean, self.o_mean
        cv, cv_why = self.prompt_cv()
        if self.role is Role.PREFILL:
            lam_s, head, why = self._load(self.rate, now, lam, fc)
            n, value, expl = self.prefill_replicas(lam_s, p, cv)
            n_b, bexpl, _ = self.peak_replicas(now, head, p, cv, n)
            text = f"req/s {why}; {expl}"
            if n_b > n:
                n = n_b
                text += f"; {bexpl}"
        elif self.role is Role.DECODE:
            g_s, head, why = self._load(self.gen, now, gtok, fc)
            n, value, expl = self.decode_replicas(max(g_s, head), p, o, cv)
            text = f"gen tok/s {why}; {expl}"
        else:
            lam_s, head, why = self._load(self.rate, now, lam, fc)
            n_p, a, expl = self.prefill_replicas(lam_s, p, cv)
            n_b, bexpl, peak = self.peak_replicas(now, head, p, cv, n_p)
            cap, _, dexpl = self.decode_capacity(p, o)
            # Decode's share at the rate the prefill part is held for: the burst the headroom or
            # the shape keeps capacity for brings its generation too.
            d_share = max(lam_s, head, peak) * o / cap if cap > 0 else 0.0
            # Decode shares the replicas' time with prefill: add its share of replicas.
            n = math.ceil(max(n_p, n_b) + d_share - _EPS)
            text = f"req/s {why}; prefill {expl}"
            if n_b > n_p:
                text += f"; {bexpl}"
            text += f"; + decode {d_share:.2f} replicas at {dexpl}"
            value = a + d_share
        n = max(n, 0)
        if arr_why:
            text = f"{text} [arrivals: {arr_why}]"
        text = f"{text} [prompt cv {cv:.2f}: {cv_why}]"
        return [SLONeed(self.source, n, n, value, float(n), explanation=text)]


class _Plugin:
    kind = "slo"
    config_model: type[BaseModel] = SLOConfig

    def build(self, config: BaseModel, *, pool: str, role: Role, spec: RoleSpec) -> Policy:
        assert isinstance(config, SLOConfig)
        return SLOPolicy(config, pool=pool, role=role, spec=spec)


PLUGIN = _Plugin()
