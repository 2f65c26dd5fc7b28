"""Per-tensor min/max statistics: an immutable value with an exact merge.

`merge` is associative and commutative with `RangeStats.empty()` as identity,
so any chunking, order or tree shape gives the same bits: min and max of
float32 values are exact, counts are integers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import reduce

import numpy as np

from tasks.errors import InputError


@dataclass(frozen=True)
class TensorRange:
    """min and max of a tensor's values (float32 values held as Python floats) and how many."""

    min: float
    max: float
    count: int

    def merge(self, other: TensorRange) -> TensorRange:
        # `+ 0.0` turns -0.0 into 0.0, so signed zeros cannot make the result order-dependent.
        return TensorRange(min(self.min, other.min) + 0.0, max(self.max, other.max) + 0.0, self.count + other.count)


_EMPTY_RANGE = TensorRange(math.inf, -math.inf, 0)


@dataclass(frozen=True)
class RangeStats:
    """TensorRange per tensor name, kept sorted by name so equal stats compare equal."""

    ranges: tuple[tuple[str, TensorRange], ...] = ()

    @classmethod
    def empty(cls) -> RangeStats:
        return cls()

    @classmethod
    def of(cls, values: Mapping[str, np.ndarray], where: str = "") -> RangeStats:
        """Statistics of one chunk's tensors."""
        ranges = {}
        for name, array in values.items():
            if array.size == 0:
                ranges[name] = _EMPTY_RANGE
                continue
            low, high = float(np.min(array)), float(np.max(array))
            if math.isnan(low) or math.isnan(high):
                nans = int(np.isnan(array).sum())
                msg = f"{nans} NaN value(s) in tensor {name!r}{where}; remove or fix those samples"
                raise InputError(msg)
            ranges[name] = TensorRange(low + 0.0, high + 0.0, int(array.size))
        return cls(tuple(sorted(ranges.items())))

    def as_dict(self) -> dict[str, TensorRange]:
        return dict(self.ranges)

    def merge(self, other: RangeStats) -> RangeStats:
        merged = self.as_dict()
        for name, tensor_range in other.ranges:
            merged[name] = merged[name].merge(tensor_range) if name in merged else tensor_range
        return RangeStats(tuple(sorted(merged.items())))


def merge_all(stats: Iterable[RangeStats]) -> RangeStats:
    """Merge any number of partials; the reduction step of the statistics tree."""
    return reduce(RangeStats.merge, stats, RangeStats.empty())
