"""Edges of the decision core found by running the HPA's and Knative's own test cases through
`decide` (issue 12): the inclusive tolerance edge, panic against `select: disabled`, an empty
state seeding the stabilization windows, and percent-only scale-up from zero replicas.
The deliberate differences that remain are in docs/decision-differences.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler import errors
from autoscaler.decision.state import ScaleState
from autoscaler.policy.load import load_policy_file
from autoscaler.testing import Ticker, obs
from tests.unit.test_decision_core import Q5, agg


@pytest.mark.parametrize(
    ("replicas", "mean", "target", "want"),
    [
        # HPA: 10 pods at 11 against 10 with tolerance 0.1 hold (11/10 - 1 is 0.1000...09 in
        # floating point, which a plain `<=` puts outside the deadband).
        pytest.param(10, 11.0, 10.0, 10, id="up-edge-holds"),
        pytest.param(10, 9.0, 10.0, 10, id="down-edge-holds"),
        pytest.param(10, 11.1, 10.0, 12, id="past-up-edge-scales"),
        # 0.3 / 0.1 is not exact either: 10 replicas at 0.33 against 0.3 is exactly +10 %.
        pytest.param(10, 0.33, 0.3, 10, id="up-edge-fractional"),
    ],
)
def test_tolerance_is_inclusive_at_its_edge(
    replicas: int, mean: float, target: float, want: int
) -> None:
    t = agg([{"signal": "running", "target": target}], consolidation=False)
    (d,) = t.tick(0, aggregated=obs(replicas, running=mean)).values()
    assert d.desired == want, d.driver


def test_latency_guard_edge_holds() -> None:
    """A guard exactly at target*(1+tolerance) neither asks for more nor lets go."""
    t = agg([{"signal": "ttft", "target": 1.0, "quantile": 0.9}])
    (d,) = t.tick(0, aggregated=obs(4, ttft=1.1)).values()
    assert d.desired == 4


def test_panic_respects_scale_up_disabled() -> None:
    """HPA: `selectPolicy: Disabled` holds whatever the load; panic must not override it."""
    t = agg(
        Q5,
        scale_up={"stabilization_window_s": 0, "select": "disabled"},
        panic={"enabled": True, "threshold": 2.0, "window_s": 60},
    )
    (d,) = t.tick(0, aggregated=obs(1, queue_depth=40.0)).values()
    assert d.desired == 1
    assert "scale-up-limit" in d.clipped_by


def test_panic_still_lifts_rate_limits_when_scale_up_is_enabled() -> None:
    t = agg(
        Q5,
        scale_up={"stabilization_window_s": 0, "rules": [{"type": "pods", "value": 1,
                                                          "period_s": 60}]},
        panic={"enabled": True, "threshold": 2.0, "window_s": 60},
    )
    (d,) = t.tick(0, aggregated=obs(1, queue_depth=40.0)).values()
    assert (d.desired, d.panic) == (8, True)


@pytest.mark.parametrize("restart", [False, True], ids=["first-start", "lost-state"])
def test_empty_state_seeds_down_window_with_current(restart: bool) -> None:
    """HPA: a new autoscaler seeds its recommendations with the current replicas, so the first
    tick does not drop straight down (5 replicas, load for 3, 300 s window: HPA 5)."""
    t = agg([{"signal": "running", "target": 10}], scale_down={"stabilization_window_s": 300})
    if restart:
        t.tick(0, aggregated=obs(5, running=10.0))
        t.state = ScaleState()  # the state object was lost
    (d,) = t.tick(100, aggregated=obs(5, running=6.0)).values()
    assert (d.desired, d.clipped_by) == (5, ("scale-down-stabilized",))
    (d,) = t.tick(399, aggregated=obs(5, running=6.0)).values()
    assert d.desired == 5
    (d,) = t.tick(401, aggregated=obs(5, running=6.0)).values()
    assert d.desired == 4  # ceil(30 / (10 * 0.9)) = 4 once the seed left the window


def test_empty_state_does_not_hold_up_scale_up() -> None:
    """The seed sits at `now`, outside a zero-length up window: a first tick scales up."""
    t = agg(Q5, scale_down={"stabilization_window_s": 300})
    (d,) = t.tick(0, aggregated=obs(2, queue_depth=10.0)).values()
    assert d.desired == 4


def test_percent_only_scale_up_leaves_zero() -> None:
    """Knative grows from max(1, ready): 100 % of 0 replicas must not be 0 for ever. A role
    someone scaled to 0 (min_replicas 1) with a total signal asking for 5 goes to 2, not 1."""
    t = Ticker(
        agg(
            Q5,
            scale_up={
                "stabilization_window_s": 0,
                "rules": [{"type": "percent", "value": 100, "period_s": 60}],
            },
        ).policy
    )
    (d,) = t.tick(0, aggregated=obs(0, reporting=0, queue_depth=25.0)).values()
    assert (d.desired, d.clipped_by) == (2, ("scale-up-limit",))


def test_min_replicas_zero_is_rejected_with_the_reason(tmp_path: Path) -> None:
    """No built-in signal exists at zero replicas: a role at 0 would hold there for ever."""
    f = tmp_path / "zero.yaml"
    f.write_text(
        "pools:\n  - name: p\n    roles:\n      aggregated:\n"
        "        deployment: {namespace: a, name: b}\n        min_replicas: 0\n"
        "        max_replicas: 3\n        signals: [{signal: queue_depth, target: 5}]\n"
        "        policies: [{kind: forecast}]\n",
        encoding="utf-8",
    )
    with pytest.raises(errors.ConfigError) as exc:
        load_policy_file(f)
    (line,) = exc.value.problems
    assert line.startswith(f"{f}: pools.0.roles.aggregated: min_replicas 0: no signal exists")
    assert "stay at 0" in line
