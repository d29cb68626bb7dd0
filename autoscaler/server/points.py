"""A decision as metric points: the names and labels the adoption servers export.

Each pool and role exports `pd_desired_replicas` (the final, already stabilized and limited
decision), `pd_current_replicas`, `pd_recommended_replicas`, and the value behind each need and
sample as `pd_<key>`, labelled `pool`, `role`, `namespace` and `deployment`. The
external-metrics API and the KEDA scaler serve exactly these; neither imports the other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoscaler.spec import PolicyFile
    from autoscaler.types import Decision, Role, SignalSample

DESIRED = "pd_desired_replicas"
CURRENT = "pd_current_replicas"
RECOMMENDED = "pd_recommended_replicas"
# Signal and forecast values are exported as pd_<key>: the prefix keeps them apart from any
# other provider's names in HPA specs and makes them greppable.
PREFIX = "pd_"

@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One value one pool/role exports under one metric name."""

    name: str
    labels: Mapping[str, str]
    value: float


def metric_name(source: str) -> str:
    """Need source / sample key -> exported metric name: `queue_depth` -> `pd_queue_depth`,
    `forecast:request_rate` -> `pd_forecast_request_rate` (names stay path- and label-safe)."""
    return PREFIX + re.sub(r"[^a-z0-9_]", "_", source.lower())


def _finite(v: float | None) -> float | None:
    if v is None or math.isnan(v) or math.isinf(v):
        return None
    return v


def points_from_decision(
    decision: Decision,
    policy: PolicyFile,
    samples: Mapping[tuple[str, Role], Mapping[str, SignalSample]] | None = None,
) -> list[MetricPoint]:
    """Every metric point a decision yields: replica counts, each need's value (signals and
    forecasts), and optionally raw samples not already covered by a need (e.g. request rates).
    Missing values are left out, so a consumer sees "no data" rather than a made-up zero."""
    points: list[MetricPoint] = []
    for pool_name, pd in decision.pools.items():
        try:
            pool = policy.pool(pool_name)
        except KeyError:
            continue
        for role, rd in pd.roles.items():
            spec = pool.roles.get(role)
            if spec is None:
                continue
            labels = {
                "pool": pool_name,
                "role": role.value,
                "namespace": spec.deployment.namespace,
                "deployment": spec.deployment.name,
            }
            points.append(MetricPoint(DESIRED, labels, float(rd.desired)))
            points.append(MetricPoint(CURRENT, labels, float(rd.current)))
            points.append(MetricPoint(RECOMMENDED, labels, float(rd.recommended)))
            seen: set[str] = set()
            for need in rd.needs:
                value = _finite(need.value)
                name = metric_name(need.source)
                if value is None or name in seen:
                    continue
                seen.add(name)
                points.append(MetricPoint(name, labels, value))
            for key, sample in (samples or {}).get((pool_name, role), {}).items():
                name = metric_name(key)
                value = None if sample.missing else _finite(sample.value)
                if value is None or name in seen:
                    continue
                seen.add(name)
                points.append(MetricPoint(name, labels, value))
    return points


def rfc3339(ts: float) -> str:
    """A wall-clock time as the API answers carry it (whole seconds, UTC)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

