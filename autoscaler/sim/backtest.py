"""`pd-autoscaler backtest`: replay a trace through the controller and the baselines.

Each run builds a fresh simulated cluster (`Simulation.from_policy`) fed by the same trace, and
drives it with the real controller `Loop` over `SimMetricsSource` (a Prometheus that scrapes every
`--scrape-s`) and `SimActuator`, one tick every `--tick-s`, until the last request has finished.
The policy runs and the `keda-queue` baseline go through the Loop; `static-peak` has no
controller (see `baselines.py` for both baselines).

What is reported (docs/SIM-MODEL.md §3.2), per run, on the trace's first pool:

* **SLO attainment**: the share of requests with TTFT <= max(ttft_floor_s, ttft_slowdown x its
  prefill time on an idle replica) and mean ITL <= itl_mean_s (evaluate.py).
* **GPU-hours**: every replica from its request (cold start included) to its stop (drain
  included), counted over the trace's horizon [0, H), H = the last arrival rounded up to a whole
  minute: the span the oracle covers, so that all columns add up the same interval. Requests
  still running at H are served to the end and judged, but GPUs held after H are not billed.
* **Warm-up** (`--warmup-s W`, default 0): every figure, in every run alike, judges only
  requests arriving from W on and bills GPUs over [W, H); the oracle covers the same span. A
  trace cut from running traffic starts at full load; a fixed fleet is warm at 0, a controller
  run starts at min_replicas and needs a cold start to catch up. W = one cold start plus one
  rate window (`warmup_for`) judges the policy rather than the cut.
* **oracle_gpu_hours**: `evaluate.oracle`, a fluid lower bound for a fleet reaching 99 % SLO
  attainment: per minute, the fewest replicas per role whose modelled capacity covers that
  minute's prompt and output tokens/s and, for prefill, every burst of arrivals by its TTFT
  deadlines (all but 1 % of the trace's requests may miss, wherever that saves most), with no
  cold start and perfect foresight (its docstring has the model).
  **oracle_throughput_gpu_hours**: the minute-mean throughput part alone (the bound before
  bursts were counted); **oracle_all_requests_gpu_hours**: the SLO-aware bound with no misses.
* **scale events, reversals** (a role's change opposite to its previous one within 10 min),
  **preemptions** (vLLM recompute evictions), and the **prefix-cache hit rate** (tokens; for
  traces with block hashes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from autoscaler import errors
from autoscaler.forecast import refit
from autoscaler.loop import DecisionHook, Loop, TickReport
from autoscaler.policy.load import load_policy_file
from autoscaler.profile import BUILTIN_PROFILES, Profile, builtin, load_profile
from autoscaler.sim import baselines, yardsticks
from autoscaler.sim.backends import SimActuator, SimMetricsSource
from autoscaler.sim.engine import ROUTING_POLICIES, Simulation
from autoscaler.sim.evaluate import (
    SLO,
    Evaluation,
    Oracle,
    OutcomeTally,
    evaluate,
    judged_mask,
    leading_skip_s,
    oracle_of_stream,
    request_outcome,
    warmup_spans,
)
from autoscaler.sim.traces import Trace, TraceStream, load_trace
from autoscaler.spec import PolicyFile, PoolSpec
from autoscaler.types import Role

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_INVALID = 2

DEFAULT_POLICY_FILE = "llama-8b-slo.yaml"
# The package keeps a copy of policies/llama-8b-slo.yaml so an installed wheel has a default;
# tests/sim/test_backtest.py keeps the two identical.
PACKAGED_POLICY = Path(__file__).with_name("default_policy.yaml")
REPO_ROOT = Path(__file__).resolve().parents[2]

# Prometheus rate()/histogram window of the simulated source. 60 s holds 12 scrapes at the
# default 5 s scrape interval (Prometheus wants >= 4) and reacts twice as fast as the 120 s the
# in-cluster source defaults to for 15-30 s scrapes.
DEFAULT_WINDOW_S = 60.0
# After the last arrival the controller keeps ticking until every request finished; this bounds
# that tail (a stuck run still ends): the longest request of the Azure traces takes < 1 min.
DRAIN_LIMIT_S = 3600.0
# The oracle's and the plots' time bins.
BIN_S = 60.0
# A reversal: the opposite change of the same role within this window (10 min, §3.2).
REVERSAL_WINDOW_S = 600.0


def default_policy_path() -> Path:
    """policies/llama-8b-slo.yaml of the source tree when present, else the packaged copy."""
    repo = REPO_ROOT / "policies" / DEFAULT_POLICY_FILE
    return repo if repo.is_file() else PACKAGED_POLICY


def resolve_profile_arg(value: str | Path | None) -> Profile:
    """A built-in profile name, a profile YAML path, or the default (llama-8b-h100)."""
    if value is None:
        return builtin("llama-8b-h100")
    text = str(value)
    if text in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[text]
    path = Path(text)
    if not path.exists() and path.suffix not in (".yaml", ".yml") and "/" not in text:
        known = ", ".join(sorted(BUILTIN_PROFILES))
        msg = f"--profile {text!r}: neither a built-in profile ({known}) nor a file"
        raise errors.ConfigError([msg])
    return load_profile(path)


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """How a trace is replayed and judged (the CLI flags)."""

    tick_s: float = baselines.HPA_SYNC_PERIOD_S
    scrape_s: float = 5.0
    window_s: float = DEFAULT_WINDOW_S
    slo: SLO = field(default_factory=SLO)
    # The attainment best-static and hindsight must reach (and the oracle's).
    target: float = yardsticks.DEFAULT_TARGET
    # How requests pick a replica, in every run alike (the policy's and the baselines').
    routing: str = "least-loaded"
    # Judge from this many seconds on, in every run alike: requests arriving before it and the
    # GPU-seconds held before it are left out. A trace cut from running traffic starts at full
    # load, where a fixed fleet is warm at 0 and a controller run starts at min_replicas and
    # needs a cold start to catch up: without a warm-up the first minutes judge that cut, not
    # the policy. `warmup_for` gives the usual value (one cold start and one rate window).
    warmup_s: float = 0.0

    @property
    def skip(self) -> tuple[tuple[float, float], ...]:
        """The spans not judged: the warm-up from 0 (none when it is 0)."""
        return warmup_spans((0.0,), self.warmup_s)

    def __post_init__(self) -> None:
        if not (self.warmup_s >= 0 and math.isfinite(self.warmup_s)):
            raise errors.ConfigError([f"--warmup-s must be >= 0, got {self.warmup_s}"])
        if self.routing not in ROUTING_POLICIES:
            known = " | ".join(ROUTING_POLICIES)
            raise errors.ConfigError([f"--routing must be {known}, got {self.routing!r}"])
        if not (self.tick_s > 0 and self.scrape_s > 0 and self.window_s >= self.scrape_s):
            msg = (
                f"--tick-s {self.tick_s} and --scrape-s {self.scrape_s} must be > 0 and the rate "
                f"window {self.window_s} s at least one scrape"
            )
            raise errors.ConfigError([msg])


@dataclass(slots=True)
class Run:
    """One simulated run: the cluster at the end and its evaluation."""

    name: str
    kind: str  # "policy" or the baseline's name
    description: str
    sim: Simulation
    pool: str
    evaluation: Evaluation
    replicas: dict[Role, int] = field(default_factory=dict)  # static-peak's fixed fleet
    wall_s: float = 0.0
    # Hindsight re-planned for this run's own attainment (controller runs, with hindsight):
    # (the attainment its verifying replay met, its GPU-hours). At the target alone a run that
    # meets more than hindsight is charged for its extra attainment, one that meets less is
    # credited with it; the comparison is at equal attainment.
    hindsight_equal: tuple[float, float] | None = None


@dataclass(slots=True)
class Backtest:
    """Every run of one backtest on one trace."""

    trace_name: str
    trace: Trace | TraceStream
    profile: Profile
    config: ReplayConfig
    horizon_s: float
    oracle: Oracle
    runs: dict[str, Run]
    yardsticks: yardsticks.Yardsticks | None = None
    # Requests, last arrival, and requests and prompt tokens per BIN_S (the report's load).
    requests: int = 0
    duration_s: float = 0.0
    requests_by_bin: np.ndarray[tuple[int], np.dtype[np.int64]] | None = None
    prompt_tokens_by_bin: np.ndarray[tuple[int], np.dtype[np.int64]] | None = None

    @property
    def oracle_gpu_hours(self) -> float:
        return self.oracle.gpu_hours


def warmup_for(profile: Profile, config: ReplayConfig) -> float:
    """The warm-up after which every run has had the chance to reach its size: the profile's
    cold start (a replica requested at 0 serves from then) plus one rate window (the metrics
    the first decision reads)."""
    return profile.cold_start_s + config.window_s


def horizon_of(trace: Trace | TraceStream) -> float:
    """The billed span: the last arrival rounded up to a whole minute (the oracle's bins)."""
    return max(1, math.ceil((trace.duration_s + 1e-9) / BIN_S)) * BIN_S


def single_pool(policy: PolicyFile, pool: str | None = None) -> tuple[PolicyFile, PoolSpec]:
    """The policy restricted to the pool the trace feeds (the first one unless named): the Loop
    then observes only Deployments the simulation has."""
    spec = policy.pools[0] if pool is None else policy.pool(pool)
    if len(policy.pools) == 1:
        return policy, spec
    return policy.model_copy(update={"pools": (spec,)}), spec


@contextlib.contextmanager
def quiet_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Silence the Loop's per-tick `decision` events while replaying (thousands of lines an
    hour that the summary replaces); warnings still show. Restores the previous set-up."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        yield
    finally:
        structlog.configure(**saved)


