"""Why a policy scores what it does on one member of the workload family: its SLO misses per
minute and every decision that changed a role's replicas, with the decision's reason.

    .venv/bin/python benchmarks/decision_trace.py MEMBER [--policy FILE] [--every N]

MEMBER is a `decision_family.py` member name; `--every N` also prints every Nth tick's
reasons (e.g. 40: every 10 minutes at 15 s ticks), to follow estimates that do not change the
replicas. Replays the policy alone (no baselines), so it takes seconds for an hour member.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import decision_family as family

from autoscaler.loop import TickReport
from autoscaler.policy.load import load_policy_file
from autoscaler.profile import builtin
from autoscaler.sim import backtest
from autoscaler.sim.engine import Simulation
from autoscaler.sim.evaluate import request_outcome


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("member", help=", ".join(m.name for m in family.MEMBERS))
    ap.add_argument("--policy", type=Path, default=backtest.default_policy_path())
    ap.add_argument("--every", type=int, default=0, help="also print every Nth tick (0: none)")
    args = ap.parse_args()
    member = next((m for m in family.MEMBERS if m.name == args.member), None)
    if member is None:
        print(f"no member {args.member!r}; members: {ap.get_default('member')}", file=sys.stderr)
        return 2
    trace = member.build()
    profile = builtin("llama-8b-h100")
    config = backtest.ReplayConfig()
    ticks: list[tuple[float, dict[str, tuple[int, int, str]]]] = []

    def on_tick(t: float, report: TickReport, _sim: Simulation) -> None:
        for pool in report.decision.pools.values():
            roles = {r.value: (d.current, d.desired, d.reason) for r, d in pool.roles.items()}
            ticks.append((t, roles))

    with backtest.quiet_logs():
        run = backtest.run_controller(
            args.policy.stem,
            load_policy_file(args.policy),
            trace,
            profile=profile,
            config=config,
            horizon_s=backtest.horizon_of(trace),
            on_tick=on_tick,
        )
    ev = run.evaluation
    by_role = ", ".join(f"{r.value} {h:.2f}" for r, h in ev.gpu_hours_by_role.items())
    print(f"{member.name}, {args.policy}: {ev.slo_attainment:.2%} met @ {ev.gpu_hours:.2f} GPU-h "
          f"({by_role})")  # fmt: skip
    res = run.sim.pool(run.pool).results()
    met = request_outcome(res, profile, config.slo).met
    edges = np.arange(0.0, backtest.horizon_of(trace) + 61.0, 60.0)
    arrived = np.histogram(trace.arrival_s, bins=edges)[0]
    missed = np.histogram(res.arrival_s[~met], bins=edges)[0]
    for m in np.flatnonzero(missed).tolist():
        print(f"  minute {m}: {arrived[m]} arrived, {missed[m]} missed")
    for i, (t, roles) in enumerate(ticks):
        for role, (current, desired, why) in roles.items():
            if current != desired or (args.every and i % args.every == 0):
                print(f"t={t:7.0f} {role}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
