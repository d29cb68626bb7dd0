"""The workload family decisions are judged on: policy vs keda-queue vs best-static vs hindsight.

Each member is replayed through `pd-autoscaler backtest` (autoscaler.sim.backtest.run_backtest)
with every baseline, and one row per member is printed: the policy's and keda-queue's SLO
attainment and GPU-hours, the cheapest fixed fleet reaching 99 % (best-static), the clairvoyant
schedule with the real cold start (hindsight), the static frontier's attainment at the policy's
GPU-hours, and two verdicts: Pareto-better than keda-queue (attainment >= and GPU-h <=, one of
them strictly) and GPU-h <= 1.25 x hindsight's at equal attainment. "x hindsight" is against
the 99 % hindsight; "x hs at its att." against hindsight re-planned for the policy's own
attainment from the same miss tables (`yardsticks.hindsight_at`, verified by replay, which may
land a little off it; the backtest's `hindsight_at_equal_attainment`), below 99 % or above it:
at 99 % alone a policy meeting more is charged for its extra attainment and one meeting less is
credited with it. The 1.25x verdict uses the equal one. For scale, "x hs changing every N min"
divides the policy's GPU-hours by those of the same clairvoyant schedule when it may change the
fleet only every N minutes (`--blocks`, default 15 and 60), at the same attainment
(`hindsight_at(..., block_s=)`): it knows each block's load but not when inside it the bursts
come, which no controller knows either.

Every member is judged from 180 s on (`--warmup-s`, `ReplayConfig.warmup_s`), every run alike:
a member is cut from running traffic, so a fixed fleet is warm at 0 while a controller run
starts at 1 replica under full load and needs a cold start (120 s) and a rate window (60 s) to
reach its size. Judging those first minutes judges the cut, not the policy (on long-1h they
held 2.9 of the policy's 4.0 points of misses). `--warmup-s 0` judges every request.

Members (all built from ../shared/traces and the built-in generator; nothing is copied):

| set | name | what |
|---|---|---|
| dev | code-1h | the Azure 2023 coding hour (bursts of up to 327 requests in 10 s) |
| dev | conv-1h | the Azure 2023 conversation hour (smooth) |
| dev | conv-2.5x | the conversation hour replayed 2.5x faster |
| dev | code-2x | the coding hour at 2x the request rate (`rate_scale`) |
| dev | long-1h | generated long-prompt chats: prompts p50 7k / p99 85k tokens, 2.5 req/s |
| dev | conv-bursts-1h | generated conversation hour with 8x bursts of 20 s every 7 min |
| day | code-day | 1 day: ServeGen m-large daily shape x the coding hour bursts, code lengths |
| day | long-day | 1 day of generated long prompts with the ServeGen daily swing |
| held-out | code-gen-1h | generator fitted to the coding hour, seed 1 |
| held-out | conv-gen-3x | generator fitted to the conversation hour at 3x its rate, seed 2 |
| held-out | long-1h-b | long prompts, seed 1, 1.5 req/s |
| held-out | conv-bursts-b | conversation, 6x bursts of 30 s every 5 min, seed 1 |
| held-out | code-day-b | 1 day: ServeGen m-mid shape, code bursts from 30 min in, seed 1 |
| check | code-gen-1.5x-s7 | coding generator at 1.5x rate, seed 7 |
| check | conv-gen-2x-s5 | conversation generator at 2x rate, seed 5 |
| check | conv-bursts-c | conversation + 4x bursts of 45 s every 10 min, seed 5 |

`check` is a second held-out set, added after the slo kind's round of changes on `dev` (issue
14, session 4) and run only to report: nothing was changed after seeing it.

Develop on `dev`, judge generalisation on `held-out` (never tuned on), run `day` sparingly (a
day-long member replays ~15 fixed fleets of ~0.1-0.3 M requests: minutes on this machine).

    .venv/bin/python benchmarks/decision_family.py [--set dev|day|held-out|check|all]
        [--only NAME ...]
        [--policy FILE ...] [--json OUT] [--blocks 15,60]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoscaler.policy.load import load_policy_file
from autoscaler.profile import builtin
from autoscaler.sim import backtest, stitch, yardsticks
from autoscaler.sim.traces import Trace, load_trace
from autoscaler.sim.workload import AZURE_CODE, AZURE_CONV, WorkloadSpec, generate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces"
CODE = SHARED / "AzureLLMInferenceTrace_code.csv"
CONV = SHARED / "AzureLLMInferenceTrace_conv.csv"
ENVELOPE = SHARED / "servegen_aggregate_rate_10min.csv"
HOUR = 3600.0
DAY = 86400.0

# Long-prompt conversations (RAG / document chat): prompts p50 7k, p99 85k tokens, capped at
# 120k (a 128k context minus the answer); conversation-like answers (p50 200, p99 1,000).
LONG_PROMPTS = WorkloadSpec(
    name="long-prompts",
    mean_rate_rps=2.5,
    burst_var=AZURE_CONV.burst_var,
    burst_window_s=10.0,
    prompt_p50=7000.0,
    prompt_p99=85000.0,
    prompt_max=120_000,
    output_p50=200.0,
    output_p99=1000.0,
    output_max=2000,
    diurnal_amplitude=AZURE_CONV.diurnal_amplitude,
    diurnal_peak_s=AZURE_CONV.diurnal_peak_s,
)

# Sharp daily swing for the long-prompt day: peak/trough (1 + a) / (1 - a) = 9.
SHARP_DIURNAL = 0.8


def with_bursts(
    base: Trace, spec: WorkloadSpec, *, factor: float, width_s: float, every_s: float, seed: int
) -> Trace:
    """`base` plus extra Poisson arrivals at (factor - 1) x the spec's mean rate in windows of
    `width_s` every `every_s` (starting at every_s / 2), lengths from the same spec."""
    extra = generate(
        spec.with_rate(spec.mean_rate_rps * (factor - 1.0)),
        duration_s=base.duration_s + 1.0,
        seed=seed + 1000,
        diurnal=False,
    )
    phase = np.mod(extra.arrival_s - every_s / 2.0, every_s)
    keep = (extra.arrival_s >= every_s / 2.0) & (phase < width_s)
    t = np.concatenate([base.arrival_s, extra.arrival_s[keep]])
    p = np.concatenate([base.prompt_tokens, extra.prompt_tokens[keep]])
    o = np.concatenate([base.output_tokens, extra.output_tokens[keep]])
    order = np.argsort(t, kind="stable")
    return Trace(t[order], p[order], o[order])


def stitched(model: str, *, days: float, peak_rps: float, seed: int, offset_s: float) -> Trace:
    t, p, o, _ = stitch.stitch(
        envelope=ENVELOPE,
        model=model,
        tokens=CODE,
        days=days,
        peak_rps=peak_rps,
        seed=seed,
        bursts=CODE,
        burst_offset_s=offset_s,
    )
    return Trace(t, p, o)


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    set: str
    what: str
    build: Callable[[], Trace]


MEMBERS: tuple[Member, ...] = (
    Member("code-1h", "dev", "Azure coding hour", lambda: load_trace(CODE)),
    Member("conv-1h", "dev", "Azure conversation hour", lambda: load_trace(CONV)),
    Member(
        "conv-2.5x", "dev", "conversation hour 2.5x faster", lambda: load_trace(CONV, speedup=2.5)
    ),
    Member("code-2x", "dev", "coding hour at 2x rate", lambda: load_trace(CODE, rate_scale=2.0)),
    Member(
        "long-1h",
        "dev",
        "long prompts p50 7k / p99 85k, 2.5 req/s",
        lambda: generate(LONG_PROMPTS, duration_s=HOUR, seed=0, diurnal=False),
    ),
    Member(
        "conv-bursts-1h",
        "dev",
        "conversation + 8x bursts of 20 s every 7 min",
        lambda: with_bursts(
            generate(AZURE_CONV, duration_s=HOUR, seed=0, diurnal=False),
            AZURE_CONV,
            factor=8.0,
            width_s=20.0,
            every_s=420.0,
            seed=0,
        ),
    ),
    Member(
        "code-day",
        "day",
        "1 day: m-large shape x coding bursts, peak 8 req/s",
        lambda: stitched("language/m-large", days=1, peak_rps=8.0, seed=0, offset_s=0.0),
    ),
    Member(
        "long-day",
        "day",
        "1 day of long prompts, daily swing 9:1, mean 1.2 req/s",
        lambda: generate(
            WorkloadSpec(
                **{
                    **{f: getattr(LONG_PROMPTS, f) for f in LONG_PROMPTS.__slots__},
                    "mean_rate_rps": 1.2,
                    "diurnal_amplitude": SHARP_DIURNAL,
                }
            ),
            duration_s=DAY,
            seed=0,
        ),
    ),
    Member(
        "code-gen-1h",
        "held-out",
        "coding generator, seed 1",
        lambda: generate(AZURE_CODE, duration_s=HOUR, seed=1, diurnal=False),
    ),
    Member(
        "conv-gen-3x",
        "held-out",
        "conversation generator at 3x rate, seed 2",
        lambda: generate(
            AZURE_CONV.with_rate(3 * AZURE_CONV.mean_rate_rps),
            duration_s=HOUR,
            seed=2,
            diurnal=False,
        ),
    ),
    Member(
        "long-1h-b",
        "held-out",
        "long prompts, 1.5 req/s, seed 1",
        lambda: generate(LONG_PROMPTS.with_rate(1.5), duration_s=HOUR, seed=1, diurnal=False),
    ),
    Member(
        "conv-bursts-b",
        "held-out",
        "conversation + 6x bursts of 30 s every 5 min, seed 1",
        lambda: with_bursts(
            generate(AZURE_CONV, duration_s=HOUR, seed=1, diurnal=False),
            AZURE_CONV,
            factor=6.0,
            width_s=30.0,
            every_s=300.0,
            seed=1,
        ),
    ),
    Member(
        "code-gen-1.5x-s7",
        "check",
        "coding generator at 1.5x rate, seed 7",
        lambda: generate(
            AZURE_CODE.with_rate(1.5 * AZURE_CODE.mean_rate_rps),
            duration_s=HOUR,
            seed=7,
            diurnal=False,
        ),
    ),
    Member(
        "conv-gen-2x-s5",
        "check",
        "conversation generator at 2x rate, seed 5",
        lambda: generate(
            AZURE_CONV.with_rate(2 * AZURE_CONV.mean_rate_rps),
            duration_s=HOUR,
            seed=5,
            diurnal=False,
        ),
    ),
    Member(
        "conv-bursts-c",
        "check",
        "conversation + 4x bursts of 45 s every 10 min, seed 5",
        lambda: with_bursts(
            generate(AZURE_CONV, duration_s=HOUR, seed=5, diurnal=False),
            AZURE_CONV,
            factor=4.0,
            width_s=45.0,
            every_s=600.0,
            seed=5,
        ),
    ),
    Member(
        "code-day-b",
        "held-out",
        "1 day: m-mid shape x coding bursts from 30 min in, peak 6 req/s, seed 1",
        lambda: stitched("language/m-mid", days=1, peak_rps=6.0, seed=1, offset_s=1800.0),
    ),
)


# Block lengths (minutes) of the blocked hindsight columns (`--blocks`).
BLOCK_MIN = (15, 60)


PROFILE = builtin("llama-8b-h100")
# Every member is judged after one cold start and one rate window (180 s): each is cut from
# running traffic, where the fixed fleets are warm at 0 and the controller runs would start at
# 1 replica under full load (`ReplayConfig.warmup_s`).
WARMUP_S = backtest.warmup_for(PROFILE, backtest.ReplayConfig())


def _run(
    member: Member,
    policy_paths: list[Path],
    blocks: tuple[int, ...] = BLOCK_MIN,
    warmup_s: float = WARMUP_S,
) -> dict[str, Any]:
    trace = member.build()
    t0 = time.perf_counter()
    with backtest.quiet_logs():
        bt = backtest.run_backtest(
            trace,
            trace_name=member.name,
            policies=[(p.stem, load_policy_file(p)) for p in policy_paths],
            profile=PROFILE,
            config=backtest.ReplayConfig(warmup_s=warmup_s),
        )
    doc = backtest.summary_json(bt)
    ys = bt.yardsticks
    hs_run = doc["runs"].get("hindsight")
    for path in policy_paths:
        run = doc["runs"][path.stem]
        att = float(run["slo_attainment"])
        if ys is not None and hs_run is not None:
            # What the clairvoyant schedule costs when it may change the fleet only every
            # 15 or 60 minutes (it knows each block's load, not when its bursts come), at the
            # policy's own attainment, as the equal-attainment comparison.
            blocked = {}
            for minutes in blocks:
                bh = yardsticks.hindsight_at(ys, att, block_s=minutes * 60.0)
                if bh is not None:
                    blocked[str(minutes)] = {
                        "slo_attainment": bh.evaluation.slo_attainment,
                        "gpu_hours": bh.evaluation.gpu_hours,
                    }
            run["hindsight_blocked"] = blocked
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    doc["member"] = {"name": member.name, "set": member.set, "what": member.what}
    p = np.asarray(trace.prompt_tokens)
    doc["prompt_p50_p99"] = [float(np.percentile(p, 50)), float(np.percentile(p, 99))]
    return doc


Doc = dict[str, Any]


def _runs(doc: Doc) -> dict[str, Doc]:
    runs: dict[str, Doc] = doc["runs"]
    return runs


def verdicts(doc: Doc, policy: str) -> Doc:
    """Pareto-better than keda-queue, GPU-h / hindsight's, within 1.25x at >= its attainment."""
    runs = _runs(doc)
    pol, keda = runs[policy], runs["keda-queue"]
    hs = runs.get("hindsight")
    pa, pg = float(pol["slo_attainment"]), float(pol["gpu_hours"])
    ka, kg = float(keda["slo_attainment"]), float(keda["gpu_hours"])
    pareto = pa >= ka - 1e-12 and pg <= kg + 1e-12 and (pa > ka + 1e-12 or pg < kg - 1e-12)
    tie = abs(pa - ka) <= 1e-12 and abs(pg - kg) <= 1e-12
    ratio = pg / float(hs["gpu_hours"]) if hs else math.nan
    # At equal attainment: hindsight re-planned for the policy's own attainment, whether the
    # policy met less than the target (its replay meets at least about that) or more
    # (`Run.hindsight_equal`: the backtest's `hindsight_at_equal_attainment`).
    eq = pol.get("hindsight_at_equal_attainment")
    eq_ratio = pg / float(eq["gpu_hours"]) if eq else math.nan
    within = bool(eq_ratio <= 1.25)
    return {
        "pareto_vs_keda": "tie" if tie else ("yes" if pareto else "no"),
        "x_hindsight": ratio,
        "x_hindsight_equal": eq_ratio,
        "within_1_25": bool(within),
    }