TickCallback = Callable[[float, TickReport, Simulation], None]


async def _drive(
    sim: Simulation,
    loop: Loop,
    *,
    pool: str,
    tick_s: float,
    horizon_s: float,
    on_tick: TickCallback | None,
) -> None:
    p = sim.pool(pool)
    limit = horizon_s + DRAIN_LIMIT_S
    n = 0
    while True:
        n += 1
        # Multiply, not accumulate: 240 additions of 15.0 are exact, 0.1-second ticks are not.
        t = n * tick_s
        sim.advance_to(t)
        report = await loop.tick(t)
        if on_tick is not None:
            on_tick(t, report, sim)
        if t >= horizon_s and p.arrivals_done and p.outstanding() == 0:
            return
        if t >= limit:
            return


def run_controller(
    name: str,
    policy: PolicyFile,
    trace: Trace | TraceStream,
    *,
    profile: Profile,
    config: ReplayConfig,
    horizon_s: float,
    kind: str = "policy",
    description: str = "",
    hooks: Sequence[DecisionHook] = (),
    on_tick: TickCallback | None = None,
) -> Run:
    """Replay `trace` into the policy's (first) pool under the real controller Loop. A
    TraceStream is read from disk as the replay goes and judged as requests finish (an
    OutcomeTally: no per-request arrays)."""
    t0 = time.perf_counter()
    policy, spec = single_pool(policy)
    if isinstance(trace, TraceStream):
        sim = Simulation.from_policy(
            policy,
            {spec.name: trace},
            profile=profile,
            routing=config.routing,
            sinks={
                spec.name: OutcomeTally(profile, config.slo, bin_s=BIN_S, start_s=config.warmup_s)
            },
        )
    else:
        sim = Simulation.from_policy(
            policy, {spec.name: tuple(trace)}, profile=profile, routing=config.routing
        )
    source = SimMetricsSource(sim, scrape_interval_s=config.scrape_s, window_s=config.window_s)
    # Forecast refits run inline in simulated time: a background thread would make the replay
    # depend on the machine's speed (and the result on the run).
    previous = refit.set_default(refit.Inline())
    try:
        loop = Loop(policy, source, SimActuator(sim), hooks=hooks)
        asyncio.run(
            _drive(
                sim,
                loop,
                pool=spec.name,
                tick_s=config.tick_s,
                horizon_s=horizon_s,
                on_tick=on_tick,
            )
        )
    finally:
        refit.set_default(previous)
    ev = evaluate(
        sim,
        spec.name,
        slo=config.slo,
        end_s=horizon_s,
        reversal_window_s=REVERSAL_WINDOW_S,
        with_oracle=False,
        skip=config.skip,
    )
    return Run(name, kind, description, sim, spec.name, ev, wall_s=time.perf_counter() - t0)


