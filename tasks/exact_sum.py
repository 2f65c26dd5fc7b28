"""Exact sums of float64 values, as integers, so partial sums merge without rounding.

A float64 is m * 2**(e - 53) with an integer m below 2**53. Summing the m's
per exponent (split into 26-bit halves, so the sums stay exact) and
shifting the per-exponent totals onto one Python integer gives the exact sum
as an integer multiple of 2**BASE_EXPONENT. Adding such integers is exact, so
any chunking, order or merge tree gives the same total, rounded once at the end.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

BASE_EXPONENT = -1126  # below the smallest subnormal's lowest mantissa bit
_HALF = 26
_BLOCK = 1 << 25


def exact_sum(values: np.ndarray) -> int:
    """The exact sum of finite float64 `values`, times 2**-BASE_EXPONENT; ValueError for inf or NaN, which
    no integer holds (callers count those apart)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(flat).all():
        msg = f"exact_sum holds finite values only; {int(flat.size - np.isfinite(flat).sum())} are inf or NaN"
        raise ValueError(msg)
    total = 0
    for start in range(0, flat.size, _BLOCK):
        total += _exact_block(flat[start : start + _BLOCK])
    return total


def _exact_block(flat: np.ndarray) -> int:
    mantissa, exponent = np.frexp(flat)
    integer = (mantissa * float(1 << 53)).astype(np.int64)  # exact: |mantissa| < 1 has 53 bits
    shift = exponent.astype(np.int64) - 53 - BASE_EXPONENT
    lowest = int(shift.min()) if shift.size else 0
    bucket = shift - lowest
    # integer = high * 2**26 + low with |high| < 2**27 and 0 <= low < 2**26; summing at
    # most 2**25 of them keeps every bincount total an integer below 2**53, which
    # float64 adds without rounding.
    high = integer >> _HALF
    low = integer - (high << _HALF)
    high = np.bincount(bucket, weights=high.astype(np.float64))
    low = np.bincount(bucket, weights=low.astype(np.float64))
    total = 0
    for offset in np.flatnonzero((high != 0) | (low != 0)).tolist():
        total += ((int(high[offset]) << _HALF) + int(low[offset])) << (offset + lowest)
    return total


def to_float(total: int) -> float:
    """The exact sum rounded once to the nearest float."""
    return float(Fraction(total, 1 << -BASE_EXPONENT))
