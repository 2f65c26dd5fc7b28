"""Calibration task: one chunk in, statistics of the tensors to quantize out."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dask_quant.tasks.augment import extrema_names
from dask_quant.tasks.checkpoint import Checkpoints, cached
from dask_quant.tasks.chunks import ChunkRef, read_feeds
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.histogram import Histogram, Histograms, HistogramSpec
from dask_quant.tasks.range_stats import RangeStats, TensorRange
from dask_quant.tasks.sessions import ModelRef, SessionSpec, exposed_runs, run_in_batches, session_for


def _where(chunk: ChunkRef) -> str:
    return f" (rows {chunk.start}..{chunk.stop} of {chunk.path})"


def check_finite_inputs(feeds: dict[str, np.ndarray], chunk: ChunkRef) -> None:
    """Refuse NaN and infinities in the data itself, naming the input, the count and the rows."""
    for name, array in feeds.items():
        if np.issubdtype(array.dtype, np.floating):
            bad = int((~np.isfinite(array)).sum())
            if bad:
                msg = f"{bad} NaN or infinite value(s) in input {name!r}{_where(chunk)}; fix or remove those samples"
                raise InputError(msg)


def chunk_range_stats(
    chunk: ChunkRef, model: ModelRef, tensors: tuple[tuple[str, int], ...], checkpoints: Checkpoints | None = None
) -> RangeStats:
    """min/max/count of every tensor to calibrate ((name, elem type) pairs), over one chunk."""
    key = ("range-stats", model.sha256, _content(chunk), tensors)
    stats, reused = cached(checkpoints, key, lambda: _range_stats(chunk, model, tensors), RangeStats.from_json)
    return replace(stats, chunks=(0, 1) if reused else (1, 0))


def _content(chunk: ChunkRef) -> tuple:
    """What a chunk's values depend on: the file's bytes, the arrays and the rows (not its path)."""
    return (chunk.sha256, chunk.members, chunk.start, chunk.stop)


def _range_stats(chunk: ChunkRef, model: ModelRef, tensors: tuple[tuple[str, int], ...]) -> RangeStats:
    feeds = read_feeds(chunk)
    check_finite_inputs(feeds, chunk)
    session = session_for(model, SessionSpec(extrema_of=tensors, calibration=True))
    names = [output for name, _ in tensors for output in extrema_names(name)]
    # One value per fixed-size batch (or one for the chunk): reduce them again.
    outputs = iter(run_in_batches(session, names, feeds))
    ranges = {}
    for name, _ in tensors:
        mins, maxs, sizes = next(outputs), next(outputs), next(outputs)
        ranges[name] = TensorRange.of(mins, maxs, int(sizes.sum()), name, _where(chunk))
    return RangeStats(tuple(sorted(ranges.items())))


def chunk_histograms(
    chunk: ChunkRef,
    model: ModelRef,
    tensors: tuple[tuple[str, int], ...],
    specs: tuple[HistogramSpec, ...],
    checkpoints: Checkpoints | None = None,
) -> Histograms:
    """Pass 2: counts of each tensor's values on its spec's global edges, over one chunk.

    The chunk's activations are exposed as outputs (graph inputs come from the
    feeds) and histogrammed one tensor at a time.
    """
    key = ("histograms", model.sha256, _content(chunk), tensors, specs)
    histograms, reused = cached(
        checkpoints, key, lambda: _histograms(chunk, model, tensors, specs), Histograms.from_json
    )
    return replace(histograms, chunks=(0, 1) if reused else (1, 0))


def _histograms(chunk, model, tensors, specs) -> Histograms:
    feeds = read_feeds(chunk)
    check_finite_inputs(feeds, chunk)
    computed = tuple((name, elem) for name, elem in tensors if name not in feeds)
    session = session_for(model, SessionSpec(expose=computed, calibration=True))
    names = [name for name, _ in computed]
    total = Histograms()
    for part, (values,) in exposed_runs([(session, names)], feeds):
        values.update(part)
        counted = []
        for tensor in dict.fromkeys(spec.tensor for spec in specs):  # a tensor may have a signed and an |x| spec
            array = values.pop(tensor)
            counted += [Histogram.of(spec, spec.count(array)) for spec in specs if spec.tensor == tensor]
        total = total.merge(Histograms.of(counted))
    return total
