"""How much of one prefill replica's TTFT misses on a family member comes from its arrivals
not being Poisson: the slo kind's M/G/c estimate at one replica, the member replayed on a fixed
1P+1D fleet, and the same requests re-timed as a Poisson stream (same count and span, arrival
times uniform at random, prompts shuffled) on the same fleet.

    .venv/bin/python benchmarks/arrival_dispersion.py MEMBER [MEMBER ...]

Also prints the index of dispersion of the member's 15-second arrival counts (variance / mean:
1 for Poisson; it also counts the rate's drift over the member).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import decision_family as family

from autoscaler.policy.load import load_policy_file
from autoscaler.policy.slo import SLOConfig, SLOPolicy
from autoscaler.policy.slo_model import erlang_c
from autoscaler.profile import builtin
from autoscaler.sim import backtest, yardsticks
from autoscaler.sim.evaluate import SLO
from autoscaler.sim.traces import Trace
from autoscaler.types import Role


def main() -> int:
    names = sys.argv[1:]
    members = {m.name: m for m in family.MEMBERS}
    unknown = [n for n in names if n not in members]
    if not names or unknown:
        print(f"members: {', '.join(members)}", file=sys.stderr)
        return 2
    profile = builtin("llama-8b-h100")
    pool = load_policy_file(backtest.default_policy_path()).pools[0]
    model = SLOPolicy(
        SLOConfig(profile=profile.name), pool=pool.name, role=Role.PREFILL,
        spec=pool.roles[Role.PREFILL],
    )  # fmt: skip
    fleet = {Role.PREFILL: 1, Role.DECODE: 1}
    for name in names:
        trace = members[name].build()
        n = len(trace.arrival_s)
        span = float(trace.arrival_s[-1])
        rng = np.random.default_rng(0)
        poisson = Trace(
            np.sort(rng.uniform(0.0, span, n)),
            trace.prompt_tokens[rng.permutation(n)],
            trace.output_tokens,
        )
        prompts = trace.prompt_tokens.astype(np.float64)
        lam, mean, cv = n / span, float(prompts.mean()), float(prompts.std() / prompts.mean())
        es, cs2, waits = model.prefill_model(mean, cv)
        a = lam * es
        k = 2.0 / (1.0 + cs2)
        tail = sum(math.exp(-(1.0 - a) / es * k * w) for w in waits if w > 0) / len(waits)
        predicted = erlang_c(1, a) * tail if a < 1 else 1.0
        counts = np.bincount((trace.arrival_s // 15.0).astype(np.int64))
        idc = float(counts.var() / counts.mean())
        missed = []
        for tr in (trace, poisson):
            _, met = yardsticks.replay_fixed(
                tr, pool, profile, fleet, slo=SLO(), horizon_s=backtest.horizon_of(tr)
            )
            missed.append(1.0 - float(met.mean()))
        print(
            f"{name}: {lam:.2f} req/s, one prefill replica {a:.2f} busy, prompt cv {cv:.2f}, "
            f"15-s count dispersion {idc:.1f}; TTFT/SLO misses on 1P+1D: M/G/c {predicted:.2%}, "
            f"Poisson re-timing {missed[1]:.2%}, the member's own arrivals {missed[0]:.2%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
