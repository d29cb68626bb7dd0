"""Shared inputs for the tune tests: generated coding traffic written as an Azure-format CSV."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from autoscaler.sim.traces import Trace
from autoscaler.sim.workload import AZURE_CODE, generate

HERE = Path(__file__).resolve().parent
POOR_POLICY = HERE / "poor_policy.yaml"
START = dt.datetime(2023, 11, 16, 0, 0, 0)


def code_trace(duration_s: float = 2460.0, seed: int = 1) -> Trace:
    """Generated coding-hour traffic (bursty), no daily swing: two 20-min windows by default."""
    return generate(AZURE_CODE, duration_s=duration_s, seed=seed, diurnal=False)


def write_azure_csv(trace: Trace, path: Path) -> Path:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t, p, o in zip(trace.arrival_s, trace.prompt_tokens, trace.output_tokens, strict=True):
        stamp = START + dt.timedelta(seconds=float(t))
        lines.append(f"{stamp.isoformat(sep=' ')},{int(p)},{int(o)}")
    path.write_text("\n".join(lines) + "\n")
    return path
