"""Bounded-memory history of one rate series: a ring buffer of evenly spaced bins.

Each tick delivers one sample (e.g. prompt tokens/s at 15 s ticks); samples are averaged into
fixed bins (default 60 s) aligned to multiples of `bin_s` on the policy's clock, and only the
newest `capacity` complete bins are kept. Memory is fixed at construction: 8 days of 1-minute
bins is 11,520 float32 values = 45 KiB per series, so 1,000 pools x 2 roles stay under 100 MiB.
float32 keeps 7 significant digits, far below the Poisson noise of any rate worth forecasting.

A bin with no sample (metrics outage, controller down) is stored as NaN: the models skip it
rather than read a zero rate that never happened.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class BinnedHistory:
    """Ring buffer of bin means; bin `k` covers `[k * bin_s, (k + 1) * bin_s)`."""

    __slots__ = ("_acc_n", "_acc_sum", "_buf", "_count", "_end", "_open", "bin_s", "capacity")

    def __init__(self, *, bin_s: float, capacity: int) -> None:
        if bin_s <= 0 or capacity < 1:
            msg = f"bin_s must be > 0 and capacity >= 1 (got {bin_s}, {capacity})"
            raise ValueError(msg)
        self.bin_s = float(bin_s)
        self.capacity = int(capacity)
        self._buf = np.full(self.capacity, np.nan, dtype=np.float32)
        self._end: int | None = None  # absolute index of the first bin not yet stored
        self._count = 0  # complete bins stored (<= capacity)
        self._open: int | None = None  # absolute index of the bin being accumulated
        self._acc_sum = 0.0
        self._acc_n = 0

    # --- writing ---------------------------------------------------------------------------

    def bin_of(self, t: float) -> int:
        return math.floor(t / self.bin_s)

    def record(self, t: float, value: float | None) -> int:
        """Add one sample taken at `t`; returns how many bins were completed by it (their values
        are `tail(n)`). A sample older than the open bin is dropped (clocks do not run back)."""
        b = self.bin_of(t)
        closed = 0
        if self._open is None:
            if self._end is not None and b < self._end:
                return 0  # older than loaded (backfilled) bins
            if self._end is not None:
                # After a backfill: bins between the loaded ones and this sample had no data.
                closed = b - self._end
                for k in range(max(self._end, b - self.capacity), b):
                    self._put(k, math.nan)
            self._open = b
        elif b < self._open:
            return 0
        elif b > self._open:
            closed = self._close_through(b)
        if value is not None and math.isfinite(value):
            self._acc_sum += value
            self._acc_n += 1
        return closed

    def _close_through(self, b: int) -> int:
        """Close the open bin and store NaN for any bins skipped before `b`."""
        assert self._open is not None
        mean = self._acc_sum / self._acc_n if self._acc_n else math.nan
        self._put(self._open, mean)
        gap = b - self._open - 1
        # A gap longer than the ring only needs the ring's worth of NaNs.
        for k in range(max(self._open + 1, b - self.capacity), b):
            self._put(k, math.nan)
        self._open = b
        self._acc_sum = 0.0
        self._acc_n = 0
        return 1 + gap

    def _put(self, k: int, value: float) -> None:
        self._buf[k % self.capacity] = value
        self._end = k + 1
        self._count = min(self._count + 1, self.capacity)

    def load(self, start_bin: int, values: FloatArray) -> int:
        """Bulk-write complete bins (a backfill at start-up), oldest first; bins already recorded
        or still open are left alone (live data wins). Returns how many bins were written."""
        if self._end is not None or self._open is not None:
            stop = self._open if self._open is not None else self._end
            assert stop is not None
            values = values[: max(0, stop - start_bin)]
        n = len(values)
        if n == 0:
            return 0
        if n > self.capacity:
            start_bin += n - self.capacity
            values = values[-self.capacity :]
            n = self.capacity
        idx = np.arange(start_bin, start_bin + n) % self.capacity
        self._buf[idx] = values.astype(np.float32)
        self._end = start_bin + n
        self._count = min(self.capacity, n)
        return n

    # --- reading ---------------------------------------------------------------------------

    @property
    def end_bin(self) -> int | None:
        """Absolute index one past the newest complete bin (None before the first)."""
        return self._end

    def __len__(self) -> int:
        return self._count

    def span_s(self) -> float:
        return self._count * self.bin_s

    def tail(self, n: int) -> FloatArray:
        """The newest `n` complete bins (fewer if fewer exist), oldest first, as float64."""
        n = min(n, self._count)
        if n <= 0 or self._end is None:
            return np.empty(0, dtype=np.float64)
        start = (self._end - n) % self.capacity
        if start + n <= self.capacity:
            out = self._buf[start : start + n]
        else:
            out = np.concatenate((self._buf[start:], self._buf[: (start + n) - self.capacity]))
        return out.astype(np.float64)

    def observed(self) -> int:
        """Complete bins that hold a value (not NaN)."""
        return int(np.count_nonzero(~np.isnan(self.tail(self._count))))

    @property
    def nbytes(self) -> int:
        return int(self._buf.nbytes)
