"""Hysteresis in time: panic mode and the up/down stabilization windows.

Both are pure functions of (recommendation, remembered recommendations, now). The windows follow
the HPA (`stabilizeRecommendationWithBehaviors`): over the up window the *lowest* recommendation
is the most we scale up to (a spike must persist); over the down window the *highest* is the
fewest we scale down to (load must stay low for the whole window). Worked example, down window
300 s, current 6, recommendations 8 @ t=0, 3 @ t=120, now t=200 -> down = max(8, 3) = 8, up = 3
(no up window) -> clamp(6, up=3, down=8) = 6: hold until t=300 drops the 8.
"""

from __future__ import annotations

from autoscaler.spec import Behavior
from autoscaler.types import Clip


def panic_until(
    *,
    raw: int,
    ready: int,
    behavior: Behavior,
    previous_until: float | None,
    now: float,
) -> float | None:
    """The new end of panic mode (None when not in panic).

    Panic starts (or is extended) when the recommendation reaches `threshold` x ready replicas:
    the load seen by the replicas that serve is far beyond what they can absorb, so waiting out a
    stabilization window would only grow the backlog. With no ready replica the ratio is
    undefined; a cold pool is bootstrapped by the normal path instead.
    """
    p = behavior.panic
    if not p.enabled:
        return None
    if ready > 0 and raw >= p.threshold * ready:
        return now + p.window_s
    if previous_until is not None and previous_until > now:
        return previous_until
    return None


def stabilize(
    *,
    raw: int,
    current: int,
    history: tuple[tuple[float, int], ...],
    behavior: Behavior,
    in_panic: bool,
    now: float,
) -> tuple[int, Clip | None]:
    """Clamp `current` between the up-window minimum and the down-window maximum.

    In panic the up window is skipped (scale up at once) and scale-down is forbidden.
    Returns the stabilized replicas and the reason when it differs from `raw`.
    """
    up_cut = now - behavior.scale_up.stabilization_window_s
    down_cut = now - behavior.scale_down.stabilization_window_s
    up = raw
    down = raw
    for t, rec in history:
        if t > up_cut:
            up = min(up, rec)
        if t > down_cut:
            down = max(down, rec)
    if in_panic:
        up = raw
        down = max(down, current)
    result = current
    result = max(result, up)
    result = min(result, down)
    if result == raw:
        return result, None
    if in_panic and result > raw:
        return result, Clip.PANIC_NO_SCALE_DOWN
    return result, Clip.SCALE_DOWN_STABILIZED if result > raw else Clip.SCALE_UP_STABILIZED