def row(doc: Doc, policies: list[str]) -> str:
    """One table row; the per-policy columns list the policies in order, joined by " / "."""
    runs = _runs(doc)

    def cell(name: str) -> str:
        r = runs.get(name)
        if r is None:
            return "-"
        return f"{float(r['slo_attainment']):.2%} @ {float(r['gpu_hours']):.2f}"

    bs = doc["yardsticks"]["best_static"]
    fleet = "+".join(f"{n}{k[0].upper()}" for k, n in bs["replicas"].items()) if bs else "none"
    vs = [verdicts(doc, p) for p in policies]
    fronts = [runs[p].get("static_frontier_attainment_at_gpu_hours") for p in policies]
    front_s = " / ".join("-" if f is None else f"{float(f):.2%}" for f in fronts)
    name = doc["member"]["name"]
    ratios = " / ".join(f"{float(v['x_hindsight']):.2f}" for v in vs)
    eq_cells = []
    for p, v in zip(policies, vs, strict=True):
        eq = runs[p].get("hindsight_at_equal_attainment")
        eq_cells.append(
            "-"
            if eq is None
            else f"{float(v['x_hindsight_equal']):.2f} (hs {float(eq['slo_attainment']):.2%} "
            f"@ {float(eq['gpu_hours']):.2f})"
        )
    blocked_cells = []
    for p in policies:
        bl = runs[p].get("hindsight_blocked") or {}
        pg = float(runs[p]["gpu_hours"])
        blocked_cells.append(
            ", ".join(f"{m}m {pg / float(v['gpu_hours']):.2f}" for m, v in bl.items()) or "-"
        )
    return (
        f"| {name} | {' | '.join(cell(p) for p in policies)} | {cell('keda-queue')} "
        f"| {cell('best-static')} ({fleet}) | {cell('hindsight')} | {front_s} "
        f"| {ratios} | {' / '.join(eq_cells)} | {' / '.join(blocked_cells)} "
        f"| {' / '.join(str(v['pareto_vs_keda']) for v in vs)} "
        f"| {' / '.join('yes' if v['within_1_25'] else 'no' for v in vs)} |"
    )


