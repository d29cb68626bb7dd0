"""The one DecisionStore as metric points: what the controller records (decision and the
snapshot it decided on) is what the external-metrics API and the KEDA scaler serve."""

from __future__ import annotations

import asyncio

import pytest

from autoscaler.server import points
from autoscaler.server.store import DecisionStore
from autoscaler.types import PoolObservation, Role, RoleObservation, SignalSample, Snapshot

from .conftest import sample_decision

pytestmark = pytest.mark.external_metrics


async def test_points_match_and_add_samples() -> None:
    """Decision points come through unchanged; samples not behind a need (rates) are added;
    waiting for an update returns the next recorded tick."""
    decision, policy = sample_decision()
    ctrl = DecisionStore()
    view = ctrl
    assert view.snapshot() is None
    snap = Snapshot(
        taken_at=0,
        pools={
            "p": PoolObservation(
                roles={
                    Role.PREFILL: RoleObservation(
                        replicas=2,
                        ready=2,
                        signals={
                            "queue_depth": SignalSample(20.0, 2),
                            "request_rate": SignalSample(3.5, 2),
                            "itl_p90": SignalSample(float("nan"), 2),
                        },
                    )
                }
            )
        },
    )
    waiter = asyncio.create_task(view.wait_for_update(0, 5))
    await asyncio.sleep(0)
    ctrl.record(decision, policy, snapshot=snap)
    got = await waiter
    assert got is not None
    assert got.version == 1
    names = {(p.name, p.labels["role"]): p.value for p in got.points}
    assert names[(points.DESIRED, "prefill")] == 8
    assert names[("pd_request_rate", "prefill")] == 3.5
    assert ("pd_itl_p90", "prefill") not in names
    ours = DecisionStore()  # a Loop hook's record: the decision without the snapshot
    ours.update(decision, policy)
    own = ours.snapshot()
    assert own is not None
    assert {(p.name, p.labels["role"]) for p in own.points} <= set(names)
    assert view.snapshot() is got  # cached per tick
