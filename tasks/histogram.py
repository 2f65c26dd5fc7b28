"""Pass 2 of the histogram methods: integer counts on fixed global bin edges.

Every chunk histograms a tensor on the same edges (fixed by the exact pass-1
range), so partial histograms add up exactly: no re-binning, no interpolation,
no bins grown on the fly. The result is the same for any chunking or order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from dask_quant.tasks.errors import DaskQuantError
from dask_quant.tasks.merging import add_counts, merge_by_name


@dataclass(frozen=True)
class HistogramSpec:
    """Which values go into a tensor's histogram: `bins` equal bins on [low, high].

    `absolute` histograms |x| (on [0, max|x|]), as symmetric percentile needs.
    """

    tensor: str
    low: float
    high: float
    bins: int
    absolute: bool = False

    @property
    def key(self) -> tuple[str, bool, int]:
        """What tells two histograms of one calibration apart: a tensor can have a signed and an |x| one."""
        return (self.tensor, self.absolute, self.bins)

    def edges(self) -> np.ndarray:
        """The bin edges numpy counts float32 values with for range=(low, high) (read-only): float32,
        or float64 where float32 has no `bins` distinct edges in the range."""
        return self.binning.edges

    @property
    def binning(self):
        """The tasks.kernels.Bins that numpy's np.histogram(range=(low, high)) would count with."""
        return _binning(self)

    def count(self, values: np.ndarray) -> np.ndarray:
        """Counts per bin; values outside [low, high] (only possible on data other than the
        calibration set that fixed the range) land in the end bins."""
        from dask_quant.tasks import kernels

        # np.histogram(np.clip(|x| or x, low, high), bins, range=(low, high)) of float32 x, in one pass.
        return kernels.count(values.astype(np.float32, copy=False), self.binning, self.absolute)


@functools.lru_cache(maxsize=4096)  # a worker counts the same tensors' histograms chunk after chunk
def _binning(spec: HistogramSpec):
    """The spec's kernels.Bins: numpy's bounds and edges for it, and the estimate that places values."""
    from dask_quant.tasks import kernels

    # float32 bounds, as ONNX Runtime passes them: numpy then builds the very same edges.
    # numpy widens an empty range to +-0.5; do it here so edges and counts agree.
    low, high = (spec.low, spec.high) if spec.high > spec.low else _widened(spec.low)
    with np.errstate(over="ignore"):
        width = np.float32(high) - np.float32(low)
    if np.isfinite(width) and _distinct_edges(np.float32(low), np.float32(high), spec.bins):
        low, high = np.float32(low), np.float32(high)
    else:
        # A range wider than float32 holds (attention masks add -3.4e38), or one so
        # narrow (all values denormal) that float32 has no `bins` distinct edges in it:
        # numpy refuses float32 edges (ORT's calibrators stop there); float64 edges
        # still count every value.
        low, high = np.float64(low), np.float64(high)
    edges = np.histogram_bin_edges(np.empty(0, type(low)), bins=spec.bins, range=(low, high))
    edges.flags.writeable = False
    return kernels.Bins.of(low, high, edges)


def _widened(value: float) -> tuple[float, float]:
    """numpy's +-0.5 around a single value; relative where 0.5 is below float64's resolution (|v| > 2**52)."""
    half = max(0.5, abs(value) * 2.0**-20)
    return value - half, value + half


def _distinct_edges(low: np.float32, high: np.float32, bins: int) -> bool:
    try:
        np.histogram_bin_edges(np.empty(0, np.float32), bins=bins, range=(low, high))
    except ValueError:  # "Too many bins for data range"
        return False
    return True


@dataclass(frozen=True)
class Histogram:
    """Counts of one tensor on its spec's edges (int64, held as bytes so the value is immutable)."""

    spec: HistogramSpec
    raw: bytes

    @classmethod
    def of(cls, spec: HistogramSpec, counts: np.ndarray) -> Histogram:
        return cls(spec, np.ascontiguousarray(counts, dtype=np.int64).tobytes())

    @property
    def counts(self) -> np.ndarray:
        return np.frombuffer(self.raw, dtype=np.int64)

    def to_json(self) -> list:
        spec = self.spec
        return [[spec.tensor, spec.low, spec.high, spec.bins, spec.absolute], self.counts.tolist()]

    @classmethod
    def from_json(cls, data: list) -> Histogram:
        return cls.of(HistogramSpec(*data[0]), np.array(data[1], dtype=np.int64))

    def merge(self, other: Histogram) -> Histogram:
        if other.spec != self.spec:
            msg = f"histograms of {self.spec.tensor!r} have different bin specs; they cannot be added"
            raise DaskQuantError(msg)
        return Histogram.of(self.spec, self.counts + other.counts)


@dataclass(frozen=True)
class Histograms:
    """Histograms keyed by their spec's key (tensor, absolute, bins), sorted; `merge` adds counts.

    `chunks` is (computed, read from a checkpoint, discarded), as for RangeStats.
    """

    entries: tuple[tuple[tuple[str, bool, int], Histogram], ...] = ()
    chunks: tuple[int, int, int] = field(default=(0, 0, 0), compare=False)

    @classmethod
    def of(cls, histograms: Iterable[Histogram]) -> Histograms:
        return cls(tuple(sorted((h.spec.key, h) for h in histograms)))

    def as_dict(self) -> dict[tuple[str, bool, int], Histogram]:
        return dict(self.entries)

    def find(self, spec: HistogramSpec) -> Histogram | None:
        """The histogram with `spec`'s key, if it was computed on the same edges."""
        found = self.as_dict().get(spec.key)
        return found if found is not None and found.spec == spec else None

    def merge(self, other: Histograms) -> Histograms:
        return Histograms(merge_by_name(self.entries, other.entries), add_counts(self.chunks, other.chunks))

    def to_json(self) -> dict:
        """Plain JSON for checkpoints."""
        return {"entries": [h.to_json() for _, h in self.entries]}

    @classmethod
    def from_json(cls, data: dict) -> Histograms:
        return cls.of(Histogram.from_json(entry) for entry in data["entries"])