def run_static(
    name: str,
    pool: PoolSpec,
    replicas: dict[Role, int],
    trace: Trace,
    *,
    profile: Profile,
    config: ReplayConfig,
    horizon_s: float,
    description: str = "",
    on_progress: Callable[[float], None] | None = None,
) -> Run:
    """Replay `trace` on a fixed fleet (no controller)."""
    t0 = time.perf_counter()
    sim = yardsticks.static_simulation(trace, pool, profile, replicas, routing=config.routing)
    # Advance in slices only to report progress; the result does not depend on the slicing.
    step = max(config.tick_s, horizon_s / 50.0)
    t = 0.0
    while t < horizon_s:
        t = min(horizon_s, t + step)
        sim.advance_to(t)
        if on_progress is not None:
            on_progress(t)
    sim.run_until_idle(limit_s=DRAIN_LIMIT_S)
    ev = evaluate(
        sim,
        pool.name,
        slo=config.slo,
        end_s=horizon_s,
        reversal_window_s=REVERSAL_WINDOW_S,
        with_oracle=False,
        skip=config.skip,
    )
    return Run(
        name,
        "static",
        description,
        sim,
        pool.name,
        ev,
        replicas=dict(replicas),
        wall_s=time.perf_counter() - t0,
    )


def ttft_miss_share(
    pool: PoolSpec,
    replicas: dict[Role, int],
    trace: Trace,
    *,
    profile: Profile,
    config: ReplayConfig,
    after_s: float = 0.0,
) -> float:
    """The share of requests arriving after `after_s` whose TTFT misses the SLO on a fixed
    fleet: what the slo kind's prefill model predicts (benchmarks/slo_queue_model.py)."""
    run = run_static(
        "fixed", pool, replicas, trace, profile=profile, config=config, horizon_s=horizon_of(trace)
    )
    res = run.sim.pool(run.pool).results()
    out = request_outcome(res, profile, config.slo)
    keep = res.arrival_s > after_s
    return float((~out.ttft_ok[keep]).mean())


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    return out


