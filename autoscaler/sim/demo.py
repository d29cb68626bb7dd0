"""`pd-autoscaler demo`: the real controller Loop on a simulated cluster, replaying traffic fast.

It is the backtest (`backtest.run_backtest`) with a live hook on the policy's Loop: every tick
updates a view of the latest decision per role with its driver and clipping rules, and every
scale change is added to a feed (time, pool/role, current -> desired, driver, clipped-by). The
policy's replay is paced to about `--seconds` of wall time so the decisions can be read; the
baselines then run at full speed, and the summary table, JSON and plot close the demo.

Traffic: `--trace`, else $PD_AUTOSCALER_TRACE, else the shared Azure *code* trace at
../shared/traces/ (relative to the repository root) when present, else a generated hour (see
`generated_day`). The first line says which. The code service is the bursty one (12x
peak-to-mean over 10 s): it makes the controller scale, where one prefill and one decode replica
carry the whole conversation hour.

Without the shared trace the demo does not imitate those bursts: what a reactive controller
does well is follow load that rises and falls, so the generated hour is a day of the Azure
conversation service's shape (fitted lengths and burstiness, workload.py) at
GENERATED_MEAN_RPS, whose rate follows the daily cycle fitted to ServeGen (peak/trough 2.55)
compressed into an hour: 24 steps of 150 s, one per hour of the day. Compressing makes every
ramp 24x steeper than a real day's, which favours no one: the baselines and yardsticks
(best-static, hindsight) replay the same trace.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoscaler import errors
from autoscaler.policy.load import load_policy_file
from autoscaler.sim import backtest
from autoscaler.sim.traces import Trace, load_trace
from autoscaler.sim.workload import AZURE_CONV, DAY_S, WorkloadSpec, generate

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from autoscaler.loop import TickReport
    from autoscaler.sim.engine import Simulation
    from autoscaler.spec import PolicyFile
    from autoscaler.types import Decision

TRACE_ENV = "PD_AUTOSCALER_TRACE"
SHARED_TRACE = backtest.REPO_ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_code.csv"
# Wall time the policy's replay is stretched to: long enough to read the feed. The baselines,
# yardsticks and plot come on top: 10 CPU-s for the whole demo on the Azure code hour, 40 CPU-s
# on the generated hour (measured 2026-11-26 on a shared 2-core machine, /usr/bin/time).
DEFAULT_SECONDS = 20.0
# The generated stand-in for the trace: one hour, like the Azure traces, holding a day.
GENERATED_S = 3600.0
# Mean request rate of the generated day: its peak (x1.44) needs more than one prefill replica
# of the default profile, its trough (x0.56) less than one.
GENERATED_MEAN_RPS = 15.0
FEED_LINES = 14
# Without a live view (not a terminal), the latest decision per role is printed this often.
STATUS_EVERY_S = 600.0


def pick_trace(args: argparse.Namespace) -> tuple[Trace, str, str]:
    """(trace, short name, one line saying where it came from)."""
    duration = getattr(args, "duration_s", None)
    explicit = getattr(args, "trace", None)
    env = os.environ.get(TRACE_ENV)
    for path, why in ((explicit, "--trace"), (env, f"${TRACE_ENV}")):
        if path:
            tr = load_trace(Path(path), duration_s=duration)
            return tr, Path(path).name, f"trace: {path} (from {why})"
    if SHARED_TRACE.is_file():
        tr = load_trace(SHARED_TRACE, duration_s=duration)
        return tr, SHARED_TRACE.name, f"trace: {SHARED_TRACE} (the shared Azure code trace)"
    span = GENERATED_S if duration is None else float(duration)
    tr = generated_day(AZURE_CONV, GENERATED_MEAN_RPS, span_s=GENERATED_S, seed=0)
    if span < GENERATED_S:
        keep = tr.arrival_s <= span
        tr = Trace(tr.arrival_s[keep], tr.prompt_tokens[keep], tr.output_tokens[keep])
    return (
        tr,
        f"generated-day-{AZURE_CONV.name}",
        f"trace: built-in generator '{AZURE_CONV.name}' (fitted to the Azure conversation "
        f"trace) at {GENERATED_MEAN_RPS:g} req/s mean, a day's cycle (peak/trough "
        f"{(1 + AZURE_CONV.diurnal_amplitude) / (1 - AZURE_CONV.diurnal_amplitude):.2f}) "
        f"compressed into {GENERATED_S / 60:.0f} min, seed 0; {span / 60:.0f} min replayed - "
        f"no trace at {SHARED_TRACE} and ${TRACE_ENV} unset",
    )


def generated_day(spec: WorkloadSpec, mean_rps: float, *, span_s: float, seed: int) -> Trace:
    """A day of `spec` at `mean_rps` compressed into `span_s`: 24 steps, step h at the rate of
    hour h of the daily cycle (1 + a cos(2 pi (t - peak) / day) at the hour's middle)."""
    import numpy as np  # noqa: PLC0415

    step = span_s / 24
    parts = []
    for h in range(24):
        mid = (h + 0.5) * 3600.0
        shape = 1.0 + spec.diurnal_amplitude * math.cos(
            2.0 * math.pi * (mid - spec.diurnal_peak_s) / DAY_S
        )
        part = generate(spec.with_rate(mean_rps * shape), duration_s=step,
                        seed=seed * 100 + h, diurnal=False)
        parts.append((part.arrival_s + h * step, part.prompt_tokens, part.output_tokens))
    return Trace(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


@dataclass(slots=True)
class _Row:
    t: float
    pool: str
    role: str
    current: int
    desired: int
    driver: str
    clipped: str


class Feed:
    """Collects decisions from the Loop hook and shows them live (or as printed lines)."""

    def __init__(
        self, console: Console, *, live: bool, quiet: bool, pace_s_per_sim_s: float
    ) -> None:
        self.console = console
        self.live_enabled = live and not quiet
        self.quiet = quiet
        self.pace = pace_s_per_sim_s
        self.latest: dict[tuple[str, str], _Row] = {}
        self.changes: deque[_Row] = deque(maxlen=FEED_LINES)
        self.n_changes = 0
        self.t = 0.0
        self.ready: dict[str, tuple[int, int]] = {}
        self.rate = 0.0
        self._live: Any = None
        self._t0 = time.perf_counter()
        self.prev_t = 0.0
        self.tick_s = 15.0

    # The Loop hook: (decision, policy) after each tick.
    def hook(self, decision: Decision, _policy: PolicyFile) -> None:
        for pd in decision.pools.values():
            for role, rd in pd.roles.items():
                row = _Row(
                    decision.at,
                    pd.pool,
                    role.value,
                    rd.current,
                    rd.desired,
                    rd.driver,
                    ", ".join(rd.clipped_by) or "-",
                )
                self.latest[(pd.pool, role.value)] = row
                if rd.changed:
                    self.n_changes += 1
                    self.changes.append(row)
                    if not self.live_enabled and not self.quiet:
                        self.console.print(self._line(row), highlight=False, markup=False)

    def on_tick(self, t: float, _report: TickReport, sim: Simulation) -> None:
        self.t = t
        for dep in sim.deployments():
            self.ready[dep.role.value] = (len(dep.serving), len(dep.starting))
        pool = next(iter(sim.pools.values()))
        self.rate = _arrivals_per_s(pool.arrival_s, t, window_s=60.0)
        if self._live is not None:
            self._live.update(self.render())
        elif not self.quiet and t // STATUS_EVERY_S != (t - self.tick_s) // STATUS_EVERY_S:
            # Without a live view, a status line per role every few simulated minutes shows
            # the holds and their reasons too, not only the changes.
            for r in self.latest.values():
                self.console.print(self._line(r), highlight=False, markup=False)
        self.tick_s = t - self.prev_t
        self.prev_t = t
        if self.pace > 0:
            ahead = self._t0 + t * self.pace - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)

    @staticmethod
    def _line(r: _Row) -> str:
        arrow = "hold" if r.desired == r.current else "up" if r.desired > r.current else "down"
        return (
            f"{_clock(r.t)}  {r.pool}/{r.role:<8} {r.current:>2} -> {r.desired:<2} ({arrow:>4})  "
            f"{r.driver}  [clipped: {r.clipped}]"
        )

    def render(self) -> RenderableType:
        from rich.console import Group  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        roles = "   ".join(
            f"{role}: {ready} ready" + (f" + {pending} starting" if pending else "")
            for role, (ready, pending) in self.ready.items()
        )
        head = Text(
            f"t = {_clock(self.t)}   load {self.rate:.1f} req/s   {roles}   "
            f"scale changes so far: {self.n_changes}",
            style="bold",
        )
        now = Table(title="latest decision per role", expand=True, title_justify="left")
        for col in ("pool/role", "replicas", "driver (why)", "clipped by"):
            now.add_column(col, overflow="fold")
        for r in self.latest.values():
            now.add_row(f"{r.pool}/{r.role}", f"{r.current} -> {r.desired}", r.driver, r.clipped)
        feed = Table(title="scale changes (newest last)", expand=True, title_justify="left")
        for col in ("time", "pool/role", "change", "driver", "clipped by"):
            feed.add_column(col, overflow="fold")
        for r in self.changes:
            change = f"{r.current} -> {r.desired}"
            feed.add_row(_clock(r.t), f"{r.pool}/{r.role}", change, r.driver, r.clipped)
        if not self.changes:
            feed.add_row("-", "-", "none yet: every tick so far held (see the drivers)", "", "")
        return Group(head, now, feed)

    def __enter__(self) -> Feed:
        if self.live_enabled:
            from rich.live import Live  # noqa: PLC0415

            self._live = Live(self.render(), console=self.console, refresh_per_second=8)
            self._live.__enter__()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None


def _clock(t: float) -> str:
    m, s = divmod(int(t), 60)
    return f"{m // 60:d}:{m % 60:02d}:{s:02d}"


def _arrivals_per_s(arrival_s: Any, t: float, *, window_s: float) -> float:
    import numpy as np  # noqa: PLC0415

    lo, hi = np.searchsorted(arrival_s, [t - window_s, t], side="right")
    return float(hi - lo) / window_s


def main(args: argparse.Namespace) -> int:
    """Run the demo; 0 on success, 2 on bad input (one line on stderr)."""
    from rich.console import Console  # noqa: PLC0415

    console = Console(width=max(Console().width, 160))
    out_dir = Path(getattr(args, "out", None) or "out")
    try:
        trace, name, where = pick_trace(args)
        policy_path = getattr(args, "policy", None) or backtest.default_policy_path()
        policy = load_policy_file(policy_path)
        profile = backtest.resolve_profile_arg(getattr(args, "profile", None))
        backtest.check_profile([(Path(policy_path).stem, policy)], profile)
        config = backtest.ReplayConfig(routing=getattr(args, "routing", None) or "least-loaded")
    except errors.ConfigError as exc:
        for line in exc.problems:
            print(f"demo: {line}", file=sys.stderr)
        return backtest.EXIT_INVALID
    if len(trace.arrival_s) == 0:
        print(f"demo: {name}: no requests in the chosen span", file=sys.stderr)
        return backtest.EXIT_INVALID
    horizon = backtest.horizon_of(trace)
    seconds = getattr(args, "seconds", None)
    seconds = DEFAULT_SECONDS if seconds is None else float(seconds)
    quiet = bool(getattr(args, "quiet", False))
    console.print(where, highlight=False)
    console.print(
        f"policy: {policy_path}; profile {profile.name} (cold start {profile.cold_start_s:.0f} s), "
        f"routing {config.routing}; "
        f"{len(trace.arrival_s):,} requests over {trace.duration_s / 60:.1f} min, replayed in "
        + (f"~{seconds:.0f} s" if seconds > 0 else "as little time as possible"),
        highlight=False,
    )
    feed = Feed(
        console,
        live=console.is_terminal,
        quiet=quiet,
        pace_s_per_sim_s=seconds / horizon if seconds > 0 else 0.0,
    )
    t0 = time.perf_counter()
    try:
        with backtest.quiet_logs(), feed:
            bt = backtest.run_backtest(
                trace,
                trace_name=name,
                policies=[(Path(policy_path).stem, policy)],
                profile=profile,
                config=config,
                hooks=[feed.hook],
                on_tick=feed.on_tick,
            )
    except (errors.ConfigError, ValueError) as exc:
        msg = "; ".join(exc.problems) if isinstance(exc, errors.ConfigError) else str(exc)
        print(f"demo: {msg}", file=sys.stderr)
        return backtest.EXIT_INVALID
    console.print(
        f"{feed.n_changes} scale change(s) by the policy; "
        f"the baselines ran on the same trace ({time.perf_counter() - t0:.1f} s in all)",
        highlight=False,
    )
    console.print(backtest.summary_table(bt))
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "demo.json"
    import json  # noqa: PLC0415

    json_path.write_text(json.dumps(backtest.summary_json(bt), indent=2) + "\n", encoding="utf-8")
    png = backtest.plot(bt, out_dir / "demo.png")
    console.print(f"plot: {png}\nJSON: {json_path}", highlight=False)
    return backtest.EXIT_OK
