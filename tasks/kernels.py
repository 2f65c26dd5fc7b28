"""Compiled per-element loops: histogram counts and exact sums of float32 products.

numpy needs a dozen whole-array passes (and as many temporary arrays) for
what these do in one: counting values into numpy's own bins, or adding
x*x, y*y and x*y exactly. Both passes run over every activation of every
chunk, so they set the cost of the histogram methods and of per-layer error.

Both are exact by construction, not approximately fast:
- `count` repeats np.histogram's arithmetic for equal bins step by step (the
  float index in the edges' dtype, truncation, then the same one-step
  corrections against the edges), so its counts are numpy's, bit for bit.
- `product_sums` splits each float32 into its integer mantissa and exponent
  (x = m * 2**e, m < 2**24): the product of two is an integer below 2**48
  times a power of two, added into integer accumulators per exponent. The
  totals are the exact sums (the integers tasks.exact_sum gives), whatever
  the chunking.

Import this module inside functions: numba is a heavy import.
"""

from __future__ import annotations

import numba
import numpy as np

_BLOCK = 2048  # values per block: the block's indices stay in the L1 cache
_LOWEST = -149  # exponent of the smallest float32 subnormal's unit
_BUCKETS = 2 * (104 - _LOWEST) + 1  # exponents of products of two float32s: 2*(-149) .. 2*104
_SPLIT = 24  # a product below 2**48 in two 24-bit halves: an int64 holds 2**39 of each


@numba.njit(cache=True, nogil=True)
def _count(values, absolute, first, last, numerator, edges, bins):
    # Two interleaved count arrays: runs of one value (the zeros after a ReLU) would
    # otherwise make each increment wait for the one before it.
    counts = np.zeros(2 * bins, np.int64)
    clipped = np.empty(_BLOCK, values.dtype)
    index = np.empty(_BLOCK, np.int32)
    denominator = last - first
    top = bins - 1
    missing = 0
    for start in range(0, values.size, _BLOCK):
        size = min(_BLOCK, values.size - start)
        # The float index, as numpy computes it (vectorised: no branch depends on memory).
        for j in range(size):
            value = values[start + j]
            if absolute:
                value = abs(value)
            if value != value:  # numpy drops NaN; it is counted in bin 0 here and taken out below
                missing += 1
                value = first
            value = min(max(value, first), last)
            clipped[j] = value
            index[j] = min(np.int32(((value - first) / denominator) * numerator), top)
        # numpy's corrections against the edges, then the count.
        for j in range(size):
            value, k = clipped[j], index[j]
            if value < edges[k]:
                k -= 1
            elif k != top and value >= edges[k + 1]:
                k += 1
            counts[(j & 1) * bins + k] += 1
    total = counts[:bins] + counts[bins:]
    total[0] -= missing
    return total


def count(values: np.ndarray, low: np.floating, high: np.floating, bins: int, absolute: bool) -> np.ndarray:
    """np.histogram(np.clip(v, low, high), bins, range=(low, high))[0] as int64, where v is
    `values` (|values| when `absolute`) in low's dtype, float32 or float64."""
    dtype = np.dtype(type(low))
    flat = np.ascontiguousarray(values.reshape(-1), dtype=dtype)
    edges = np.histogram_bin_edges(np.empty(0, dtype), bins=bins, range=(low, high))
    return _count(flat, absolute, dtype.type(low), dtype.type(high), dtype.type(bins), edges, bins)


@numba.njit(cache=True, nogil=True, inline="always")
def _split(bits):
    """(sign, integer mantissa, exponent) of a float32 given as its int32 bits."""
    exponent = (bits >> 23) & 0xFF
    mantissa = np.int64(bits & 0x7FFFFF)
    if exponent:
        mantissa |= 0x800000
    else:
        exponent = 1  # a subnormal: the unit of the smallest normal
    return (-1 if bits < 0 else 1), mantissa, exponent - 150


@numba.njit(cache=True, nogil=True, inline="always")
def _add(sums, term, sign, product, exponent):
    bucket = exponent - 2 * _LOWEST
    sums[term, 0, bucket] += sign * (product >> _SPLIT)
    sums[term, 1, bucket] += sign * (product & ((1 << _SPLIT) - 1))


@numba.njit(cache=True, nogil=True)
def _product_sums(x, y):
    sums = np.zeros((3, 2, _BUCKETS), np.int64)
    xbits, ybits = x.view(np.int32), y.view(np.int32)
    largest = 0.0
    skipped = 0
    for i in range(x.size):
        a, b = x[i], y[i]
        if not (np.isfinite(a) and np.isfinite(b)):
            skipped += 1
            continue
        largest = max(largest, abs(np.float64(a) - np.float64(b)))
        sa, ma, ea = _split(xbits[i])
        sb, mb, eb = _split(ybits[i])
        _add(sums, 0, 1, ma * ma, 2 * ea)
        _add(sums, 1, 1, mb * mb, 2 * eb)
        _add(sums, 2, sa * sb, ma * mb, ea + eb)
    return sums, largest, skipped


def product_sums(x: np.ndarray, y: np.ndarray) -> tuple[int, int, int, float, int]:
    """(sum x*x, sum y*y, sum x*y, max |x-y|, non-finite pairs) of float32 `x` and `y`.

    The sums are exact, as integers scaled like tasks.exact_sum's; pairs where either
    value is inf or NaN are left out of every statistic, and counted.
    """
    from dask_quant.tasks.exact_sum import BASE_EXPONENT

    a = np.ascontiguousarray(x.reshape(-1), dtype=np.float32)
    b = np.ascontiguousarray(y.reshape(-1), dtype=np.float32)
    sums, largest, skipped = _product_sums(a, b)
    shift = 2 * _LOWEST - BASE_EXPONENT
    totals = []
    for highs, lows in sums.tolist():
        pairs = enumerate(zip(highs, lows, strict=True))
        totals.append(sum(((h << _SPLIT) + low) << (bucket + shift) for bucket, (h, low) in pairs if h or low))
    return totals[0], totals[1], totals[2], float(largest), int(skipped)