def run_backtest(
    trace: Trace | TraceStream,
    *,
    trace_name: str,
    policies: Sequence[tuple[str, PolicyFile]],
    baseline_names: Sequence[str] = baselines.BASELINES,
    profile: Profile,
    config: ReplayConfig = ReplayConfig(),
    progress: bool = False,
    hooks: Sequence[DecisionHook] = (),
    on_tick: TickCallback | None = None,
    console: Console | None = None,
) -> Backtest:
    """Every policy, then every baseline (built from the first policy's pool), on `trace`.

    `hooks` and `on_tick` apply to the policy runs only (the demo's live view). A TraceStream
    is replayed from disk, in memory that does not grow with its requests; best-static and
    hindsight need every request's verdict in every fixed-fleet replay, so they need a Trace."""
    if not policies:
        msg = "a backtest needs at least one policy"
        raise ValueError(msg)
    unknown = [b for b in baseline_names if b not in baselines.BASELINES]
    if unknown:
        known = ", ".join(baselines.BASELINES)
        raise errors.ConfigError([f"unknown baseline {', '.join(unknown)}; known: {known}"])
    streamed = isinstance(trace, TraceStream)
    held = [b for b in baseline_names if b in (baselines.BEST_STATIC, baselines.HINDSIGHT)]
    if streamed and held:
        msg = (
            f"{trace_name}: {' and '.join(held)} need the trace in memory (they replay it once "
            "per fixed fleet and keep every request's verdict): drop --stream, or leave them "
            "out (--baseline keda-queue)"
        )
        raise errors.ConfigError([msg])
    if isinstance(trace, TraceStream):
        load = trace.summary(BIN_S)
        requests = load.requests
        by_bin, tok_by_bin = load.requests_by_bin, load.prompt_tokens_by_bin
    else:
        requests = len(trace.arrival_s)
        nb = int(trace.duration_s // BIN_S) + 1
        bins = (trace.arrival_s // BIN_S).astype(np.int64)
        by_bin = np.bincount(bins, minlength=nb)
        tok_by_bin = np.bincount(bins, weights=trace.prompt_tokens, minlength=nb).astype(np.int64)
    if requests == 0:
        raise errors.ConfigError([f"{trace_name}: the trace has no requests"])
    horizon = horizon_of(trace)
    if config.warmup_s >= trace.duration_s:
        msg = (
            f"{trace_name}: --warmup-s {config.warmup_s:g} leaves nothing to judge: the last "
            f"request arrives at {trace.duration_s:g} s"
        )
        raise errors.ConfigError([msg])
    base_policy, base_pool = single_pool(policies[0][1])
    orc = oracle_of_stream(
        _judged(trace if isinstance(trace, TraceStream) else [tuple(trace)], config.skip),
        profile,
        disaggregated=Role.AGGREGATED not in base_pool.roles,
        slo=config.slo,
        bin_s=BIN_S,
        attainment=config.target,
    )
    runs: dict[str, Run] = {}
    with _Progress(enabled=progress, console=console) as prog:
        for name, pol in policies:
            key = _unique(name, set(runs))
            tick = prog.task(key, horizon)

            def cb(t: float, rep: TickReport, sim: Simulation, _tick: Any = tick) -> None:
                _tick(t)
                if on_tick is not None:
                    on_tick(t, rep, sim)

            runs[key] = run_controller(
                key,
                pol,
                trace,
                profile=profile,
                config=config,
                horizon_s=horizon,
                description=f"policy file {name}",
                hooks=hooks,
                on_tick=cb,
            )
        for b in baseline_names:
            key = _unique(b, set(runs))
            tick = prog.task(key, horizon)
            if b == baselines.KEDA_QUEUE:
                kp = baselines.keda_queue_policy(base_policy, base_pool.name)
                runs[key] = run_controller(
                    key,
                    kp,
                    trace,
                    profile=profile,
                    config=config,
                    horizon_s=horizon,
                    kind=b,
                    description=(
                        "KEDA Prometheus scaler, sum(vllm:num_requests_waiting) threshold "
                        f"{baselines.KEDA_QUEUE_THRESHOLD:g} per replica, HPA defaults "
                        "(15 s sync, 10 % tolerance, 0/300 s up/down stabilization, "
                        "+max(4 pods, 100 %)/15 s, -100 %/15 s), one HPA per role"
                    ),
                    on_tick=_progress_only(tick),
                )
        ys = None
        wanted = [b for b in baseline_names if b in (baselines.BEST_STATIC, baselines.HINDSIGHT)]
        if wanted and not isinstance(trace, TraceStream):
            tick = prog.task("yardsticks", horizon)
            ys = yardsticks.compute(
                trace,
                base_pool,
                profile,
                slo=config.slo,
                horizon_s=horizon,
                orc=orc,
                target=config.target,
                with_hindsight=baselines.HINDSIGHT in wanted,
                on_replay=lambda _what: tick(0.0),
                routing=config.routing,
                skip=config.skip,
            )
            if ys.hindsight is not None:
                for run in runs.values():
                    # Controller runs only: best-static and hindsight are the yardsticks.
                    eq = yardsticks.hindsight_at(ys, run.evaluation.slo_attainment)
                    tick(0.0)
                    if eq is not None:
                        run.hindsight_equal = (
                            eq.evaluation.slo_attainment,
                            eq.evaluation.gpu_hours,
                        )
            for b in wanted:
                key = _unique(b, set(runs))
                runs[key] = _yardstick_run(
                    key, b, ys, base_pool.name, config=config, horizon=horizon
                )
    return Backtest(
        trace_name,
        trace,
        profile,
        config,
        horizon,
        orc,
        runs,
        ys,
        requests=requests,
        duration_s=trace.duration_s,
        requests_by_bin=by_bin,
        prompt_tokens_by_bin=tok_by_bin,
    )


def _judged(
    chunks: Iterable[Sequence[Any]], skip: Sequence[tuple[float, float]]
) -> Iterator[Sequence[Any]]:
    """The (arrival, prompt, output) chunks of the judged requests, arrivals counted from where
    judging starts (for the oracle, whose bins start at 0)."""
    if not skip:
        yield from chunks
        return
    lead = leading_skip_s(skip)
    for c in chunks:
        arr = np.asarray(c[0])
        keep = judged_mask(arr, skip)
        if keep.any():
            yield (arr[keep] - lead, np.asarray(c[1])[keep], np.asarray(c[2])[keep])


def _yardstick_run(
    key: str,
    kind: str,
    ys: yardsticks.Yardsticks,
    pool: str,
    *,
    config: ReplayConfig,
    horizon: float,
) -> Run:
    """The best-static or hindsight replay as a Run (same evaluation as every other run)."""
    if kind == baselines.HINDSIGHT:
        hs = ys.hindsight
        assert hs is not None  # computed when asked for
        sim = hs.sim
        peak = {r: int(v.max()) for r, v in hs.levels.items()}
        desc = (
            f"clairvoyant per-minute schedule at {ys.target:.0%} attainment with the real cold "
            f"start (per-bin miss tables from fixed-fleet replays, a DP billing each added "
            f"replica its cold start, verified by replay; round {hs.rounds}); peak "
            + ", ".join(f"{r.value} {n}" for r, n in peak.items())
        )
        reps: dict[Role, int] = {}
    else:
        point = ys.best_static or max(ys.frontier, key=lambda p: p.attainment)
        found = ys.best_static_sim
        if found is not None:
            sim = found
        else:
            sim, _ = yardsticks.replay_fixed(
                ys.trace,
                ys.pool,
                ys.profile,
                point.replicas,
                slo=config.slo,
                horizon_s=horizon,
                routing=ys.routing,
            )
        reps = dict(point.replicas)
        desc = (
            f"cheapest fixed fleet reaching {ys.target:.0%} attainment, found by replay: "
            f"{point.label()}"
            if ys.best_static is not None
            else f"no fixed fleet scanned reached {ys.target:.0%}; the best: {point.label()}"
        )
    ev = evaluate(
        sim, pool, slo=config.slo, end_s=horizon, reversal_window_s=REVERSAL_WINDOW_S,
        with_oracle=False, skip=config.skip,
    )  # fmt: skip
    return Run(key, kind, desc, sim, pool, ev, replicas=reps)


def _progress_only(update: Callable[[float], None]) -> TickCallback:
    def cb(t: float, _report: TickReport, _sim: Simulation) -> None:
        update(t)

    return cb


# Without a terminal, one progress line per run at most this often (wall time), plus one when
# the run ends: a CI log shows a long replay advancing, without a line per tick.
PROGRESS_LINE_EVERY_S = 10.0


class _Progress:
    """A rich progress bar per run (simulated time) on a terminal, plain lines on stderr
    otherwise, or nothing."""

    def __init__(self, *, enabled: bool, console: Console | None) -> None:
        self.enabled = enabled
        self.console = console
        self._bar: Any = None
        self._lines = enabled and (console is None or not console.is_terminal)

    def __enter__(self) -> _Progress:
        if self.enabled and not self._lines:
            from rich.progress import (  # noqa: PLC0415 - rich only when a bar is shown
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description:<16}"),
                BarColumn(),
                TextColumn("{task.fields[sim]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def task(self, name: str, total_s: float) -> Callable[[float], None]:
        if self._lines:
            return _line_progress(name, total_s)
        if self._bar is None:
            return lambda _t: None
        bar = self._bar
        tid = bar.add_task(name, total=total_s, sim="")

        def update(t: float) -> None:
            bar.update(tid, completed=min(t, total_s), sim=f"{t / 60:5.1f} min simulated")

        return update


def _line_progress(name: str, total_s: float) -> Callable[[float], None]:
    start = time.monotonic()
    last = [start]
    done = [False]

    def update(t: float) -> None:
        now = time.monotonic()
        end = t >= total_s
        if done[0] or (now - last[0] < PROGRESS_LINE_EVERY_S and not end):
            return
        last[0] = now
        done[0] = end
        pct = 100.0 * min(t, total_s) / total_s if total_s > 0 else 100.0
        print(
            f"backtest: {name}: {min(t, total_s) / 60:.1f} of {total_s / 60:.1f} min simulated "
            f"({pct:.0f} %), {now - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    return update


# --- reporting -------------------------------------------------------------------------------


def _f(x: float) -> float | None:
    """JSON-safe float (NaN -> null)."""
    return None if math.isnan(x) else float(x)


def run_summary(run: Run) -> dict[str, Any]:
    ev = run.evaluation
    by_role = ev.gpu_hours_by_role
    return {
        "kind": run.kind,
        "description": run.description,
        "slo_attainment": _f(ev.slo_attainment),
        "ttft_attainment": _f(ev.ttft_attainment),
        "itl_attainment": _f(ev.itl_attainment),
        "ttft_p50_s": _f(ev.ttft_p50_s),
        "ttft_p99_s": _f(ev.ttft_p99_s),
        "itl_p50_s": _f(ev.itl_p50_s),
        "itl_p99_s": _f(ev.itl_p99_s),
        "gpu_hours": ev.gpu_hours,
        "gpu_hours_prefill": by_role.get(Role.PREFILL, 0.0),
        "gpu_hours_decode": by_role.get(Role.DECODE, 0.0),
        "gpu_hours_aggregated": by_role.get(Role.AGGREGATED, 0.0),
        "scale_events": ev.scale_events,
        "reversals": ev.reversals,
        "preemptions": ev.preemptions,
        "prefix_cache_hit_rate": _f(ev.prefix_cache_hit_rate),
        "finished": ev.finished,
        "max_replicas": {
            r.value: int(run.sim.timeline(run.pool, r).replicas.max()) for r in by_role
        },
        "static_replicas": {r.value: n for r, n in run.replicas.items()} or None,
        "wall_s": round(run.wall_s, 3),
    }


def hindsight_gpu_hours(bt: Backtest) -> float | None:
    """GPU-hours of the verified hindsight schedule, if it was computed."""
    ys = bt.yardsticks
    if ys is None or ys.hindsight is None:
        return None
    return ys.hindsight.evaluation.gpu_hours


def vs_yardsticks(bt: Backtest, run: Run) -> dict[str, Any]:
    """A run against the achievable yardsticks: GPU-h / hindsight's at the target, GPU-h /
    hindsight's re-planned for the run's own attainment (equal attainment), and the best
    attainment a fixed fleet reaches for no more GPU-hours (the static frontier at the run's
    GPU-h)."""
    hs = hindsight_gpu_hours(bt)
    g = run.evaluation.gpu_hours
    ys = bt.yardsticks
    front = ys.frontier_attainment_at(g) if ys is not None else math.nan
    eq = run.hindsight_equal
    return {
        "gpu_hours_vs_hindsight": g / hs if hs else None,
        "gpu_hours_vs_hindsight_at_equal_attainment": g / eq[1] if eq and eq[1] > 0 else None,
        "hindsight_at_equal_attainment": (
            {"slo_attainment": eq[0], "gpu_hours": eq[1]} if eq is not None else None
        ),
        "static_frontier_attainment_at_gpu_hours": _f(front),
    }


def yardsticks_json(bt: Backtest) -> dict[str, Any] | None:
    ys = bt.yardsticks
    if ys is None:
        return None
    hs = ys.hindsight
    return {
        "target_attainment": ys.target,
        "replays": ys.replays,
        "scanned_levels": {r.value: lv for r, lv in ys.levels.items()},
        "best_static": None
        if ys.best_static is None
        else {
            "replicas": {r.value: n for r, n in ys.best_static.replicas.items()},
            "gpu_hours": ys.best_static.gpu_hours,
            "slo_attainment": ys.best_static.attainment,
        },
        "static_frontier": [
            {
                "replicas": {r.value: n for r, n in p.replicas.items()},
                "gpu_hours": p.gpu_hours,
                "slo_attainment": p.attainment,
                "verified": p.verified,
            }
            for p in ys.frontier
        ],
        "hindsight": None
        if hs is None
        else {
            "gpu_hours": hs.evaluation.gpu_hours,
            "slo_attainment": hs.evaluation.slo_attainment,
            "planned_misses": hs.planned_misses,
            "forced_start_misses": hs.forced_misses,
            "miss_budget": hs.budget,
            "rounds": hs.rounds,
            "replicas_per_bin": {r.value: v.tolist() for r, v in hs.levels.items()},
        },
        "method": (
            "static frontier: each role scanned alone (the other at twice the fluid bound's "
            "no-miss peak + 2), fleets estimated as the AND of per-role SLO verdicts, the fleets "
            "around best-static replayed jointly (verified); best-static: the cheapest fleet "
            "whose joint replay reaches target_attainment; hindsight: per-minute miss tables "
            "from those replays, a DP over minutes billing each added replica its cold start "
            "(requested one cold start before its minute), the miss price bisected to the "
            "budget, then a verifying replay of the schedule (autoscaler/sim/yardsticks.py)"
        ),
        "notes": ys.notes,
    }


def summary_json(bt: Backtest) -> dict[str, Any]:
    """The `--json` document (the keys of the issue's shape, plus context)."""
    slo = bt.config.slo
    return {
        "trace": bt.trace_name,
        "requests": bt.requests,
        "duration_s": bt.duration_s,
        "horizon_s": bt.horizon_s,
        "profile": bt.profile.name,
        "slo": {
            "ttft_floor_s": slo.ttft_floor_s,
            "ttft_slowdown": slo.ttft_slowdown,
            "itl_mean_s": slo.itl_mean_s,
        },
        "routing": bt.config.routing,
        "prefix_cache": (
            bt.trace.summary(BIN_S).hashed
            if isinstance(bt.trace, TraceStream)
            else bt.trace.block_hashes is not None
        ),
        "tick_s": bt.config.tick_s,
        "scrape_s": bt.config.scrape_s,
        "warmup_s": bt.config.warmup_s,
        "rate_window_s": bt.config.window_s,
        "oracle_gpu_hours": bt.oracle_gpu_hours,
        "oracle_throughput_gpu_hours": bt.oracle.throughput_gpu_hours,
        "oracle_all_requests_gpu_hours": bt.oracle.all_requests_gpu_hours,
        "oracle_attainment": bt.oracle.attainment,
        "oracle_miss_budget": bt.oracle.miss_budget,
        "oracle_method": (
            "fluid lower bound for a fleet reaching oracle_attainment: per 60 s bin, the fewest "
            "replicas per role (>= 1) whose modelled capacity covers the bin's prompt tokens/s "
            "(compute-bound full steps) and output tokens/s (largest batch within the ITL SLO "
            "and KV), and, for prefill, every window of arrivals within the bin by the latest "
            "TTFT deadline (minus the KV transfer) of its requests, except for at most "
            "oracle_miss_budget requests over the trace placed where they save most; no cold "
            "start, perfect foresight (autoscaler/sim/evaluate.py oracle). "
            "oracle_throughput_gpu_hours: the throughput part alone (no TTFT deadlines); "
            "oracle_all_requests_gpu_hours: no request may miss"
        ),
        "gpu_hours_method": (
            "replicas from request (cold start included) to stop (drain included), over "
            "[warmup_s, horizon_s): the last arrival rounded up to a minute, as the oracle; "
            "requests arriving before warmup_s are not judged"
        ),
        "oracle_note": "a loose bound: fluid, no cold start, EDF order, work split freely",
        "yardsticks": yardsticks_json(bt),
        "runs": {
            name: {**run_summary(run), **vs_yardsticks(bt, run)} for name, run in bt.runs.items()
        },
    }


def summary_table(bt: Backtest) -> Table:
    from rich.table import Table  # noqa: PLC0415

    n = bt.requests
    bnd = bt.oracle
    table = Table(
        title=(
            f"{bt.trace_name}: {n:,} requests over {bt.duration_s / 60:.1f} min, "
            f"profile {bt.profile.name}, routing {bt.config.routing}"
            + (
                f", judged from {bt.config.warmup_s:g} s (warm-up)"
                if bt.config.warmup_s > 0
                else ""
            )
        ),
        caption=(
            f"SLO: TTFT <= max({bt.config.slo.ttft_floor_s:g} s, {bt.config.slo.ttft_slowdown:g}"
            f" x idle prefill), mean ITL <= {bt.config.slo.itl_mean_s * 1000:g} ms. "
            "GPU-h over the trace's minutes. x hindsight: GPU-h over the cheapest clairvoyant "
            f"schedule with the real cold start (verified by replay) at {bt.config.target:.0%}"
            " / re-planned for the run's own attainment (equal att.); static@GPU-h: the best "
            "attainment of a fixed fleet costing no more. oracle = per-minute fluid lower bound "
            f"at {bnd.attainment:.0%} attainment, no cold start, a loose bound (throughput part "
            f"alone: {bnd.throughput_gpu_hours:.2f} GPU-h; no misses: "
            f"{bnd.all_requests_gpu_hours:.2f})."
        ),
    )
    for col in ("run", "SLO att.", "TTFT p50/p99 s", "ITL p50/p99 ms", "GPU-h (P+D)",
                "x hindsight (target / equal att.)", "static@GPU-h", "x oracle", "scales",
                "reversals", "preempt.", "prefix hit"):  # fmt: skip
        table.add_column(
            col,
            justify="left" if col == "run" else "right",
            no_wrap=col in ("run", "GPU-h (P+D)"),
        )
    orc = bt.oracle_gpu_hours
    for name, run in bt.runs.items():
        ev = run.evaluation
        vs = vs_yardsticks(bt, run)
        by = ev.gpu_hours_by_role
        split = (
            f"{by.get(Role.PREFILL, 0.0):.2f}+{by.get(Role.DECODE, 0.0):.2f}"
            if Role.PREFILL in by
            else f"{ev.gpu_hours:.2f}"
        )
        table.add_row(
            name,
            f"{ev.slo_attainment:.2%}",
            f"{ev.ttft_p50_s:.3f}/{ev.ttft_p99_s:.2f}",
            f"{ev.itl_p50_s * 1000:.1f}/{ev.itl_p99_s * 1000:.1f}",
            f"{ev.gpu_hours:.2f} ({split})",
            _fmt(vs["gpu_hours_vs_hindsight"], "{:.2f}")
            + (
                f" / {vs['gpu_hours_vs_hindsight_at_equal_attainment']:.2f}"
                if vs["gpu_hours_vs_hindsight_at_equal_attainment"] is not None
                else ""
            ),
            _fmt(vs["static_frontier_attainment_at_gpu_hours"], "{:.2%}"),
            f"{ev.gpu_hours / orc:.2f}" if orc > 0 else "-",
            str(ev.scale_events),
            str(ev.reversals),
            str(ev.preemptions),
            _fmt(_f(ev.prefix_cache_hit_rate), "{:.0%}"),
        )
    reps = bt.oracle.replicas
    split = "+".join(f"{int(v.sum()) * BIN_S / 3600:.2f}" for v in reps.values())
    hs = hindsight_gpu_hours(bt)
    table.add_row(
        "oracle (loose)", "-", "-", "-", f"{orc:.2f} ({split})",
        f"{orc / hs:.2f}" if hs else "-", "-", "1.00", "-", "-", "-", "-",
    )  # fmt: skip
    return table


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or math.isnan(x) else spec.format(x)


def _per_bin(x: np.ndarray[tuple[int], np.dtype[np.int64]] | None, nb: int) -> np.ndarray:
    out = np.zeros(nb, dtype=np.float64)
    if x is not None:
        out[: min(nb, len(x))] = x[:nb]
    return out


def plot(bt: Backtest, path: Path) -> Path:
    """A PNG: load, replicas per role for every run (and the oracle), SLO misses per minute, and
    (with the yardsticks) the static frontier with every run placed on it."""
    import matplotlib as mpl  # noqa: PLC0415 - matplotlib only when a plot is asked for

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    h = bt.horizon_s
    nb = round(h / BIN_S)
    edges = np.arange(nb + 1) * BIN_S
    mins = edges[:-1] / 60.0
    arrivals = _per_bin(bt.requests_by_bin, nb)
    req = arrivals / BIN_S
    ptok = _per_bin(bt.prompt_tokens_by_bin, nb) / BIN_S
    first = next(iter(bt.runs.values()))
    roles = list(first.sim.pool(first.pool).deployments)
    ys = bt.yardsticks
    nrows = 2 + len(roles) + (1 if ys is not None and ys.frontier else 0)
    fig, axes = plt.subplots(nrows, 1, figsize=(11, 3.0 * nrows), squeeze=False)
    for row in range(1, 2 + len(roles)):
        axes[row][0].sharex(axes[0][0])
    ax = axes[0][0]
    ax.step(mins, req, where="post", color="black", label="requests/s")
    ax.set_ylabel("requests/s")
    ax2 = ax.twinx()
    ax2.step(mins, ptok, where="post", color="tab:orange", alpha=0.7, label="prompt tokens/s")
    ax2.set_ylabel("prompt tokens/s")
    ax.set_title(f"{bt.trace_name}: load (per-minute means)")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [str(ln.get_label()) for ln in lines], loc="upper left", fontsize=8)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, role in enumerate(roles):
        ax = axes[1 + i][0]
        for j, (name, run) in enumerate(bt.runs.items()):
            tl = run.sim.timeline(run.pool, role)
            t = np.append(tl.t, h) / 60.0
            r = np.append(tl.replicas, tl.replicas[-1])
            ax.step(t, r, where="post", label=name, color=colors[j % len(colors)],
                    linewidth=1.6 if j == 0 else 1.1)  # fmt: skip
        o = bt.oracle.replicas[role]
        ax.step(np.append(mins, h / 60.0), np.append(o, o[-1]), where="post", color="grey",
                linestyle=":", label="oracle")  # fmt: skip
        ax.set_ylabel(f"{role.value} replicas")
        ax.set_title(f"{role.value}: replicas requested (GPUs held, cold start included)")
        ax.legend(loc="upper left", fontsize=8)
        ax.set_ylim(bottom=0)
    ax = axes[1 + len(roles)][0]
    for j, (name, run) in enumerate(bt.runs.items()):
        pool = run.sim.pool(run.pool)
        if isinstance(pool.sink, OutcomeTally):
            miss = arrivals - pool.sink.met_by_bin(nb)
        else:
            res = pool.results()
            out = request_outcome(res, bt.profile, bt.config.slo)
            miss = np.histogram(res.arrival_s[~out.met], bins=edges)[0]
        ax.step(mins, miss, where="post", label=f"{name} ({run.evaluation.slo_attainment:.2%} met)",
                color=colors[j % len(colors)])  # fmt: skip
    ax.set_ylabel("SLO misses / min")
    ax.set_xlabel("trace time (min)")
    ax.set_title("requests missing the SLO, by arrival minute")
    ax.legend(loc="upper left", fontsize=8)
    if nrows > 2 + len(roles) and ys is not None:
        ax = axes[-1][0]
        fx = [p.gpu_hours for p in ys.frontier]
        fy = [p.attainment * 100 for p in ys.frontier]
        ax.step(fx, fy, where="post", color="grey", label="static frontier (fixed fleets)")
        for p in ys.frontier:
            ax.annotate(p.label(), (p.gpu_hours, p.attainment * 100), fontsize=7,
                        color="black" if p.verified else "grey")  # fmt: skip
        for j, (name, run) in enumerate(bt.runs.items()):
            ev = run.evaluation
            ax.plot([ev.gpu_hours], [ev.slo_attainment * 100], "o", label=name,
                    color=colors[j % len(colors)])  # fmt: skip
        ax.axhline(ys.target * 100, color="grey", linestyle=":", linewidth=0.8)
        lo = min([*fy, *(r.evaluation.slo_attainment * 100 for r in bt.runs.values())])
        ax.set_ylim(max(0.0, lo - 2), 100.5)
        ax.set_xlabel("GPU-hours")
        ax.set_ylabel("SLO attainment %")
        ax.set_title("runs against the static frontier (up and left is better)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- the command -----------------------------------------------------------------------------


def _policies(paths: Sequence[Path] | None) -> list[tuple[str, PolicyFile]]:
    chosen = list(paths) if paths else [default_policy_path()]
    return [(p.stem, load_policy_file(p)) for p in chosen]


def _opt(args: argparse.Namespace, name: str, default: float) -> float:
    value = getattr(args, name, None)
    return default if value is None else float(value)


def _config(args: argparse.Namespace) -> ReplayConfig:
    d = SLO()
    slo = SLO(
        ttft_floor_s=_opt(args, "ttft_floor_s", d.ttft_floor_s),
        ttft_slowdown=_opt(args, "ttft_slowdown", d.ttft_slowdown),
        itl_mean_s=_opt(args, "itl_mean_s", d.itl_mean_s),
    )
    scrape = _opt(args, "scrape_s", 5.0)
    target = _opt(args, "target_attainment", yardsticks.DEFAULT_TARGET)
    if not 0.0 < target <= 1.0:
        raise errors.ConfigError([f"--target-attainment must be in (0, 1], got {target}"])
    return ReplayConfig(
        target=target,
        tick_s=_opt(args, "tick_s", baselines.HPA_SYNC_PERIOD_S),
        scrape_s=scrape,
        window_s=_opt(args, "window_s", max(DEFAULT_WINDOW_S, scrape)),
        slo=slo,
        routing=getattr(args, "routing", None) or "least-loaded",
        warmup_s=_opt(args, "warmup_s", 0.0),
    )


def check_output(path: Path | None, flag: str) -> None:
    """An output file's directory must exist and be writable, checked before a long run: a
    typo must not create directories silently nor end an hour's replay in a traceback."""
    if path is None:
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise errors.ConfigError([f"{flag} {path}: directory {parent} does not exist"])
    if Path(path).is_dir():
        raise errors.ConfigError([f"{flag} {path}: is a directory, not a file"])
    # Create a file there, as the write will: access(2) says yes to root even where no file can
    # be created (/proc, a read-only mount).
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".pd-autoscaler-probe-"):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        msg = f"{flag} {path}: directory {parent} is not writable ({why})"
        raise errors.ConfigError([msg]) from None


def check_profile(policies: Sequence[tuple[str, PolicyFile]], profile: Profile) -> None:
    """GPU-hours count the profile's GPUs per replica; a policy whose roles declare another
    count (a TP4 policy under a 1-GPU profile) would be billed in the wrong unit, silently."""
    problems = []
    for name, pol in policies:
        for pool in pol.pools:
            for role, spec in pool.roles.items():
                if spec.gpus_per_replica != profile.gpus_per_replica:
                    problems.append(
                        f"policy {name}: pools.{pool.name}.roles.{role.value}.gpus_per_replica "
                        f"is {spec.gpus_per_replica} but profile {profile.name} models "
                        f"{profile.gpus_per_replica} GPU(s) per replica; pass --profile with a "
                        f"matching profile (built-in: "
                        + ", ".join(
                            f"{n} ({p.gpus_per_replica})"
                            for n, p in sorted(BUILTIN_PROFILES.items())
                        )
                        + ")"
                    )
    if problems:
        raise errors.ConfigError(problems)


def _console(stderr: bool = False) -> Console:
    from rich.console import Console  # noqa: PLC0415

    # Piped output gets 80 columns by default: too narrow for the summary table.
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=max(probe.width, 160))


def main(args: argparse.Namespace) -> int:
    """Run the backtest the flags describe; print the table; write --json / --plot."""
    try:
        profile = resolve_profile_arg(getattr(args, "profile", None))
        config = _config(args)
        policies = _policies(getattr(args, "policy", None))
        check_profile(policies, profile)
        json_out = getattr(args, "json_out", None)
        plot_out = getattr(args, "plot", None)
        check_output(json_out, "--json")
        check_output(plot_out, "--plot")
        names = getattr(args, "baseline", None)
        trace: Trace | TraceStream
        if getattr(args, "stream", False):
            if getattr(args, "rate_scale", 1.0) != 1.0:
                msg = "--rate-scale needs the trace in memory (it re-sorts arrivals); no --stream"
                raise errors.ConfigError([msg])
            trace = TraceStream(
                args.trace,
                speedup=getattr(args, "speedup", 1.0),
                start_s=getattr(args, "start_s", None) or 0.0,
                duration_s=getattr(args, "duration_s", None),
            )
            baseline_names = [baselines.KEDA_QUEUE] if names is None else list(names)
        else:
            trace = load_trace(
                args.trace,
                speedup=getattr(args, "speedup", 1.0),
                rate_scale=getattr(args, "rate_scale", 1.0),
                duration_s=getattr(args, "duration_s", None),
                start_s=getattr(args, "start_s", None) or 0.0,
            )
            baseline_names = list(baselines.BASELINES if names is None else names)
        # A bar on a terminal; plain progress lines otherwise (CI logs, pipes).
        show = not getattr(args, "no_progress", False)
        with quiet_logs():
            bt = run_backtest(
                trace,
                trace_name=Path(args.trace).name,
                policies=policies,
                baseline_names=baseline_names,
                profile=profile,
                config=config,
                progress=show,
                console=_console(stderr=True) if show else None,
            )
    except errors.ConfigError as exc:
        for line in exc.problems:
            print(f"backtest: {line}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:  # e.g. a request longer than the profile's KV capacity
        print(f"backtest: {exc}", file=sys.stderr)
        return EXIT_INVALID
    console = _console()
    console.print(summary_table(bt))
    try:
        if json_out is not None:
            text = json.dumps(summary_json(bt), indent=2) + "\n"
            Path(json_out).write_text(text, encoding="utf-8")
            console.print(f"JSON: {json_out}")
        if plot_out is not None:
            console.print(f"plot: {plot(bt, Path(plot_out))}")
    except OSError as exc:  # checked up front; the directory can still go away meanwhile
        print(f"backtest: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK
