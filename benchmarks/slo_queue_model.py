"""The slo kind's prefill model against the simulator's engine.

The `slo` policy kind sizes prefill on `SLOPolicy.prefill_miss`: the larger of its step model
(autoscaler/policy/prefill_steps.py: one replica's backlog as a Markov chain over steps of up to
the token budget, each prompt done at the end of its step, replicas behind least-loaded routing
as independent queues) and an M/G/c waiting tail (Erlang C times an exponential tail with
Kingman's decay, averaged over a lognormal prompt mix; alone, it under-counted the engine 2-10x
below saturation). This benchmark measures how far the model is from the engine it is meant to
predict: fixed prefill fleets of c replicas (decode kept large, so only prefill makes requests
miss) are replayed on Poisson arrivals at a grid of utilisations, with prompt and output lengths
drawn from the generator's coding, conversation and long-prompt mixes (lognormal, as the model
assumes: what is measured is the queueing, not the length distribution), and the share of
requests missing the TTFT limit (max(0.5 s, 3 x idle prefill)) is printed next to the model's
and the M/G/c tail's alone. The summary is what the sizing depends on: the rate at which each
crosses 1 % (log-linear interpolation between grid points), and their ratio to the engine's
(> 1: the model lets c replicas take more than the engine serves within the SLO). On one replica
it also prints a step-level replay (`step_model_miss`: waiting prompts packed first come, first
served into steps up to the token budget, each done at its step's end), which reproduces the
engine: what an exact model of the steps would give.

    .venv/bin/python benchmarks/slo_queue_model.py [--profile llama-8b-h100] [--c 1,2,4]
        [--rho 0.2,0.3,...,0.9] [--mix code,conv,long]

Takes a few minutes (each point replays up to 20 simulated minutes).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decision_family import LONG_PROMPTS

from autoscaler.policy.load import load_policy_file
from autoscaler.policy.slo import SLOConfig, SLOPolicy
from autoscaler.profile import Profile, builtin
from autoscaler.sim import backtest
from autoscaler.sim.traces import Trace
from autoscaler.sim.workload import AZURE_CODE, AZURE_CONV, WorkloadSpec, generate
from autoscaler.types import Role

ROOT = Path(__file__).resolve().parents[1]
MIXES: dict[str, WorkloadSpec] = {"code": AZURE_CODE, "conv": AZURE_CONV, "long": LONG_PROMPTS}
# The share of misses the sizing compares against (attainment 0.99).
TAIL = 0.01
# Requests replayed per point (at most 20 simulated minutes), and the first minute left out
# (the fleet starts empty).
REQUESTS = 30_000
WARMUP_S = 60.0


def _policy(profile: str) -> SLOPolicy:
    spec = load_policy_file(ROOT / "policies" / "llama-8b-slo.yaml").pools[0]
    ref = spec.roles[Role.PREFILL].policies[0]
    doc = {k: v for k, v in ref.model_dump().items() if k != "kind"} | dict(ref.model_extra or {})
    doc["profile"] = profile
    role = spec.roles[Role.PREFILL]
    return SLOPolicy(SLOConfig.model_validate(doc), pool=spec.name, role=Role.PREFILL, spec=role)


def step_model_miss(prof: Profile, prompts: np.ndarray, arrivals: np.ndarray) -> float:
    """The share of TTFT misses of one replica that packs waiting prompts into steps first come,
    first served up to the token budget, each prompt done at the end of the step holding its
    last chunk (vLLM's chunked prefill, as the engine runs it, with nothing else modelled):
    what the M/G/c tail leaves out on one replica. Arrivals are as the client sends them; the
    front end's latency is added before the queue."""
    fe = prof.frontend_ms / 1000.0
    n = len(prompts)
    done = np.zeros(n)
    t, i = 0.0, 0
    run: deque[list[int]] = deque()  # [request, tokens computed]
    while i < n or run:
        if not run:
            t = max(t, float(arrivals[i]) + fe)
        while i < n and arrivals[i] + fe <= t:
            run.append([i, 0])
            i += 1
        budget, tokens, attn, seqs = prof.max_num_batched_tokens, 0, 0.0, 0
        finished = []
        for r in run:
            if budget <= 0:
                break
            c = min(int(prompts[r[0]]) - r[1], budget)
            attn += c * c + 2 * c * r[1]
            tokens += c
            budget -= c
            seqs += 1
            r[1] += c
            if r[1] >= prompts[r[0]]:
                finished.append(r[0])
        t += prof.prefill_step_s(tokens, attn, seqs)
        done[finished] = t
        # Packing is first come, first served: a request finishes only once every earlier one
        # has, so the finished ones are the queue's head.
        while run and run[0][1] >= prompts[run[0][0]]:
            run.popleft()
    idle = np.array([prof.idle_prefill_s(int(q)) for q in prompts])
    ttft = done - arrivals + prof.kv_bytes_per_token * prompts / prof.kv_transfer_bytes_per_s
    ttft += prof.kv_transfer_setup_s
    keep = arrivals > WARMUP_S
    return float((ttft > np.maximum(0.5, 3.0 * idle))[keep].mean())


def _crossing(rates: list[float], misses: list[float]) -> float:
    """The rate where the miss share passes TAIL, interpolated log-linearly; NaN if it does
    not within the grid."""
    for (r0, m0), (r1, m1) in zip(
        zip(rates, misses, strict=True), zip(rates[1:], misses[1:], strict=True), strict=False
    ):
        if m0 <= TAIL < m1:
            lo, hi = math.log(max(m0, 1e-6)), math.log(m1)
            return r0 + (r1 - r0) * (math.log(TAIL) - lo) / (hi - lo)
    return math.nan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="llama-8b-h100")
    ap.add_argument("--c", default="1,2,4", help="prefill replicas (comma-separated)")
    ap.add_argument("--rho", default="0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="model utilisations")
    ap.add_argument("--mix", default="code,conv,long", help=f"of {', '.join(MIXES)}")
    args = ap.parse_args()
    pol = _policy(args.profile)
    prof = builtin(args.profile)
    cfg = backtest.ReplayConfig()
    pool = load_policy_file(ROOT / "policies" / "llama-8b-slo.yaml").pools[0]
    cs = [int(x) for x in args.c.split(",")]
    rhos = [float(x) for x in args.rho.split(",")]
    print(f"profile {args.profile}; Poisson arrivals; TTFT <= max(0.5 s, 3 x idle prefill)")
    print(
        "| mix | c | model utilisation | req/s | engine miss | model miss | engine / model "
        "| M/G/c tail alone | step-level replay (c = 1) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    for name in args.mix.split(","):
        lengths = generate(MIXES[name], duration_s=4 * 3600.0, seed=3, diurnal=False)
        pt = np.asarray(lengths.prompt_tokens)
        ot = np.asarray(lengths.output_tokens)
        p, cv = float(pt.mean()), float(pt.std() / pt.mean())
        es, _, _ = pol.prefill_model(p, cv)
        for c in cs:
            rates, eng, mod, mgc = [], [], [], []
            for rho in rhos:
                lam = rho * c / es
                n = int(min(REQUESTS, lam * 1200.0))
                rng = np.random.default_rng(0)
                idx = rng.integers(0, len(pt), n)
                tr = Trace(np.cumsum(rng.exponential(1.0 / lam, n)), pt[idx], ot[idx])
                fleet = {Role.PREFILL: c, Role.DECODE: 2 * c + 2}
                e = backtest.ttft_miss_share(
                    pool, fleet, tr, profile=prof, config=cfg, after_s=WARMUP_S
                )
                m = pol.prefill_miss(c, lam, p, cv)
                g = pol.mgc_miss(c, lam, p, cv)
                rates.append(lam)
                eng.append(e)
                mod.append(m)
                mgc.append(g)
                ratio = f"{e / m:.1f}" if m > 0 else "-"
                step = ""
                if c == 1:
                    step = f"{step_model_miss(prof, tr.prompt_tokens, tr.arrival_s):.3%}"
                print(
                    f"| {name} (prompt mean {p:.0f}, cv {cv:.2f}) | {c} | {rho:.2f} | {lam:.2f} "
                    f"| {e:.3%} | {m:.3%} | {ratio} | {g:.3%} | {step} |",
                    flush=True,
                )
            summary.append((name, c, *(_crossing(rates, x) for x in (eng, mod, mgc))))
    print(f"\nRate at which the miss share passes {TAIL:.0%} (what the sizing depends on):")
    print("| mix | c | engine req/s | model req/s | model / engine | M/G/c alone / engine |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, c, le, lm, lg in summary:
        cells = ["-" if math.isnan(x) else f"{x:.2f}" for x in (le, lm)]
        for x in (lm, lg):
            ok = le > 0 and not math.isnan(le) and not math.isnan(x)
            cells.append(f"{x / le:.2f}" if ok else "-")
        print(f"| {name} | {c} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
