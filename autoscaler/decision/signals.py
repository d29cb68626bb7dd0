"""Reactive signals -> one `Need` per signal (the HPA's target-tracking formula, with care).

For a load signal with per-replica mean `v` over `n` reporting replicas and target `t`:
    want = ceil(n * v / t)                        (HPA: ceil(ready * value / target))
    want = current   while |v / t - 1| <= tolerance  (the deadband)
    keep = ceil(n * v / (t * (1 - tolerance)))    (consolidation: the fewest replicas that would
                                                   still sit under target*(1-tolerance))
Worked example: 3 replicas with 8 waiting requests each, target 5, tolerance 0.1:
    v/t = 1.6 > 1.1 -> want = ceil(24 / 5) = 5; keep = ceil(24 / 4.5) = 6 (unused on the way up).
Latency quantiles (TTFT/ITL) are guards: above target*(1+tolerance) they ask for more replicas,
under target*(1-tolerance) they do not object to fewer, in between they veto a scale-down.
"""

from __future__ import annotations

import math

from autoscaler.spec import RoleSpec, SignalSpec, signal_key
from autoscaler.types import (
    GUARD_SIGNALS,
    REQUEST_RATE,
    STOCK_SIGNALS,
    TOTAL_SIGNALS,
    Need,
    RoleObservation,
)

# ceil() of a ratio that is an exact integer up to float noise (e.g. 15 / 5 * 1.0000000001)
# must not round up a whole replica; likewise the deadband is inclusive at its edge, where float
# division lands on either side (11 / 10 - 1 = 0.10000000000000009 > 0.1; the HPA holds there).
_EPS = 1e-9

# A latency guard asks for at most this factor more replicas in one step: latency is not linear
# in replicas (queueing makes it explode near saturation), so its ratio overstates the need.
_GUARD_MAX_STEP = 2.0


# No role needs more replicas than this in one decision. A need beyond it (a value of 1e300
# over a target of 1e-300) is clamped here, where it is computed, so nothing downstream ever
# holds an integer too large for a float (panic's want/ready ratio, rate-limit percentages)
# and max_replicas clips it further.
MAX_WANT = 1_000_000


def _ceil(x: float) -> int:
    if x >= MAX_WANT:
        return MAX_WANT
    return max(0, math.ceil(x - _EPS))


def signal_need(sig: SignalSpec, spec: RoleSpec, obs: RoleObservation) -> Need:
    """The need of one configured signal given this tick's observation."""
    key = signal_key(sig)
    current = obs.replicas
    tol = spec.behavior.tolerance if sig.tolerance is None else sig.tolerance
    sample = obs.signals.get(key)
    if sig.signal in GUARD_SIGNALS and (sample is None or sample.missing) and _idle(obs):
        # A latency quantile is NaN when no request was observed in the window: with zero
        # request rate that is idleness, not an outage, and a guard has nothing to guard.
        return Need(key, current, 0, None, sig.target, note="idle: no requests in window")
    if sample is None or sample.missing:
        detail = sample.detail if sample is not None and sample.detail else "no data"
        return Need(
            source=key,
            want=current,
            keep=current,
            value=None,
            target=sig.target,
            blocks_down=True,
            note=f"missing ({detail})",
        )
    value = float(sample.value)  # type: ignore[arg-type]  # not missing => not None
    if sig.signal in TOTAL_SIGNALS:
        # The source reports the role's total; the target is per replica.
        value /= max(sample.replicas, 1)
    if not math.isfinite(value / sig.target) or value < 0:
        # A source bug or a hostile answer that got through (sources drop such pods): not a
        # number to scale on. Held like missing data, with the value in the reason.
        return Need(
            source=key,
            want=current,
            keep=current,
            value=None,
            target=sig.target,
            blocks_down=True,
            note=f"invalid value {value!r} (target {sig.target!r})",
        )
    # Fewer reporting replicas than ready ones: the silent ones may be the loaded ones (HPA
    # counts them as 100 % on a scale-down), so this signal may push up but never down.
    partial = sample.replicas < obs.ready
    note = f"partial ({sample.replicas}/{obs.ready} replicas)" if partial else ""
    ratio = value / sig.target

    if sig.signal in GUARD_SIGNALS:
        if ratio > 1 + tol + _EPS:
            base = max(current, 1)
            want = max(current + 1, _ceil(base * min(ratio, _GUARD_MAX_STEP)))
        else:
            want = current
        keep = 0 if ratio <= 1 - tol + _EPS and not partial else current
        # A latency guard lags its cause just like a queue does: treat it as a stock signal.
        return Need(
            key,
            want,
            keep,
            value,
            sig.target,
            stock=True,
            blocks_down=partial,
            note=note,
            windowed=True,
        )

    reporting = sample.replicas if sample.replicas > 0 else max(obs.ready, 1)
    total = value * reporting
    inside = _in_deadband(ratio, tol)
    want = current if inside else _ceil(total / sig.target)
    step = spec.behavior.stock_max_step
    if sig.signal in STOCK_SIGNALS and want > current and step is not None:
        # A backlog says that capacity is short, not by how much: most of it is drained by the
        # ready replicas before a new one could serve (1-5 min). One step may at most multiply
        # the replicas by `step`; while they start, the pending cap holds, and flow signals
        # size the rest.
        want = min(want, max(current + 1, _ceil(current * step)))
    if spec.behavior.consolidation:
        keep = _ceil(total / (sig.target * (1 - tol)))
    else:
        # The HPA formula both ways, deadband included: inside it the HPA returns the current
        # count. Without this a fleet of >= 10 would shrink at ratio 0.9-1.0 (12 replicas at
        # 0.917 x target: ceil(11.0) = 11) where the HPA holds.
        keep = current if inside else _ceil(total / sig.target)
    if partial:
        keep = max(keep, current)
    return Need(
        source=key,
        want=want,
        keep=keep,
        value=value,
        target=sig.target,
        stock=sig.signal in STOCK_SIGNALS,
        blocks_down=partial,
        note=note,
    )


def _in_deadband(ratio: float, tol: float) -> bool:
    """|ratio - 1| <= tol, inclusive at the edge up to float noise (see _EPS)."""
    return abs(ratio - 1) <= tol + _EPS


def _idle(obs: RoleObservation) -> bool:
    rate = obs.signals.get(REQUEST_RATE)
    return rate is not None and not rate.missing and (rate.value or 0.0) <= _EPS


def signal_needs(spec: RoleSpec, obs: RoleObservation) -> list[Need]:
    return [signal_need(s, spec, obs) for s in spec.signals]
