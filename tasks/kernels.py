"""Compiled per-element loops: histogram counts and exact sums of float32 products.

numpy needs a dozen whole-array passes (and as many temporary arrays) for
what these do in one: counting values into numpy's own bins, or adding
x*x, y*y and x*y exactly. Both passes run over every activation of every
chunk, so they set the cost of the histogram methods and of per-layer error.

Both are exact by construction, not approximately fast:
- `count` puts each value in the bin numpy's edges give it (edges[k] <= v <
  edges[k + 1], the last bin closed), as np.histogram does: a monotonic
  estimate places every value, and the few an estimate cannot place for
  certain are checked against the edges (see Bins), so the counts are
  numpy's, bit for bit.
- `product_sums` splits each float32 into its integer mantissa and exponent
  (x = m * 2**e, m < 2**24): the product of two is an integer below 2**48
  times a power of two, added into integer accumulators per exponent. The
  totals are the exact sums (the integers tasks.exact_sum gives), whatever
  the chunking.

Import this module inside functions: numba is a heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


def _compiled(**options):
    """numba.njit, with the compiled code cached on disk where numba finds a writable place
    (beside this file, or the user's cache folder) so a worker process loads it, not compiles it."""

    def compile_(function):
        try:
            return numba.njit(cache=True, nogil=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available": compile per process
            return numba.njit(nogil=True, **options)(function)

    return compile_


_BLOCK = 2048  # values per block: the block's indices stay in the L1 cache
_LOWEST = -149  # exponent of the smallest float32 subnormal's unit
_BUCKETS = 2 * (104 - _LOWEST) + 1  # exponents of products of two float32s: 2*(-149) .. 2*104
_SPLIT = 24  # a product below 2**48 in two 24-bit halves: an int64 holds 2**39 of each


@dataclass(frozen=True)
class Bins:
    """How `count` bins values for np.histogram(range=(first, last), bins=len(edges) - 1).

    Values are first placed by an estimate, (v - first) * scale. The estimate is
    monotonic in v (each float operation is), so if est(edges[k]) < est(v) <
    est(edges[k + 1]), then edges[k] <= v < edges[k + 1]: the bin is exactly k.
    `margin` is max |est(edges[k]) - k| over the edges, so any v whose estimate
    lies further than `margin` from a whole number is in bin floor(est(v)) for
    certain. The others are at most one bin off while margin < 0.5 (the bins of
    est(edges[k -+ 1]) then lie beyond them), and take numpy's one-step
    correction against the edges; a margin of 0.5 (a range float arithmetic
    cannot divide well) sends every value to a binary search of the edges.
    """

    first: np.floating
    last: np.floating
    edges: np.ndarray
    scale: np.floating
    margin: np.floating
    zero_bin: int  # the bin of 0.0 (exactly zero values are common: ReLU), or 0 when 0 is out of range

    @classmethod
    def of(cls, low: np.floating, high: np.floating, edges: np.ndarray) -> Bins:
        kind = edges.dtype.type
        first, last, bins = kind(low), kind(high), len(edges) - 1
        with np.errstate(over="ignore", invalid="ignore"):
            scale = kind(bins) / (last - first)
            errors = np.abs(((edges - first) * scale).astype(np.float64) - np.arange(bins + 1))
        if not np.isfinite(scale) or not np.isfinite(errors).all():
            # A range of denormals: bins / width overflows. Every value then takes the exact search.
            scale, errors = kind(0), np.array([0.5])
        margin = kind(min(0.5, float(errors.max())))
        zero = 0 if not first <= 0 <= last else min(bins - 1, int(np.searchsorted(edges, kind(0), "right")) - 1)
        return cls(first, last, edges, scale, margin, zero)


@_compiled()
def _count(values, absolute, first, last, scale, margin, zero_bin, edges):
    bins = edges.size - 1
    top = np.int32(bins - 1)
    # Four interleaved count arrays: runs of one bin would otherwise make each increment
    # wait for the one before it.
    counts = np.zeros(4 * bins, np.int64)
    index = np.empty(_BLOCK, np.int32)
    unsure = np.empty(_BLOCK, np.int32)
    near = np.empty(_BLOCK, np.uint8)
    far = 1 - margin
    missing = 0
    for start in range(0, values.size, _BLOCK):
        size = min(_BLOCK, values.size - start)
        block = values[start : start + size]
        # The estimate, and whether it may be a bin off. Nothing but selects and arithmetic, no
        # branch and no running count: that is what lets the compiler vectorise it (a NaN count
        # kept here made the loop four times slower).
        nan = np.uint8(0)
        for j in range(size):
            value = abs(block[j]) if absolute else block[j]
            nan |= np.uint8(value != value)
            value = min(max(value, first), last)
            estimate = (value - first) * scale
            k = min(np.int32(estimate), top)
            fraction = estimate - np.float32(k)
            index[j] = zero_bin if value == 0 else k
            near[j] = (value != 0) & ((fraction <= margin) | (fraction >= far))
        if nan:  # numpy drops NaN: put it in bin 0 here, and take it out at the end
            for j in range(size):
                if block[j] != block[j]:
                    index[j], near[j] = 0, 0
                    missing += 1
        for j in range(0, size - 3, 4):
            for w in range(4):
                counts[w * bins + index[j + w]] += 1
        for j in range(size - size % 4, size):
            counts[index[j]] += 1
        count = 0
        for j in range(size):
            unsure[count] = j
            count += near[j]
        # The values near an edge, checked against the edges as numpy does.
        for u in range(count):
            j = unsure[u]
            k = exact = index[j]
            value = min(max(abs(block[j]) if absolute else block[j], first), last)
            if margin < 0.5:  # the estimate is at most one bin off: one step, as numpy corrects
                if value < edges[k]:
                    exact = k - 1
                elif k != top and value >= edges[k + 1]:
                    exact = k + 1
            else:  # an estimate that may be further off: search
                exact = min(max(np.searchsorted(edges, value, side="right") - 1, 0), top)
            if exact != k:
                counts[k] -= 1
                counts[exact] += 1
    total = counts[:bins] + counts[bins : 2 * bins] + counts[2 * bins : 3 * bins] + counts[3 * bins :]
    total[0] -= missing
    return total


def count(values: np.ndarray, bins: Bins, absolute: bool) -> np.ndarray:
    """np.histogram(np.clip(v, first, last), len(edges) - 1, range=(first, last))[0] as int64, where
    v is `values` (|values| when `absolute`) in the dtype of the edges (numpy's for that range)."""
    if bins.scale == 0:  # a range of denormals (Bins.of): numpy's own estimate is no edge search there
        return numpy_count(values, bins, absolute)
    flat = np.ascontiguousarray(values.reshape(-1), dtype=bins.edges.dtype)
    return _count(flat, absolute, bins.first, bins.last, bins.scale, bins.margin, bins.zero_bin, bins.edges)


def numpy_count(values: np.ndarray, bins: Bins, absolute: bool) -> np.ndarray:
    """What `count` computes, written with np.histogram (how dask-quant counted before `count`): the
    definition the tests hold `count` to, and the baseline benchmarks/histogram_speed.py times."""
    flat = values.reshape(-1).astype(np.float32, copy=False)
    if absolute:
        flat = np.abs(flat)
    low, high = bins.first, bins.last
    with np.errstate(invalid="ignore"):
        counts, _ = np.histogram(np.clip(flat, low, high), bins=len(bins.edges) - 1, range=(low, high))
    return counts.astype(np.int64)


@_compiled(inline="always")
def _split(bits):
    """(sign, integer mantissa, exponent) of a float32 given as its int32 bits."""
    exponent = (bits >> 23) & 0xFF
    mantissa = np.int64(bits & 0x7FFFFF)
    if exponent:
        mantissa |= 0x800000
    else:
        exponent = 1  # a subnormal: the unit of the smallest normal
    return (-1 if bits < 0 else 1), mantissa, exponent - 150


@_compiled(inline="always")
def _add(sums, term, sign, product, exponent):
    bucket = exponent - 2 * _LOWEST
    sums[term, 0, bucket] += sign * (product >> _SPLIT)
    sums[term, 1, bucket] += sign * (product & ((1 << _SPLIT) - 1))


@_compiled()
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
    for highs, lows in sums:
        used = np.flatnonzero(highs | lows).tolist()  # a tensor's values span a few dozen exponents
        totals.append(sum(((int(highs[b]) << _SPLIT) + int(lows[b])) << (b + shift) for b in used))
    return totals[0], totals[1], totals[2], float(largest), int(skipped)
