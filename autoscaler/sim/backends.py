"""The simulator behind the project's protocols: a MetricsSource and an Actuator.

`SimMetricsSource` plays Prometheus: every `scrape_interval_s` it scrapes each ready replica's
vLLM metrics (`VllmMetrics.scrape`), keeps the samples of the last `window_s`, and answers
`fetch` from those samples only, so values refresh once per scrape as they would behind a real
Prometheus. Each signal is computed as the PromQL of docs/VLLM-METRICS.md §6/§8 would compute it,
per role (= per Deployment, the `pod=~"<deployment>-.*"` selector):

* queue_depth, running, kv_cache: `avg(vllm:num_requests_waiting)` etc., the latest scrape of
  each replica averaged over replicas (an instant vector).
* batched_tokens: per replica `rate(iteration_tokens_total_sum[w]) /
  rate(iteration_tokens_total_count[w])` (mean tokens per step), 0 for a replica that ran no step
  in the window (idle is not missing), divided by the role's `max_num_batched_tokens` and averaged
  over replicas.
* ttft_pXX / itl_pXX: `histogram_quantile(q, sum by (le) (rate(..._bucket[w])))` with
  Prometheus's linear interpolation inside the bucket (the +Inf bucket returns the highest
  finite bound); missing (None) when no request was observed in the window (Prometheus: NaN).
* ttft_relative_pXX_fNms: the TTFT quantile over clamp_min(the same quantile of
  `request_prefill_time_seconds`, N ms), both as above.
* request_rate, prompt_tokens_rate, generation_tokens_rate: `sum(rate(...[w]))` of
  `request_success_total` (all reasons), `prompt_tokens_total`, `generation_tokens_total`.

`rate` over the window is (last - first) / (t_last - t_first) of the samples inside it: what
Prometheus's extrapolation yields for a counter scraped regularly over the whole window. A
replica needs two samples in the window to contribute a rate (as in Prometheus), so a replica
that just became ready reports gauges at once but rates only one scrape later: `replicas` of the
sample then falls short of the ready count, which the core reads as partial data.

Scraped replicas are the ready, non-draining ones (a terminating pod leaves the Service
endpoints); their series vanish when they are removed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from autoscaler.actuator.base import WorkloadStatus
from autoscaler.metrics.lengths import prompt_length_cv
from autoscaler.metrics.source import (
    GENERATION_TOKENS_RATE,
    PROMPT_TOKENS_RATE,
    RATE_KEYS,
    REQUEST_RATE,
    RoleSamples,
    RoleTarget,
    signal_key,
)
from autoscaler.sim.vllm_metrics import ITL_BUCKETS, REQUEST_TIME_BUCKETS, TTFT_BUCKETS
from autoscaler.spec import SignalSpec, relative_floor_s
from autoscaler.types import PROMPT_LENGTH_CV, Role, SignalName, SignalSample

if TYPE_CHECKING:
    from autoscaler.sim.engine import Replica, SimDeployment, Simulation
    from autoscaler.sim.vllm_metrics import HistogramSnapshot, ScrapeSample
    from autoscaler.spec import DeploymentRef, RoleSpec

_Series = deque[tuple[float, "ScrapeSample"]]
# Extra keys a policy may ask for that are plain gauges of the scrape (Policy.extra_keys).
_EXTRA_GAUGES = frozenset(
    {SignalName.QUEUE_DEPTH.value, SignalName.RUNNING.value, SignalName.KV_CACHE.value}
)


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    """Prometheus's histogram_quantile over non-cumulative bucket counts (last = +Inf).

    Worked example: bounds (0.1, 0.5), counts (2, 2, 0), q=0.75: rank 3 falls in (0.1, 0.5]
    holding 2 observations, 1 of them needed: 0.1 + 0.4 * 1/2 = 0.3.
    """
    total = float(sum(counts))
    if total <= 0 or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    rank = q * total
    cum = 0.0
    for i, bound in enumerate(bounds):
        prev = cum
        cum += counts[i]
        if cum >= rank:
            if i == 0 and bound <= 0:
                return bound
            lower = 0.0 if i == 0 else bounds[i - 1]
            n = cum - prev
            return lower + (bound - lower) * ((rank - prev) / n)
    # The quantile is in the +Inf bucket: Prometheus returns the highest finite bound.
    return bounds[-1]


class SimMetricsSource:
    """MetricsSource over the simulated replicas (see the module docstring)."""

    def __init__(
        self,
        sim: Simulation,
        *,
        scrape_interval_s: float = 15.0,
        window_s: float = 60.0,
        start_s: float = 0.0,
    ) -> None:
        if window_s < scrape_interval_s:
            msg = (
                f"window_s {window_s} must cover at least one scrape_interval_s {scrape_interval_s}"
            )
            raise ValueError(msg)
        self.sim = sim
        self.scrape_interval_s = scrape_interval_s
        self.window_s = window_s
        keep = int(window_s // scrape_interval_s) + 2
        self._series: dict[Replica, _Series] = {}
        self._keep = keep
        # Latest scrape per Deployment: its time and the replicas scraped.
        self._latest: dict[SimDeployment, tuple[float, list[Replica]]] = {}
        sim.every(scrape_interval_s, self._scrape, start=start_s)

    def _scrape(self, t: float) -> None:
        for dep in self.sim.deployments():
            reps = list(dep.serving)
            for rep in reps:
                rep.sync(t)
                s = self._series.get(rep)
                if s is None:
                    s = self._series[rep] = deque(maxlen=self._keep)
                s.append((t, rep.metrics.scrape()))
            self._latest[dep] = (t, reps)
        # Forget replicas that are gone (their series are stale in Prometheus too).
        live = {r for _, reps in self._latest.values() for r in reps}
        for rep in [r for r in self._series if r not in live]:
            del self._series[rep]

    @property
    def rate_window_s(self) -> float:
        """The window of every rate and quantile (`metrics.source.rate_window_of`)."""
        return self.window_s

    async def fetch(self, targets: Sequence[RoleTarget], *, now: float) -> RoleSamples:
        """Samples for every target from the scrapes at or before `now` (advancing the
        simulation to `now` first if it is behind)."""
        if self.sim.now < now:
            self.sim.advance_to(now)
        out: dict[tuple[str, Role], dict[str, SignalSample]] = {}
        for target in targets:
            out[(target.pool, target.role)] = self.role_samples(
                target.spec, now=now, extra=target.extra
            )
        return out

    def role_samples(
        self, spec: RoleSpec, *, now: float, extra: Sequence[str] = ()
    ) -> dict[str, SignalSample]:
        """Every configured signal of one role plus RATE_KEYS, and the `extra` keys its
        policies asked for (a gauge such as queue_depth, as if configured)."""
        dep = self.sim.deployment(spec.deployment)
        latest = self._latest.get(dep)
        samples: dict[str, SignalSample] = {}
        gauges = [
            SignalSpec(signal=SignalName(k), target=1.0) for k in extra if k in _EXTRA_GAUGES
        ]
        if latest is None:
            for sig in (*spec.signals, *gauges):
                samples[signal_key(sig)] = SignalSample(None, 0, "no scrape yet")
            for key in (*RATE_KEYS, PROMPT_LENGTH_CV):
                samples[key] = SignalSample(None, 0, "no scrape yet")
            return samples
        _, reps = latest
        windows = [self._window(r, now) for r in reps]
        for sig in (*spec.signals, *gauges):
            if signal_key(sig) not in RATE_KEYS:  # throughput signals are the rates below
                samples[signal_key(sig)] = self._signal(sig, spec, windows)
        for key in RATE_KEYS:
            samples[key] = self._rate(key, windows)
        bounds = reps[0].metrics.prompt_tokens_hist.bounds if reps else ()
        samples[PROMPT_LENGTH_CV] = _length_cv(bounds, windows)
        return samples

    def _window(self, rep: Replica, now: float) -> list[tuple[float, ScrapeSample]]:
        series = self._series.get(rep)
        if not series:
            return []
        lo = now - self.window_s
        return [(t, s) for t, s in series if lo < t <= now]

    def _signal(
        self,
        sig: SignalSpec,
        spec: RoleSpec,
        windows: list[list[tuple[float, ScrapeSample]]],
    ) -> SignalSample:
        name = sig.signal
        if name in (SignalName.QUEUE_DEPTH, SignalName.RUNNING, SignalName.KV_CACHE):
            vals = []
            for w in windows:
                if not w:
                    continue
                last = w[-1][1]
                if name is SignalName.QUEUE_DEPTH:
                    vals.append(float(last.waiting))
                elif name is SignalName.RUNNING:
                    vals.append(float(last.running))
                else:
                    vals.append(last.kv_usage)
            if not vals:
                return SignalSample(None, 0, "no series")
            return SignalSample(sum(vals) / len(vals), len(vals))
        if name is SignalName.BATCHED_TOKENS:
            vals = []
            for w in windows:
                if len(w) < 2:
                    continue
                a, b = w[0][1].iteration_tokens, w[-1][1].iteration_tokens
                dn = b.count - a.count
                per_step = (b.sum - a.sum) / dn if dn > 0 else 0.0
                vals.append(per_step / spec.max_num_batched_tokens)
            if not vals:
                return SignalSample(None, 0, "fewer than 2 scrapes in window")
            return SignalSample(sum(vals) / len(vals), len(vals))
        if name is SignalName.TTFT_RELATIVE:
            ttft = _window_quantile(sig.quantile, TTFT_BUCKETS, _ttft, windows)
            pre = _window_quantile(sig.quantile, REQUEST_TIME_BUCKETS, _prefill, windows)
            if ttft.missing or pre.missing:
                return ttft if ttft.missing else pre
            # PromQL's clamp_min(prefill_q, floor / slowdown) as the divisor.
            divisor = max(float(pre.value or 0.0), relative_floor_s(sig))
            return SignalSample(float(ttft.value or 0.0) / divisor, ttft.replicas)
        # TTFT / ITL quantiles over the summed bucket increases.
        pick = _ttft if name is SignalName.TTFT else _itl
        bounds = TTFT_BUCKETS if name is SignalName.TTFT else ITL_BUCKETS
        return _window_quantile(sig.quantile, bounds, pick, windows)

    def _rate(self, key: str, windows: list[list[tuple[float, ScrapeSample]]]) -> SignalSample:
        total = 0.0
        n = 0
        for w in windows:
            if len(w) < 2:
                continue
            (t0, a), (t1, b) = w[0], w[-1]
            if key == REQUEST_RATE:
                d = b.success - a.success
            elif key == PROMPT_TOKENS_RATE:
                d = b.prompt_tokens - a.prompt_tokens
            elif key == GENERATION_TOKENS_RATE:
                d = b.generation_tokens - a.generation_tokens
            else:  # pragma: no cover - RATE_KEYS is closed
                raise KeyError(key)
            total += d / (t1 - t0)
            n += 1
        if n == 0:
            return SignalSample(None, 0, "fewer than 2 scrapes in window")
        return SignalSample(total, n)


def _window_quantile(
    q: float,
    bounds: Sequence[float],
    pick: Callable[[ScrapeSample], HistogramSnapshot],
    windows: list[list[tuple[float, ScrapeSample]]],
) -> SignalSample:
    """The q-quantile of one histogram over the bucket increases of every replica's window."""
    summed: list[float] | None = None
    n = 0
    for w in windows:
        if len(w) < 2:
            continue
        a, b = pick(w[0][1]), pick(w[-1][1])
        delta = [float(y - x) for x, y in zip(a.counts, b.counts, strict=True)]
        summed = delta if summed is None else [x + y for x, y in zip(summed, delta, strict=True)]
        n += 1
    if summed is None:
        return SignalSample(None, 0, "fewer than 2 scrapes in window")
    value = histogram_quantile(q, bounds, summed)
    if math.isnan(value):
        return SignalSample(None, n, "no observations in window")
    return SignalSample(value, n)


