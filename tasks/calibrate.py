"""Calibration task: one chunk in, statistics of the tensors to quantize out."""

from __future__ import annotations

import numpy as np

from tasks.chunks import ChunkRef, read_feeds
from tasks.range_stats import RangeStats
from tasks.sessions import ModelRef, SessionSpec, run_in_batches, session_for


def tensor_values(chunk: ChunkRef, model: ModelRef, tensors: tuple[tuple[str, int], ...]) -> dict[str, np.ndarray]:
    """The values of `tensors` ((name, elem type) pairs) for one chunk's rows.

    Graph inputs come straight from the feeds; everything else is exposed as
    an extra output of a calibration session (no graph optimisation).
    """
    feeds = read_feeds(chunk)
    computed = tuple((name, elem) for name, elem in tensors if name not in feeds)
    session = session_for(model, SessionSpec(extra_outputs=computed, calibration=True))
    names = [name for name, _ in computed]
    values = dict(zip(names, run_in_batches(session, names, feeds), strict=True)) if names else {}
    values.update({name: feeds[name] for name, _ in tensors if name in feeds})
    return values


def chunk_range_stats(chunk: ChunkRef, model: ModelRef, tensors: tuple[tuple[str, int], ...]) -> RangeStats:
    """min/max/count of every tensor to calibrate, over one chunk."""
    where = f" (rows {chunk.start}..{chunk.stop} of {chunk.path})"
    return RangeStats.of(tensor_values(chunk, model, tensors), where)
