"""Per-tensor min/max statistics: an immutable value with an exact merge.

`merge` is associative and commutative with `RangeStats.empty()` as identity,
so any chunking, order or tree shape gives the same bits: min and max of
float values are exact, counts are integers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dask_quant.tasks.errors import DaskQuantError, InputError
from dask_quant.tasks.merging import add_counts, merge_by_name


@dataclass(frozen=True)
class TensorRange:
    """min and max of a tensor's values, how many there were, and their dtype ("float32", "float16").

    min and max are held as Python floats, which represent float32 and
    float16 values exactly.
    """

    min: float
    max: float
    count: int
    dtype: str = "float32"

    def merge(self, other: TensorRange) -> TensorRange:
        if self.dtype != other.dtype and self.count and other.count:
            msg = f"cannot merge ranges of dtype {self.dtype} and {other.dtype}"
            raise DaskQuantError(msg)
        dtype = self.dtype if self.count else other.dtype
        # `+ 0.0` turns -0.0 into 0.0, so signed zeros cannot make the result order-dependent.
        low, high = min(self.min, other.min) + 0.0, max(self.max, other.max) + 0.0
        return TensorRange(low, high, self.count + other.count, dtype)

    @classmethod
    def of(cls, mins: np.ndarray, maxs: np.ndarray, count: int, name: str, where: str = "") -> TensorRange:
        """The range from partial minima and maxima (NaN and infinities refused: no finite scale exists)."""
        if count == 0:
            return cls(math.inf, -math.inf, 0, mins.dtype.name)
        if not (np.isfinite(mins).all() and np.isfinite(maxs).all()):
            msg = f"NaN or infinite values in tensor {name!r}{where}; no finite scale exists: fix or remove the samples"
            raise InputError(msg)
        return cls(float(mins.min()) + 0.0, float(maxs.max()) + 0.0, int(count), mins.dtype.name)


@dataclass(frozen=True)
class RangeStats:
    """TensorRange per tensor name, kept sorted by name so equal stats compare equal.

    `chunks` says how the value was made, (chunks computed, chunks read from a
    checkpoint, checkpoints discarded: tasks.checkpoint.Source); it adds up on
    merge and is not part of the value's equality.
    """

    ranges: tuple[tuple[str, TensorRange], ...] = ()
    chunks: tuple[int, int, int] = field(default=(0, 0, 0), compare=False)

    @classmethod
    def empty(cls) -> RangeStats:
        return cls()

    @classmethod
    def of(cls, values: Mapping[str, np.ndarray], where: str = "") -> RangeStats:
        """Statistics of whole tensors (one chunk's values)."""
        ranges = {
            name: TensorRange.of(array.reshape(-1), array.reshape(-1), array.size, name, where)
            for name, array in values.items()
        }
        return cls(tuple(sorted(ranges.items())))

    def as_dict(self) -> dict[str, TensorRange]:
        return dict(self.ranges)

    def merge(self, other: RangeStats) -> RangeStats:
        return RangeStats(merge_by_name(self.ranges, other.ranges), add_counts(self.chunks, other.chunks))

    def to_json(self) -> dict:
        """Plain JSON (floats round-trip exactly) for checkpoints."""
        return {"ranges": [[name, r.min, r.max, r.count, r.dtype] for name, r in self.ranges]}

    @classmethod
    def from_json(cls, data: dict) -> RangeStats:
        return cls(
            tuple((name, TensorRange(low, high, count, dtype)) for name, low, high, count, dtype in data["ranges"])
        )

