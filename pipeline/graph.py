"""Lazy task graphs: calibration statistics and validation.

Nothing here computes; `pipeline.job.run` computes each graph once.
"""

from __future__ import annotations

from functools import partial

from tasks.calibrate import chunk_histograms, chunk_range_stats
from tasks.checkpoint import Checkpoints
from tasks.chunks import ChunkRef
from tasks.histogram import Histograms, HistogramSpec, merge_histograms
from tasks.layer_error import chunk_layer_errors, merge_layer_errors
from tasks.range_stats import RangeStats, merge_all
from tasks.sessions import ModelRef
from tasks.thresholds import ThresholdSettings, choose_range
from tasks.validate import validate_chunk


def _statistics_tree(chunks: list[ChunkRef], per_chunk, merge, kwargs: dict, split_every: int):
    """One task per chunk (its statistics), then a merge tree of fan-in `split_every`.

    One chunk per task, so a task holds one chunk's activations; the tree means
    no task (and not the client) ever holds all the partials. Built by hand:
    dask.bag gives each chunk a second, near-empty task, and every task costs a
    scheduler round trip (about half the per-chunk overhead measured with
    one-row chunks). All tasks share one `partial`, pickled once per graph.
    """
    from dask.base import tokenize
    from dask.delayed import Delayed

    work = partial(per_chunk, **kwargs)
    # The chunks' fields as plain tuples: dask tokenizes those far faster than dataclasses.
    token = tokenize(
        per_chunk.__module__,
        per_chunk.__qualname__,
        merge.__qualname__,
        kwargs,
        split_every,
        [(c.path, c.members, c.start, c.stop, c.index, c.labels, c.sha256) for c in chunks],
    )
    graph: dict = {}
    level = [(f"{per_chunk.__name__}-{token}", i) for i in range(len(chunks))]
    graph.update((key, (work, chunk)) for key, chunk in zip(level, chunks, strict=True))
    depth = 0
    while len(level) > 1:
        depth += 1
        groups = [level[j : j + split_every] for j in range(0, len(level), split_every)]
        level = [(f"{merge.__name__}-{depth}-{token}", j) for j in range(len(groups))]
        graph.update((key, (merge, group)) for key, group in zip(level, groups, strict=True))
    return Delayed(level[0], graph)


def calibration_graph(
    chunks: list[ChunkRef],
    model: ModelRef,
    tensors: tuple[tuple[str, int], ...],
    split_every: int = 8,
    checkpoints: Checkpoints | None = None,
):
    """Statistics of every chunk, merged in a tree of fan-in `split_every`."""
    kwargs = {"model": model, "tensors": tensors, "checkpoints": checkpoints}
    return _statistics_tree(chunks, chunk_range_stats, merge_all, kwargs, split_every)


def histogram_graph(
    chunks: list[ChunkRef],
    model: ModelRef,
    tensors: tuple[tuple[str, int], ...],
    specs: tuple[HistogramSpec, ...],
    split_every: int = 8,
    checkpoints: Checkpoints | None = None,
):
    """Pass 2: every chunk's histograms on the global edges, added up in a tree like pass 1."""
    wanted = {spec.tensor for spec in specs}
    needed = tuple(t for t in tensors if t[0] in wanted)
    kwargs = {"model": model, "tensors": needed, "specs": specs, "checkpoints": checkpoints}
    return _statistics_tree(chunks, chunk_histograms, merge_histograms, kwargs, split_every)


def threshold_graph(histograms: Histograms, stats: RangeStats, settings: ThresholdSettings) -> list:
    """One range search per tensor, independent, so they spread over the workers."""
    from dask import delayed

    observed = stats.as_dict()
    search = delayed(choose_range, pure=True)
    return [
        search(name, h.counts, h.spec.edges(), (observed[name].min, observed[name].max), settings)
        for name, h in histograms.entries
    ]


def layer_graph(chunks: list[ChunkRef], fp32: ModelRef, int8: ModelRef, pairs, split_every: int = 8, specs=()):
    """Per-layer error sums (and FP32 histograms on `specs`) of every validation chunk, merged in a tree."""
    kwargs = {"fp32": fp32, "int8": int8, "pairs": pairs, "specs": specs}
    return _statistics_tree(chunks, chunk_layer_errors, merge_layer_errors, kwargs, split_every)


def validation_graph(chunks: list[ChunkRef], fp32: ModelRef, int8: ModelRef, anchors: ChunkRef | None = None):
    """One ChunkValidation per chunk (they become the rows of validation.parquet)."""
    import dask.bag as db

    bag = db.from_sequence(chunks, npartitions=len(chunks))
    return bag.map(validate_chunk, fp32=fp32, int8=int8, anchors=anchors)
