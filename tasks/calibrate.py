"""Calibration task: one chunk in, statistics of the tensors to quantize out."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dask_quant.tasks.augment import extrema_names, itemsize
from dask_quant.tasks.checkpoint import Checkpoints, cached
from dask_quant.tasks.chunks import ChunkRef, chunk_content, read_feeds
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.histogram import Histogram, Histograms, HistogramSpec
from dask_quant.tasks.range_stats import RangeStats, TensorRange
from dask_quant.tasks.sessions import (
    ModelRef,
    SessionSpec,
    exposed_slices,
    fixed_batch,
    reduced_runs,
    run_in_batches,
    session_for,
)


def chunk_range_stats(
    chunk: ChunkRef, model: ModelRef, tensors: tuple[tuple[str, int], ...], checkpoints: Checkpoints | None = None
) -> RangeStats:
    """min/max/count of every tensor to calibrate ((name, elem type) pairs), over one chunk."""
    key = ("range-stats", model.sha256, chunk_content(chunk), tensors)
    stats, source = cached(checkpoints, key, lambda: _range_stats(chunk, model, tensors), RangeStats.from_json)
    return replace(stats, chunks=source.counts)


def _range_stats(chunk: ChunkRef, model: ModelRef, tensors: tuple[tuple[str, int], ...]) -> RangeStats:
    feeds = read_feeds(chunk)
    session = session_for(model, SessionSpec(extrema_of=tensors, calibration=True))
    names = [output for name, _ in tensors for output in extrema_names(name)]
    sizes = [extrema_names(name)[2] for name, _ in tensors]
    itemsizes = [itemsize(elem) for _, elem in tensors]
    # One min, max and size per run (a slice, or a fixed-size batch): reduced again below.
    parts = reduced_runs(session, names, feeds, chunk.feeding, sizes, itemsizes)
    ranges = {}
    for name, _ in tensors:
        low, high, size = (np.concatenate([np.atleast_1d(part[out]) for part in parts]) for out in extrema_names(name))
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            _refuse_non_finite(session, name, feeds, chunk)
        ranges[name] = TensorRange.of(low, high, int(size.sum()), name)
    return RangeStats(tuple(sorted(ranges.items())))


def _refuse_non_finite(session, tensor: str, feeds: dict[str, np.ndarray], chunk: ChunkRef) -> None:
    """An activation that is NaN or infinite would give a NaN or infinite scale: name the tensor and the rows."""
    names = extrema_names(tensor)[:2]
    step = fixed_batch(session, chunk.feeding) or 1
    bad = []
    for start in range(0, chunk.rows, step):  # rare, so one batch at a time is fine: find the rows
        part = {key: value[start : start + step] for key, value in feeds.items()}
        if not all(np.isfinite(out).all() for out in run_in_batches(session, names, part, chunk.feeding)):
            bad += range(chunk.start + start, chunk.start + min(start + step, chunk.rows))
    shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    if len(bad) == chunk.rows and chunk.rows > 1:  # every sample: the model itself makes it (a mask's -inf?)
        msg = (
            f"tensor {tensor!r} is NaN or infinite on every row of chunk rows {chunk.start}..{chunk.stop} of "
            f"{chunk.path}: the model itself makes it (an attention mask's -inf?), and no finite scale exists; "
            "keep the node that makes it and the nodes that read it in FP32 (--exclude-nodes), or narrow --op-types"
        )
        raise InputError(msg)
    msg = (
        f"tensor {tensor!r} is NaN or infinite on row(s) {shown or 'of this chunk'} of {chunk.path} "
        f"(chunk rows {chunk.start}..{chunk.stop}): it overflows the float range there, so no finite scale exists; "
        "fix or remove those samples"
    )
    raise InputError(msg)


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
    key = ("histograms", model.sha256, chunk_content(chunk), tensors, specs)
    histograms, source = cached(
        checkpoints, key, lambda: _histograms(chunk, model, tensors, specs), Histograms.from_json
    )
    return replace(histograms, chunks=source.counts)


def _histograms(chunk, model, tensors, specs) -> Histograms:
    total = Histograms()
    for values in exposed_slices(chunk, model, tensors):
        counted = []
        for tensor in dict.fromkeys(spec.tensor for spec in specs):  # a tensor may have a signed and an |x| spec
            array = values.pop(tensor)
            counted += [Histogram.of(spec, spec.count(array)) for spec in specs if spec.tensor == tensor]
        total = total.merge(Histograms.of(counted))
        del values  # before the next slice runs (tasks.sessions.exposed_runs)
    return total
