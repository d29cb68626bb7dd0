"""Hysteresis in rate and range: HPA-style rate limits and min/max bounds.

Rate limits follow the HPA (`convertDesiredReplicasWithBehaviorRate`): for each rule, the
replicas at the start of its period are `current - added + removed` within the period; a `pods`
rule allows start +/- value, a `percent` rule start * (1 +/- value/100). `select: max` picks the
rule allowing the biggest change, `min` the smallest, `disabled` forbids the direction.
Worked example, scale-up rules pods 4 / percent 100 per 15 s, current 3 after +1 five seconds ago:
start = 3 - 1 = 2 -> pods: 6, percent: 4 -> max -> at most 6.
"""

from __future__ import annotations

import math

from autoscaler.spec import Direction, RoleSpec
from autoscaler.types import Clip


def _changes_within(
    events: tuple[tuple[float, int], ...], *, period_s: float, now: float
) -> tuple[int, int]:
    cut = now - period_s
    added = sum(d for t, d in events if t > cut and d > 0)
    removed = -sum(d for t, d in events if t > cut and d < 0)
    return added, removed


def _limit(
    direction: Direction,
    *,
    up: bool,
    current: int,
    events: tuple[tuple[float, int], ...],
    now: float,
) -> int | None:
    """The furthest replicas the rules allow in this direction (None: unlimited)."""
    if direction.select == "disabled":
        return current
    if not direction.rules:
        return None
    proposals = []
    for rule in direction.rules:
        added, removed = _changes_within(events, period_s=rule.period_s, now=now)
        start = current - added + removed
        if up:
            # A percentage of 0 is 0: like knative (max(1, ready)), grow from at least one, or
            # a percent-only rule could never leave zero replicas.
            p = (
                start + rule.value
                if rule.type == "pods"
                else math.ceil(max(start, 1) * (1 + rule.value / 100))
            )
        else:
            p = (
                start - rule.value
                if rule.type == "pods"
                else math.floor(start * (1 - rule.value / 100))
            )
        proposals.append(p)
    if up:
        best = max(proposals) if direction.select == "max" else min(proposals)
        return max(best, current)
    best = min(proposals) if direction.select == "max" else max(proposals)
    return min(best, current)


def rate_limit(
    desired: int,
    *,
    current: int,
    spec: RoleSpec,
    events: tuple[tuple[float, int], ...],
    in_panic: bool,
    now: float,
) -> tuple[int, Clip | None]:
    """Apply the role's rate limits; panic lifts the scale-up limit (immediate scale-up) unless
    scale-up is disabled: `select: disabled` is the operator's word and panic does not override
    it (the HPA holds there too)."""
    if desired > current:
        if in_panic and spec.behavior.scale_up.select != "disabled":
            return desired, None
        lim = _limit(spec.behavior.scale_up, up=True, current=current, events=events, now=now)
        if lim is not None and desired > lim:
            return lim, Clip.SCALE_UP_LIMIT
    elif desired < current:
        lim = _limit(spec.behavior.scale_down, up=False, current=current, events=events, now=now)
        if lim is not None and desired < lim:
            return lim, Clip.SCALE_DOWN_LIMIT
    return desired, None


def bound(desired: int, spec: RoleSpec) -> tuple[int, Clip | None]:
    if desired < spec.min_replicas:
        return spec.min_replicas, Clip.MIN_REPLICAS
    if desired > spec.max_replicas:
        return spec.max_replicas, Clip.MAX_REPLICAS
    return desired, None