def _length_cv(
    bounds: Sequence[float], windows: list[list[tuple[float, ScrapeSample]]]
) -> SignalSample:
    """The prompt-length CV of the requests finished in the window, from the summed increases
    of every replica's `request_prompt_tokens` histogram (as the Prometheus source reads it)."""
    summed: list[float] | None = None
    total = 0.0
    count = 0
    n = 0
    for w in windows:
        if len(w) < 2:
            continue
        a, b = w[0][1].prompt_len, w[-1][1].prompt_len
        delta = [float(y - x) for x, y in zip(a.counts, b.counts, strict=True)]
        summed = delta if summed is None else [x + y for x, y in zip(summed, delta, strict=True)]
        total += b.sum - a.sum
        count += b.count - a.count
        n += 1
    if summed is None:
        return SignalSample(None, 0, "fewer than 2 scrapes in window")
    cv = prompt_length_cv(bounds, summed, total / count) if count > 0 else None
    if cv is None:
        return SignalSample(None, n, "no request finished in window")
    return SignalSample(cv, n)


def _prefill(s: ScrapeSample) -> HistogramSnapshot:
    return s.prefill_time


def _ttft(s: ScrapeSample) -> HistogramSnapshot:
    return s.ttft


def _itl(s: ScrapeSample) -> HistogramSnapshot:
    return s.itl


class SimActuator:
    """Actuator over simulated Deployments (found by namespace/name)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    async def status(self, ref: DeploymentRef) -> WorkloadStatus:
        dep = self.sim.deployment(ref)
        return WorkloadStatus(
            replicas=dep.spec_replicas, ready=len(dep.serving), pending=len(dep.starting)
        )

    async def scale(self, ref: DeploymentRef, replicas: int, *, reason: str) -> None:
        self.sim.scale(ref, replicas, reason=reason)
