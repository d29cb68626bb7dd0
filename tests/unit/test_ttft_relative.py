"""The relative TTFT guard (`ttft_relative`): TTFT against the prompt's own prefill time.

Aspects: the spec's checks and signal key (the divisor's floor is in the key), the value the
simulator's source computes from the TTFT and prefill-time histograms (the PromQL form is
checked against a real Prometheus in tests/prom/test_source.py), and the guard's needs: a long
prompt that takes 4 s to prefill does not pin the role at its maximum, where an absolute 0.75 s
guard does.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from autoscaler.decision.signals import signal_need
from autoscaler.sim.backends import SimMetricsSource, _window_quantile, histogram_quantile
from autoscaler.sim.vllm_metrics import REQUEST_TIME_BUCKETS, TTFT_BUCKETS
from autoscaler.spec import RoleSpec, SignalSpec, relative_floor_s, signal_key
from autoscaler.types import RoleObservation, SignalName, SignalSample


def sig(**kw: Any) -> SignalSpec:
    return SignalSpec.model_validate({"signal": "ttft_relative", "target": 3.0, **kw})


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"signal": "ttft", "target": 0.75, "floor_s": 0.5}, "floor_s applies to ttft_relative"),
        ({"signal": "ttft_relative", "target": 1.0}, "must be > 1"),
        ({"signal": "ttft_relative", "target": 0.5, "floor_s": 0.5}, "must be > 1"),
        ({"signal": "ttft_relative", "target": 3.0, "floor_s": 0.0}, "greater than or equal"),
    ],
)
def test_spec_rejects(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        SignalSpec.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "key", "floor"),
    [
        ({}, "ttft_relative_p90_f167ms", 0.167),  # 0.5 s / 3
        ({"floor_s": 0.75}, "ttft_relative_p90_f250ms", 0.25),
        ({"floor_s": 0.75, "quantile": 0.99, "target": 5.0}, "ttft_relative_p99_f150ms", 0.15),
    ],
)
def test_key_carries_the_floor(fields: dict[str, Any], key: str, floor: float) -> None:
    s = sig(**fields)
    assert signal_key(s) == key
    assert relative_floor_s(s) == pytest.approx(floor)


def _counts(bounds: tuple[float, ...], values: list[float]) -> list[float]:
    out = [0.0] * (len(bounds) + 1)
    for v in values:
        i = next((k for k, b in enumerate(bounds) if v <= b), len(bounds))
        out[i] += 1
    return out


class _Snap:
    def __init__(self, counts: list[float]) -> None:
        self.counts = counts


class _Scrape:
    def __init__(self, ttft: list[float], prefill: list[float]) -> None:
        self.ttft = _Snap(ttft)
        self.prefill_time = _Snap(prefill)


@pytest.mark.parametrize(
    ("ttft_s", "prefill_s"),
    [
        (0.3, 0.05),  # short prompts: the 167 ms floor is the divisor
        (6.0, 4.0),  # a long prompt, hardly queued: about 1.5 x its prefill
        (20.0, 4.0),  # a long prompt queued behind others: 5 x
    ],
)
def test_sim_value_is_ttft_over_clamped_prefill(ttft_s: float, prefill_s: float) -> None:
    """Per window: the TTFT quantile over max(the prefill-time quantile, floor / slowdown),
    each from the summed bucket increases of the replicas' windows."""
    s = sig()
    zero_t, zero_p = _counts(TTFT_BUCKETS, []), _counts(REQUEST_TIME_BUCKETS, [])
    full_t = _counts(TTFT_BUCKETS, [ttft_s] * 10)
    full_p = _counts(REQUEST_TIME_BUCKETS, [prefill_s] * 10)
    windows: Any = [[(0.0, _Scrape(zero_t, zero_p)), (60.0, _Scrape(full_t, full_p))]]
    ttft = _window_quantile(0.9, TTFT_BUCKETS, lambda x: x.ttft, windows)
    pre = _window_quantile(0.9, REQUEST_TIME_BUCKETS, lambda x: x.prefill_time, windows)
    assert ttft.value == pytest.approx(histogram_quantile(0.9, TTFT_BUCKETS, full_t))
    assert pre.value == pytest.approx(histogram_quantile(0.9, REQUEST_TIME_BUCKETS, full_p))
    src = SimMetricsSource.__new__(SimMetricsSource)
    got = src._signal(s, _role(s), windows)
    want = float(ttft.value or 0) / max(float(pre.value or 0), relative_floor_s(s))
    assert got.value == pytest.approx(want)
    assert got.replicas == 1


def _role(s: SignalSpec) -> RoleSpec:
    return RoleSpec.model_validate(
        {
            "deployment": {"namespace": "t", "name": "p"},
            "max_replicas": 16,
            "signals": [s.model_dump(exclude_none=True)],
        }
    )


@pytest.mark.parametrize(
    ("value", "want", "keep"),
    [
        # TTFT p90 at 1.5 x the prefill p90 (a 60k prompt: 6 s for 4 s of prefill): within the
        # slowdown of 3 -> no push, and under 3 x (1 - 0.1) -> no objection to fewer.
        (1.5, 4, 0),
        # In the tolerance band (2.7-3.3): hold.
        (3.0, 4, 4),
        # 5 x its prefill time: push up (capped at 2 x per step, as every guard).
        (5.0, 7, 4),
    ],
)
def test_guard_needs(value: float, want: int, keep: int) -> None:
    s = sig()
    role = _role(s)
    obs = RoleObservation(
        replicas=4,
        ready=4,
        signals={signal_key(s): SignalSample(value, 4), "request_rate": SignalSample(2.0, 4)},
    )
    need = signal_need(s, role, obs)
    assert (need.want, need.keep) == (want, keep)


def test_long_prompt_absolute_guard_pins_relative_does_not() -> None:
    """The same window (TTFT p90 6 s for a 4 s prefill p90): an absolute 0.75 s guard asks for
    more replicas every tick, however many there are; the relative guard is satisfied."""
    absolute = SignalSpec(signal=SignalName.TTFT, target=0.75)
    relative = sig()
    for s, value, more in ((absolute, 6.0, True), (relative, 6.0 / 4.0, False)):
        obs = RoleObservation(
            replicas=16, ready=16, signals={signal_key(s): SignalSample(value, 16)}
        )
        need = signal_need(s, _role(s), obs)
        assert (need.want > 16) is more
