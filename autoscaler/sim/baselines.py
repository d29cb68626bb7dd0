"""The baselines a backtest compares a policy with, built from the policy itself.

* **keda-queue**: what users deploy today. One KEDA ScaledObject per role with the Prometheus
  scaler on `sum(vllm:num_requests_waiting{pod=~"<deployment>-.*"})`, `threshold: 5` (the default
  `AverageValue` metric type), so the HPA KEDA generates computes `ceil(sum / 5)` with its own
  defaults (PEERS.md §1-2): 15 s sync period, 10 % tolerance, no scale-up stabilization, 300 s
  scale-down stabilization, scale-up max(+4 pods, +100 %) per 15 s, scale-down -100 % per 15 s.
  It is expressed as a PolicyFile on our own core with the rules the HPA lacks switched off:
  consolidation (the HPA's scale-down uses the same formula as its scale-up), panic mode, and
  pending replicas as capacity (the HPA keeps asking for more while pods start). Same Deployments
  and the same min/max replicas as the policy, so only the control law differs.

  Known difference: our core's deadband compares the mean over the replicas that report (the
  ready ones) with the target, the HPA's compares `sum / (target x status.replicas)`, where
  status.replicas also counts pods still starting. `ceil(sum / 5)` is the same; only whether a
  change of at most 10 % is skipped can differ, and only while pods start.

* **best-static** and **hindsight** (`yardsticks.py`): the cheapest fixed fleet reaching the
  attainment target, and the cheapest clairvoyant schedule that pays the real cold start, both
  found by replaying the trace. They replace `static-peak` (each role fixed at the fluid oracle's
  busiest minute), which was not honest: a fluid bound sizes EDF-ordered, perfectly split work, not
  per-replica FCFS queues, so its peak fleet can sit far below the SLO (issue 14 reports
  45.7 % attainment on long prompts).
"""

from __future__ import annotations

from autoscaler.spec import (
    Behavior,
    Coupling,
    Direction,
    Panic,
    PolicyFile,
    PoolSpec,
    RoleSpec,
    ScalingRule,
    SignalSpec,
)
from autoscaler.types import SignalName

KEDA_QUEUE = "keda-queue"
BEST_STATIC = "best-static"
HINDSIGHT = "hindsight"
BASELINES: tuple[str, ...] = (KEDA_QUEUE, BEST_STATIC, HINDSIGHT)

# The `threshold` of the KEDA Prometheus scaler users copy from vLLM/KServe examples: 5 waiting
# requests per replica.
KEDA_QUEUE_THRESHOLD = 5.0

# kube-controller-manager --horizontal-pod-autoscaler-tolerance default.
HPA_TOLERANCE = 0.1
# --horizontal-pod-autoscaler-sync-period default: the tick the HPA baseline runs at.
HPA_SYNC_PERIOD_S = 15.0


def hpa_default_behavior() -> Behavior:
    """The HPA's `behavior` defaults (autoscaling/v2), with our core's extra rules off."""
    return Behavior(
        tolerance=HPA_TOLERANCE,
        # scaleUp: stabilizationWindowSeconds 0; policies Pods 4 / Percent 100 per 15 s; Max.
        scale_up=Direction(
            stabilization_window_s=0,
            rules=(
                ScalingRule(type="pods", value=4, period_s=15),
                ScalingRule(type="percent", value=100, period_s=15),
            ),
            select="max",
        ),
        # scaleDown: stabilizationWindowSeconds 300; policy Percent 100 per 15 s.
        scale_down=Direction(
            stabilization_window_s=300,
            rules=(ScalingRule(type="percent", value=100, period_s=15),),
            select="max",
        ),
        panic=Panic(enabled=False),
        consolidation=False,
        count_pending=False,
        stock_max_step=None,
    )


def keda_queue_role(spec: RoleSpec, *, threshold: float = KEDA_QUEUE_THRESHOLD) -> RoleSpec:
    """One role's ScaledObject: queue depth only, HPA defaults, the role's own bounds."""
    return RoleSpec(
        deployment=spec.deployment,
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        gpus_per_replica=spec.gpus_per_replica,
        max_num_batched_tokens=spec.max_num_batched_tokens,
        cold_start_s=spec.cold_start_s,
        signals=(SignalSpec(signal=SignalName.QUEUE_DEPTH, target=threshold),),
        behavior=hpa_default_behavior(),
        metrics=spec.metrics,
    )


def keda_queue_policy(
    policy: PolicyFile, pool: str, *, threshold: float = KEDA_QUEUE_THRESHOLD
) -> PolicyFile:
    """The keda-queue baseline for one pool of `policy` (see the module docstring).

    No ratio coupling and no GPU budget: one HPA per Deployment knows neither.
    """
    src = policy.pool(pool)
    return PolicyFile(
        pools=(
            PoolSpec(
                name=src.name,
                roles={r: keda_queue_role(s, threshold=threshold) for r, s in src.roles.items()},
                coupling=Coupling(mode="independent"),
            ),
        ),
    )
