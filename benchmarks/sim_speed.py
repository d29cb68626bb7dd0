"""Simulator speed: replay the Azure conversation trace with fixed replicas, as a backtest would.

Each run builds a simulation from the trace (disaggregated 1 prefill + 2 decode replicas of
llama-8b-h100 by default), attaches a SimMetricsSource scraping every 15 s, and advances in
15 s ticks, reading every signal and the Deployment status at each tick as the controller loop
would, then runs until the last request finishes. It prints the median wall time of several
runs and requests/s. The trace is read from ../shared/traces (relative to the project root)
when present; otherwise a generated hour of the built-in azure-conv workload is used.

    .venv/bin/python benchmarks/sim_speed.py [--runs 5] [--aggregated] [--trace PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from autoscaler.metrics.source import RoleTarget
from autoscaler.policy.load import parse_policy
from autoscaler.profile import builtin
from autoscaler.sim.backends import SimActuator, SimMetricsSource
from autoscaler.sim.engine import Simulation
from autoscaler.sim.evaluate import evaluate
from autoscaler.sim.traces import Trace, load_trace
from autoscaler.sim.workload import generate
from autoscaler.spec import PolicyFile

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"

DISAGG = """
pools:
  - name: chat
    roles:
      prefill:
        deployment: {name: chat-prefill}
        max_replicas: 8
        signals: [{signal: queue_depth, target: 4}, {signal: batched_tokens, target: 0.6},
                  {signal: ttft, target: 0.5, quantile: 0.9}]
      decode:
        deployment: {name: chat-decode}
        max_replicas: 8
        signals: [{signal: kv_cache, target: 0.7}, {signal: running, target: 64},
                  {signal: itl, target: 0.05, quantile: 0.9}]
"""
AGG = """
pools:
  - name: chat
    roles:
      aggregated:
        deployment: {name: chat}
        max_replicas: 8
        signals: [{signal: queue_depth, target: 4}, {signal: kv_cache, target: 0.7},
                  {signal: ttft, target: 0.5, quantile: 0.9}]
"""


async def one_run(
    policy: PolicyFile, trace: Trace, *, replicas: dict[str, int]
) -> tuple[float, int]:
    t0 = time.perf_counter()
    pool = policy.pools[0]
    init = {role: replicas[role.value] for role in pool.roles}
    sim = Simulation.from_policy(
        policy,
        {pool.name: tuple(trace)},  # type: ignore[dict-item]
        profile=builtin("llama-8b-h100"),
        initial_replicas={pool.name: init},
    )
    source = SimMetricsSource(sim, scrape_interval_s=15.0, window_s=60.0)
    actuator = SimActuator(sim)
    targets = [RoleTarget(pool.name, role, spec) for role, spec in pool.roles.items()]
    end = trace.duration_s
    t = 0.0
    while t < end:
        t += 15.0
        sim.advance_to(t)
        await source.fetch(targets, now=t)
        for spec in pool.roles.values():
            await actuator.status(spec.deployment)
    sim.run_until_idle()
    wall = time.perf_counter() - t0
    ev = evaluate(sim, pool.name)
    assert ev.finished == ev.requests, "every request must finish"
    return wall, sim.events_processed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--aggregated", action="store_true")
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    args = ap.parse_args()
    if args.trace.exists():
        trace = load_trace(args.trace)
        source = str(args.trace.name)
    else:
        trace = generate(duration_s=3600, seed=0, diurnal=False)
        source = "generated azure-conv hour (trace not found)"
    policy = parse_policy(AGG if args.aggregated else DISAGG)
    replicas = {"prefill": 1, "decode": 2, "aggregated": 3}
    walls: list[float] = []
    events = 0
    for _ in range(args.runs):
        wall, events = asyncio.run(one_run(policy, trace, replicas=replicas))
        walls.append(wall)
    med = statistics.median(walls)
    n = len(trace.arrival_s)
    mode = "aggregated x3" if args.aggregated else "disaggregated 1P+2D"
    print(f"trace: {source}, {n} requests, {trace.duration_s:.0f} s; {mode}; {events} events/run")
    print(f"runs: {', '.join(f'{w:.3f}' for w in walls)} s")
    print(f"median wall {med:.3f} s per replay, {n / med:,.0f} requests/s; "
          f"3 policies ~ {3 * med:.2f} s (budget 5 s)")  # fmt: skip


if __name__ == "__main__":
    main()
