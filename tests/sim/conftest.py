"""Shared helpers for the simulator tests: tiny workloads and a policy with two pools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoscaler.policy.load import parse_policy
from autoscaler.profile import BUILTIN_PROFILES, Profile
from autoscaler.sim.engine import SimPool, Simulation
from autoscaler.spec import PolicyFile
from autoscaler.types import Role

# The engine tests check the step formulas to the nanosecond: the API server's front-end delay
# (a pure shift of arrival, tested on its own in test_engine.py) is left out of their profile.
P8B_BUILTIN = BUILTIN_PROFILES["llama-8b-h100"]
P8B = P8B_BUILTIN.model_copy(update={"frontend_ms": 0.0})
SHARED_TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
CONV_TRACE = SHARED_TRACES / "AzureLLMInferenceTrace_conv.csv"

POLICY_YAML = """
pools:
  - name: chat
    roles:
      prefill:
        deployment: {namespace: llm, name: chat-prefill}
        max_replicas: 8
        signals: [{signal: queue_depth, target: 4}, {signal: batched_tokens, target: 0.6},
                  {signal: ttft, target: 0.5, quantile: 0.9}]
      decode:
        deployment: {namespace: llm, name: chat-decode}
        max_replicas: 8
        signals: [{signal: kv_cache, target: 0.7}, {signal: running, target: 64},
                  {signal: itl, target: 0.05, quantile: 0.5}]
  - name: agg
    roles:
      aggregated:
        deployment: {namespace: llm, name: agg}
        max_replicas: 4
        signals: [{signal: queue_depth, target: 4}]
"""


@pytest.fixture
def policy() -> PolicyFile:
    return parse_policy(POLICY_YAML)


def small_profile(**overrides: object) -> Profile:
    return P8B.model_copy(update=overrides)


def one_pool(
    arrival: list[float],
    prompt: list[int],
    output: list[int],
    *,
    disaggregated: bool = True,
    profile: Profile = P8B,
    initial: dict[Role, int] | None = None,
    max_segment_steps: int = 0,
    block_hashes: list[list[int]] | None = None,
    routing: str = "least-loaded",
) -> tuple[Simulation, SimPool]:
    sim = Simulation(max_segment_steps=max_segment_steps)
    deps = (
        {Role.PREFILL: ("llm", "p"), Role.DECODE: ("llm", "d")}
        if disaggregated
        else {Role.AGGREGATED: ("llm", "a")}
    )
    pool = sim.add_pool(
        "x",
        profile=profile,
        deployments=deps,
        arrival_s=np.array(arrival, dtype=np.float64),
        prompt_tokens=np.array(prompt, dtype=np.int64),
        output_tokens=np.array(output, dtype=np.int64),
        block_hashes=block_hashes,
        routing=routing,
        initial_replicas=initial,
    )
    return sim, pool
