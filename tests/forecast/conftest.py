"""Shared builders for the forecast tests: a role context, a forecast policy with inline refits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from autoscaler.forecast import refit
from autoscaler.policy.base import RoleContext
from autoscaler.policy.forecast import ForecastConfig, ForecastPolicy
from autoscaler.spec import RoleSpec
from autoscaler.types import Role, RoleObservation, SignalSample


@pytest.fixture(autouse=True)
def inline_refits() -> Iterator[None]:
    """Every test refits synchronously: deterministic, and no thread outlives a test."""
    previous = refit.set_default(refit.Inline())
    yield
    refit.set_default(previous)


def role_spec(**overrides: Any) -> RoleSpec:
    base: dict[str, Any] = {
        "deployment": {"namespace": "t", "name": "p-prefill"},
        "min_replicas": 1,
        "max_replicas": 100,
        "cold_start_s": 90,
        "signals": [{"signal": "batched_tokens", "target": 0.5}],
    }
    base.update(overrides)
    return RoleSpec.model_validate(base)


def policy(spec: RoleSpec | None = None, **config: Any) -> ForecastPolicy:
    return ForecastPolicy(
        ForecastConfig.model_validate(config),
        pool="p",
        role=Role.PREFILL,
        spec=spec or role_spec(),
        refitter=refit.Inline(),
    )


def ctx(
    now: float,
    *,
    replicas: int,
    spec: RoleSpec | None = None,
    pending: int = 0,
    **signals: float | None,
) -> RoleContext:
    ready = replicas - pending
    obs = RoleObservation(
        replicas=replicas,
        ready=ready,
        pending=pending,
        signals={k: SignalSample(value=v, replicas=ready) for k, v in signals.items()},
    )
    return RoleContext(pool="p", role=Role.PREFILL, spec=spec or role_spec(), obs=obs, now=now)
