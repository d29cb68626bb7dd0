"""BinnedHistory: bin means, gaps as NaN, bounded memory, bulk load after a restart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscaler.forecast.history import BinnedHistory


def test_samples_average_into_bins() -> None:
    """Samples within one bin are averaged; a bin is stored when the next one starts."""
    h = BinnedHistory(bin_s=60, capacity=10)
    for t, v in [(0, 1.0), (15, 3.0), (45, 5.0)]:
        assert h.record(t, v) == 0
    assert len(h) == 0
    assert h.record(60, 7.0) == 1
    assert h.tail(5).tolist() == [3.0]


def test_gaps_are_nan_not_zero() -> None:
    """Bins without samples (an outage) are NaN, so no model reads a rate that never was."""
    h = BinnedHistory(bin_s=60, capacity=10)
    h.record(0, 2.0)
    h.record(15, None)
    assert h.record(240, 4.0) == 4  # bins 0..3 closed
    out = h.tail(10)
    assert out[0] == 2.0
    assert np.isnan(out[1:]).all()
    assert h.observed() == 1


def test_memory_is_bounded_and_newest_bins_kept() -> None:
    """A long run keeps exactly `capacity` bins in a fixed-size buffer, oldest first."""
    h = BinnedHistory(bin_s=60, capacity=100)
    before = h.nbytes
    for i in range(5000 * 4):
        h.record(i * 15.0, float(i // 4))
    assert h.nbytes == before == 100 * 4  # float32
    assert len(h) == 100
    assert h.tail(100).tolist() == [float(x) for x in range(4899, 4999)]


def test_gap_longer_than_ring_resets_to_nans() -> None:
    """A gap longer than the ring leaves only NaNs, without looping over every missed bin."""
    h = BinnedHistory(bin_s=60, capacity=10)
    h.record(0, 1.0)
    h.record(60 * 10_000, 1.0)
    assert len(h) == 10
    assert np.isnan(h.tail(10)).all()


def test_out_of_order_sample_is_dropped() -> None:
    """A sample older than the open bin is ignored (clocks do not run back)."""
    h = BinnedHistory(bin_s=60, capacity=10)
    h.record(120, 1.0)
    assert h.record(30, 100.0) == 0
    h.record(180, 1.0)
    assert h.tail(1).tolist() == [1.0]


def test_load_then_record_continues_with_gap() -> None:
    """Backfilled bins are followed by NaN for the bins between them and the first live sample."""
    h = BinnedHistory(bin_s=60, capacity=10)
    assert h.load(100, np.array([1.0, 2.0, 3.0])) == 3
    assert h.end_bin == 103
    assert h.record(105 * 60 + 1, 9.0) == 2  # bins 103, 104 had no data
    out = h.tail(10)
    assert out[:3].tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(out[3:]).all()


def test_load_keeps_only_capacity() -> None:
    """Loading more than the ring holds keeps the newest bins."""
    h = BinnedHistory(bin_s=60, capacity=4)
    h.load(0, np.arange(10.0))
    assert h.tail(4).tolist() == [6.0, 7.0, 8.0, 9.0]
    assert h.end_bin == 10


@pytest.mark.parametrize(("bin_s", "cap"), [(0, 10), (60, 0)])
def test_rejects_bad_shape(bin_s: float, cap: int) -> None:
    """A zero bin width or capacity is a programming error, refused at construction."""
    with pytest.raises(ValueError, match="bin_s"):
        BinnedHistory(bin_s=bin_s, capacity=cap)


def test_span_counts_complete_bins() -> None:
    """span_s is the history length in seconds (complete bins only)."""
    h = BinnedHistory(bin_s=30, capacity=100)
    for i in range(11):
        h.record(i * 30.0, 1.0)
    assert math.isclose(h.span_s(), 300.0)
