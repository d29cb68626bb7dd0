"""Long prompts at low load under the real controller loop: `batched_tokens` multiplies prefill
replicas (to max_replicas on 20k-token prompts); the flow signal that replaces it
(`prompt_tokens_rate`) and the shipped policy, which no longer targets it, do not.

vLLM V1 (and the simulator, as its twin) observes the iteration-token histogram once per step
that emitted output, counting a completing prompt's whole length, so a lone 20k-token prompt
reads 2.4 step budgets on an otherwise idle replica. Each row is a Poisson stream at a small
fraction of one replica's prefill capacity (~33k tok/s idle on this profile): a replica that is
mostly idle must not be multiplied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoscaler.loop import TickReport
from autoscaler.policy.load import load_policy_file, parse_policy
from autoscaler.sim import backtest
from autoscaler.sim.engine import Simulation
from autoscaler.sim.traces import Trace
from autoscaler.spec import PolicyFile
from autoscaler.types import Role
from tests.sim.conftest import P8B_BUILTIN

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]
MAX_PREFILL = 8
HORIZON_S = 900.0


def _policy(signal: str) -> PolicyFile:
    return parse_policy(f"""
pools:
  - name: p
    roles:
      prefill:
        deployment: {{name: pre}}
        max_replicas: {MAX_PREFILL}
        cold_start_s: 90
        signals: [{signal}]
      decode:
        deployment: {{name: dec}}
        max_replicas: 4
        signals: [{{signal: kv_cache, target: 0.7}}]
""")


BATCHED = "{signal: batched_tokens, target: 0.8}"
FLOW = "{signal: prompt_tokens_rate, target: 24000}"


def _shipped() -> PolicyFile:
    return load_policy_file(ROOT / "policies" / "llama-8b-disagg.yaml")


def _trace(prompt: int, rps: float, seed: int = 3) -> Trace:
    rng = np.random.default_rng(seed)
    n = int(rps * HORIZON_S)
    arrival = np.sort(rng.uniform(0.0, HORIZON_S, n))
    return Trace(arrival, np.full(n, prompt, dtype=np.int64), np.full(n, 50, dtype=np.int64))


def _most_prefill_replicas(policy: PolicyFile, trace: Trace) -> int:
    most = 0

    def on_tick(_t: float, _r: TickReport, sim: Simulation) -> None:
        nonlocal most
        pool = next(iter(sim.pools.values()))
        most = max(most, pool.deployments[Role.PREFILL].spec_replicas)

    backtest.run_controller(
        "p",
        policy,
        trace,
        profile=P8B_BUILTIN,
        config=backtest.ReplayConfig(),
        horizon_s=HORIZON_S,
        on_tick=on_tick,
    )
    return most


@pytest.mark.parametrize(
    ("prompt", "rps", "batched_most", "flow_most", "shipped_most"),
    [
        # 6k tok/s, a fifth of one replica: every observed step reads 20k / 8192 = 2.4.
        # The shipped policy's relative TTFT guard adds one replica when prompts of 0.6 s
        # prefill meet in the queue (it measures the wait); far from max_replicas (16).
        pytest.param(20_000, 0.3, MAX_PREFILL, 1, 2, id="20k-prompts-at-0.3-rps"),
        # 8k tokens: under one step's budget, yet one prompt alone reads 8001 / 8192 = 0.98,
        # 22 % over the 0.8 target (past the 10 % tolerance): 4 replicas within the 15 minutes
        # for 4k tok/s, an eighth of one replica's work.
        pytest.param(8_000, 0.5, 4, 1, 1, id="8k-prompts-at-0.5-rps"),
        # The control: 1k prompts fill an eighth of a step; neither signal scales.
        pytest.param(1_000, 3.0, 1, 1, 1, id="1k-prompts-at-3-rps"),
    ],
)
def test_long_prompts_pin_batched_tokens_not_the_flow_signal(
    prompt: int, rps: float, batched_most: int, flow_most: int, shipped_most: int
) -> None:
    trace = _trace(prompt, rps)
    assert _most_prefill_replicas(_policy(BATCHED), trace) == batched_most
    assert _most_prefill_replicas(_policy(FLOW), trace) == flow_most
    # The shipped policy: flow signal, queue and relative TTFT guard, no batched_tokens.
    assert _most_prefill_replicas(_shipped(), trace) == shipped_most