def header(policies: list[str]) -> str:
    each = " / ".join(policies)
    cols = [
        "workload",
        *policies,
        "keda-queue",
        "best-static",
        "hindsight",
        f"static@GPU-h ({each})",
        f"x hindsight ({each})",
        f"x hs at its att. ({each})",
        f"x hs changing every N min ({each})",
        f"Pareto vs keda ({each})",
        f"<= 1.25x hindsight ({each})",
    ]
    return "| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["dev", "day", "held-out", "check", "all"], default="dev")
    ap.add_argument("--only", action="append", default=None, help="member name (repeatable)")
    ap.add_argument(
        "--policy",
        type=Path,
        action="append",
        default=None,
        help="policy file (repeatable: all are replayed against the same baselines; default: "
        "the backtest's default policy)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write every backtest's JSON here")
    ap.add_argument(
        "--blocks",
        default=",".join(map(str, BLOCK_MIN)),
        help="minutes between fleet changes of the blocked hindsight columns (comma-separated)",
    )
    ap.add_argument(
        "--warmup-s",
        type=float,
        default=WARMUP_S,
        help=f"judge from this second on (default {WARMUP_S:g}: one cold start + one rate "
        "window; 0 judges every request, the controller runs starting at 1 replica)",
    )
    args = ap.parse_args()
    if not args.warmup_s >= 0:
        print(f"--warmup-s must be >= 0; got {args.warmup_s}", file=sys.stderr)
        return 2
    chosen = [
        m
        for m in MEMBERS
        if (args.only and m.name in args.only)
        or (not args.only and args.set in ("all", m.set))
    ]
    if not chosen:
        print(f"no member matches; members: {', '.join(m.name for m in MEMBERS)}", file=sys.stderr)
        return 2
    paths: list[Path] = args.policy or [backtest.default_policy_path()]
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        print(f"policy files need distinct names: {names}", file=sys.stderr)
        return 2
    try:
        blocks = tuple(int(x) for x in args.blocks.split(",") if x.strip())
    except ValueError:
        print(f"--blocks: expected minutes like 15,60; got {args.blocks!r}", file=sys.stderr)
        return 2
    if any(b < 1 for b in blocks):
        print(f"--blocks: minutes must be >= 1; got {args.blocks!r}", file=sys.stderr)
        return 2
    print(
        f"policies {', '.join(map(str, paths))}; cells: SLO attainment @ GPU-hours, judged "
        f"from {args.warmup_s:g} s (warm-up)"
    )
    print(header(names), flush=True)
    docs = []
    for m in chosen:
        doc = _run(m, paths, blocks, args.warmup_s)
        docs.append(doc)
        print(row(doc, names), flush=True)
    for doc in docs:
        member = doc["member"]
        p50, p99 = doc["prompt_p50_p99"]
        print(
            f"  {member['name']} ({member['set']}): {member['what']}; {doc['requests']:,} "
            f"requests, prompts p50 {p50:,.0f} / p99 {p99:,.0f}; {doc['wall_s']} s"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(docs, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
