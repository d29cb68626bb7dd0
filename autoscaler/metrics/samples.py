"""Prometheus rows -> `SignalSample`s: the pure half of the Prometheus source.

Every value is judged by `validate.value_problem` (NaN/Inf, negative, absurd) and pods whose
newest sample is too old are left out; what remains is combined per role (mean, or sum for
rates) with the reasons a sample is partial or missing, which `PrometheusSource` counts and logs.
No I/O here, so unit tables can drive it row by row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from autoscaler.metrics import lengths, queries, validate
from autoscaler.types import SignalSample

Rows = list[tuple[Mapping[str, str], float]]


def by_role(
    query: queries.Query, rows: Iterable[validate.Row], *, namespace_label: str
) -> dict[tuple[str, str], Rows]:
    """A query's rows split into the (pool, role) pairs it covers: a selector role's row by its
    pd_pool/pd_role tags, a derived role's by (namespace, pd_deployment). Rows of anything else
    (a Deployment no role reads, a pod whose name is not a ReplicaSet's) are dropped."""
    grouped: dict[tuple[str, str], Rows] = {pr: [] for pr in query.roles}
    for row in rows:
        labels = row.labels
        pool = labels.get(queries.POOL_LABEL)
        if pool is not None:
            owners: tuple[tuple[str, str], ...] = ((pool, labels.get(queries.ROLE_LABEL, "")),)
        else:
            dep = (labels.get(namespace_label, ""), labels.get(queries.DEPLOYMENT_LABEL, ""))
            owners = query.deployments.get(dep, ())
        for pr in owners:
            if pr in grouped:
                grouped[pr].append((labels, row.value))
    return grouped


def per_pod(
    kind: queries.Kind,
    rows: list[tuple[Mapping[str, str], float]],
    *,
    scale: float,
    pod_label: str,
    max_sample_age_s: float,
) -> tuple[SignalSample, tuple[str, ...]]:
    """Combine per-pod series: drop pods whose value cannot be a sample (NaN/Inf, negative,
    absurd: validate.value_problem) and stale pods, then mean (or sum for rates)."""
    values: dict[str, float] = {}
    ages: dict[str, float] = {}
    for labels, v in rows:
        pod = labels.get(pod_label, "")
        if labels.get(queries.PART_LABEL) == "age":
            ages[pod] = v
        else:
            values[pod] = v
    # The usual case, every pod fresh and every value a possible one, without the bookkeeping
    # of reasons below (tens of thousands of pods per tick at 1,000 pools, issue 16). Each test
    # is the negation of a `value_problem` / staleness rule; NaN fails every comparison.
    age_ok = min(max_sample_age_s, validate.MAX_VALUE)
    if values and all(
        0.0 <= v <= validate.MAX_VALUE and -validate.MAX_VALUE <= ages.get(p, 0.0) <= age_ok
        for p, v in values.items()
    ):
        n = len(values)
        total = sum(values.values())
        mean = total if kind is queries.Kind.SUM else total / n
        return SignalSample(value=mean / scale, replicas=n, detail=f"{n} pods"), ()
    bad: dict[str, list[str]] = {}
    for p, v in values.items():
        why = validate.value_problem(v)
        if why is not None:
            bad.setdefault(why, []).append(p)
    excluded = {p for pods in bad.values() for p in pods}

    def is_stale(p: str) -> bool:
        age = ages.get(p, 0.0)
        # An age that is itself no number is no evidence of freshness.
        return validate.value_problem(age, part="age") is not None or (
            age > max_sample_age_s
        )

    stale = sorted(p for p in values if p not in excluded and is_stale(p))
    good = [v for p, v in values.items() if p not in excluded and p not in stale]
    reasons: list[str] = []
    notes: list[str] = []
    for why in ("nan", "negative", "absurd"):
        if why in bad:
            reasons.append(why)
            notes.append(f"{why}: {', '.join(sorted(bad[why]))}")
    if stale:
        reasons.append("stale")
        notes.append(f"stale: {', '.join(stale)}")
    if not values:
        reasons.append("empty")
        notes.append("no series")
    if not good:
        return SignalSample(value=None, replicas=0, detail="; ".join(notes)), tuple(reasons)
    value = sum(good) if kind is queries.Kind.SUM else sum(good) / len(good)
    detail = "; ".join([f"{len(good)} pods", *notes])
    return SignalSample(value=value / scale, replicas=len(good), detail=detail), tuple(reasons)


def range_points(rows: Iterable[Any]) -> list[tuple[float, float]]:
    """(time, value) pairs of matrix rows, keeping only well-formed points whose value a rate
    or a concurrency can take (validate.value_problem): a malformed row or point is dropped, as
    a missing step is."""
    out: list[tuple[float, float]] = []
    for row in rows:
        values = row.get("values") if isinstance(row, dict) else None
        if not isinstance(values, list):
            continue
        for pair in values:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                continue
            try:
                t, v = float(pair[0]), float(pair[1])
            except (TypeError, ValueError):
                continue
            if math.isfinite(t) and validate.value_problem(v) is None:
                out.append((t, v))
    return out


def quantile(
    rows: list[tuple[Mapping[str, str], float]],
) -> tuple[SignalSample, tuple[str, ...]]:
    """A role's quantile from its value/rate/replicas parts."""
    parts = {labels.get(queries.PART_LABEL, ""): v for labels, v in rows}
    replicas = parts.get("replicas", 0.0)
    rate = parts.get("rate")
    value = parts.get("value")
    if rate is None or validate.value_problem(replicas) is not None or replicas < 1:
        return SignalSample(value=None, replicas=0, detail="no series"), ("empty",)
    n = int(replicas)
    if rate == 0:
        # No observation in the window (no request got its first token): nothing violated the
        # SLO. Reported as 0 so an idle role is not frozen by "missing" data; a latency guard
        # only ever vetoes a scale-down, it never drives one.
        return SignalSample(value=0.0, replicas=n, detail=f"{n} pods; idle: no observations"), ()
    if value is None:
        return SignalSample(value=None, replicas=n, detail=f"{n} pods; nan quantile"), ("nan",)
    why = validate.value_problem(value) or validate.value_problem(rate)
    if why is not None:
        detail = f"{n} pods; {why} quantile"
        return SignalSample(value=None, replicas=n, detail=detail), (why,)
    return SignalSample(value=value, replicas=n, detail=f"{n} pods"), ()


def spread(
    rows: list[tuple[Mapping[str, str], float]],
) -> tuple[SignalSample, tuple[str, ...]]:
    """A role's prompt-length CV from its bucket/sum/count/replicas parts (Kind.SPREAD): the
    cumulative bucket rates are differenced into per-bucket rates (`le` sorted as numbers,
    +Inf last) for `lengths.prompt_length_cv`."""
    cumulative: dict[float, float] = {}
    parts: dict[str, float] = {}
    for labels, v in rows:
        part = labels.get(queries.PART_LABEL, "")
        if part == "bucket":
            try:
                le = float(labels.get("le", ""))
            except ValueError:
                continue
            if not math.isnan(le):
                cumulative[le] = v
        else:
            parts[part] = v
    replicas = parts.get("replicas", 0.0)
    if validate.value_problem(replicas) is not None or replicas < 1 or not cumulative:
        return SignalSample(value=None, replicas=0, detail="no series"), ("empty",)
    n = int(replicas)
    total, count = parts.get("sum"), parts.get("count")
    if total is None or count is None or count <= 0:
        return SignalSample(value=None, replicas=n, detail=f"{n} pods; no request finished"), ()
    les = sorted(cumulative)
    if les[-1] != math.inf:
        return SignalSample(value=None, replicas=n, detail=f"{n} pods; no +Inf bucket"), ("nan",)
    counts: list[float] = []
    below = 0.0
    for le in les:
        counts.append(max(cumulative[le] - below, 0.0))
        below = max(below, cumulative[le])
    cv = lengths.prompt_length_cv(les[:-1], counts, total / count)
    if cv is None or validate.value_problem(cv) is not None:
        return SignalSample(value=None, replicas=n, detail=f"{n} pods; no spread"), ("nan",)
    return SignalSample(value=cv, replicas=n, detail=f"{n} pods"), ()
