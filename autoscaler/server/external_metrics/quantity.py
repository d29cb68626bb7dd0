"""Kubernetes quantities: float -> "3", "750m"; never NaN or negative.
"""

from __future__ import annotations

import math

# --- quantities ----------------------------------------------------------------------------------

# resource.Quantity's int64 scaled value: the HPA reads external metrics through MilliValue(),
# which saturates at int64; beyond this the milli form would overflow, so large values are
# printed as (clamped) integers.
_INT64_MAX = 2**63 - 1
_MILLI_LIMIT = _INT64_MAX // 1000


def format_quantity(value: float) -> str:
    """A Kubernetes quantity for `value`: plain integer when whole, else milli-units.

    Rounds to the nearest milli-unit (0.0004 -> "0", 0.75 -> "750m", 2.0004 -> "2"); negative
    values are clamped to "0" (no signal here can be negative; a negative would make the HPA
    compute nonsense) and values beyond int64 milli-units are printed as integers, clamped to
    int64. NaN and infinities are refused: callers drop missing data instead of inventing it.
    """
    if math.isnan(value) or math.isinf(value):
        msg = f"not a finite quantity: {value!r}"
        raise ValueError(msg)
    if value <= 0:
        return "0"
    if value >= _MILLI_LIMIT:
        return str(min(int(value), _INT64_MAX))
    # Integer and fractional parts separately: value * 1000 in floating point would turn a large
    # whole number into a non-whole milli count (72057594037929 -> ...992m). The fraction is
    # exact in a float; round half up (floor(x + 0.5), not Python's banker's rounding).
    whole = math.floor(value)
    frac_milli = math.floor((value - whole) * 1000 + 0.5)
    if frac_milli == 1000:
        whole, frac_milli = whole + 1, 0
    if frac_milli == 0:
        return str(whole)
    return f"{whole * 1000 + frac_milli}m"


