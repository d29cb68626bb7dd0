"""Reasons are data: a decision carries a `Driver` record and `Clip` codes; the prose of logs,
Events and the status ConfigMap is rendered from them, and metric labels are read from the
data (never parsed out of the prose). Strings and label values are the ones always used."""

from __future__ import annotations

import pytest

from autoscaler.telemetry import driver_of
from autoscaler.testing import Ticker, obs, pool_policy
from autoscaler.types import Clip, Clipped, Driver, DriverKind, Need, Role

UP = Need(source="queue_depth", want=4, keep=2, value=12.0, target=5.0)
KV = Need(source="kv_cache", want=2, keep=1, value=0.2, target=0.8)
FLOOR = Need(source="floor", want=3, keep=3, value=3.0, target=3.0, note="plug-in floor")
ODD = Need(source="my policy (v2)", want=3, keep=3, value=1.0, target=1.0)


@pytest.mark.parametrize(("driver", "prose", "label"), [
    (Driver(DriverKind.SCALE_UP, UP), "queue_depth=12 target=5 -> 4", "queue_depth"),
    (Driver(DriverKind.HOLD, FLOOR), "hold: floor=3 target=3 -> 3 (plug-in floor)", "floor"),
    (Driver(DriverKind.SCALE_DOWN, KV), "scale-down: kv_cache=0.2 target=0.8 -> 2 keep 1",
     "kv_cache"),
    (Driver(DriverKind.MISSING_DATA), "hold: all signals missing", "missing-data"),
    (Driver(DriverKind.MISSING_DATA_FLOOR, missing_for_s=301.4, floor=2),
     "missing data for 301s: floor 2", "missing-data-floor"),
    (Driver(DriverKind.HOLD, KV).noted("replicas pending (2 will absorb it)"),
     "hold: kv_cache=0.2 target=0.8 -> 2; replicas pending (2 will absorb it)", "kv_cache"),
    (Driver(DriverKind.SCALE_UP, ODD), "my policy (v2)=1 target=1 -> 3", "other"),
    (Driver(DriverKind.HOLD), "", "none"),
], ids=["up", "hold-with-note", "down", "missing", "missing-floor", "noted", "odd-source",
        "nothing-yet"])
def test_driver_renders_prose_and_a_bounded_label(driver: Driver, prose: str, label: str) -> None:
    assert driver.render() == prose
    assert driver.label() == label


def test_clip_codes_keep_the_strings() -> None:
    """The codes are today's strings; a ratio clip renders its parameters, labels its code."""
    assert Clip.SCALE_UP_LIMIT == "scale-up-limit"
    assert str(Clipped(Clip.RATIO, "1:3")) == "ratio 1:3"
    assert str(Clipped(Clip.GPU_BUDGET)) == "gpu-budget"


def test_a_decision_carries_data_and_prose() -> None:
    """From the core: the cause names the need, the clip is a code, the prose agrees."""
    t = Ticker(pool_policy(aggregated={"signals": [{"signal": "queue_depth", "target": 5}],
                                       "max_replicas": 3}))
    d = t.tick(0, aggregated=obs(2, queue_depth=20.0))[Role.AGGREGATED]
    assert d.cause.kind is DriverKind.SCALE_UP
    assert d.cause.need is not None
    assert d.cause.need.source == "queue_depth"
    assert [c.code for c in d.clips] == [Clip.MAX_REPLICAS]
    assert d.clipped_by == ("max-replicas",)
    assert d.driver == d.cause.render()
    assert d.driver.startswith("queue_depth=20 target=5 -> ")
    assert driver_of(d) == "queue_depth"
