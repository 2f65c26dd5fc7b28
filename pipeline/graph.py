"""Lazy task graphs: calibration statistics and validation.

Nothing here computes; `pipeline.compute.compute` runs each graph once.
"""

from __future__ import annotations

from functools import partial

from dask.base import tokenize
from dask.delayed import Delayed

from dask_quant.tasks.calibrate import chunk_histograms, chunk_range_stats
from dask_quant.tasks.checkpoint import Checkpoints
from dask_quant.tasks.chunks import ChunkRef
from dask_quant.tasks.errors import refusing
from dask_quant.tasks.gram import chunk_grams
from dask_quant.tasks.histogram import HistogramSpec
from dask_quant.tasks.layer_error import chunk_layer_errors
from dask_quant.tasks.merging import merge_all
from dask_quant.tasks.sessions import ModelRef
from dask_quant.tasks.smoothing import chunk_channel_max
from dask_quant.tasks.validate import chunk_outputs, compare_each, join_anchors, validate_against


class ChunkGraph(Delayed):
    """A lazy result (a dask Delayed) that also names its one-task-per-chunk keys, so progress can count chunks."""

    __slots__ = ("chunk_keys",)

    def __init__(self, key, graph: dict, chunk_keys: list) -> None:
        super().__init__(key, graph)
        self.chunk_keys = chunk_keys


def _chunk_tasks(chunks: list[ChunkRef], per_chunk, kwargs: dict, salt) -> tuple[dict, list, str]:
    """One task per chunk, with deterministic keys (same job, same keys).

    Built by hand: dask.bag gives each chunk a second, near-empty task, and
    every task costs a scheduler round trip (about half the per-chunk overhead
    measured with one-row chunks). All tasks share one `partial`, pickled once.
    """
    work = partial(refusing, per_chunk, **kwargs)
    # The chunks' fields as plain tuples: dask tokenizes those far faster than dataclasses.
    token = tokenize(
        per_chunk.__module__,
        per_chunk.__qualname__,
        kwargs,
        salt,
        [
            (c.path, c.members, c.start, c.stop, c.index, c.labels, c.sha256, c.feeding, c.identity, c.shapes)
            for c in chunks
        ],
    )
    keys = [(f"{per_chunk.__name__}-{token}", i) for i in range(len(chunks))]
    return {key: (work, chunk) for key, chunk in zip(keys, chunks, strict=True)}, keys, token


def _statistics_tree(chunks: list[ChunkRef], per_chunk, kwargs: dict, split_every: int) -> ChunkGraph:
    """One task per chunk (its statistics), then a merge tree of fan-in `split_every`.

    One chunk per task, so a task holds one chunk's activations; the tree means
    no task (and not the client) ever holds all the partials.
    """
    graph, chunk_keys, token = _chunk_tasks(chunks, per_chunk, kwargs, ("merge_all", split_every))
    level, depth = chunk_keys, 0
    while len(level) > 1:
        depth += 1
        groups = [level[j : j + split_every] for j in range(0, len(level), split_every)]
        level = [(f"merge_all-{depth}-{token}", j) for j in range(len(groups))]
        graph.update((key, (merge_all, group)) for key, group in zip(level, groups, strict=True))
    return ChunkGraph(level[0], graph, chunk_keys)


def calibration_graph(
    chunks: list[ChunkRef],
    model: ModelRef,
    tensors: tuple[tuple[str, int], ...],
    split_every: int = 8,
    checkpoints: Checkpoints | None = None,
):
    """Statistics of every chunk, merged in a tree of fan-in `split_every`."""
    kwargs = {"model": model, "tensors": tensors, "checkpoints": checkpoints}
    return _statistics_tree(chunks, chunk_range_stats, kwargs, split_every)


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
    return _statistics_tree(chunks, chunk_histograms, kwargs, split_every)


def channel_max_graph(
    chunks: list[ChunkRef], model: ModelRef, tensors: tuple[tuple[str, int, int], ...], split_every: int = 8
):
    """SmoothQuant's statistic: every chunk's per-channel abs-max of `tensors`, merged in a tree."""
    return _statistics_tree(chunks, chunk_channel_max, {"model": model, "tensors": tensors}, split_every)


def gram_graph(
    chunks: list[ChunkRef], model: ModelRef, tensors: tuple[tuple[str, int, tuple[int, ...]], ...], split_every: int = 8
):
    """GPTQ's statistic: every chunk's exact Gram sums of `tensors` on their grids, merged in a tree."""
    return _statistics_tree(chunks, chunk_grams, {"model": model, "tensors": tensors}, split_every)


def layer_graph(
    chunks: list[ChunkRef],
    fp32: ModelRef,
    int8s: tuple[ModelRef, ...],
    pairs_each,
    split_every: int = 8,
    specs_each=None,
    checkpoints: Checkpoints | None = None,
):
    """Per-layer error sums (and FP32 histograms on each model's specs) of every validation chunk for each of
    `int8s`, merged in a tree: an Each of LayerErrors. A chunk's task runs the FP32 model once for all."""
    specs_each = tuple(specs_each) if specs_each is not None else ((),) * len(int8s)
    kwargs = {
        "fp32": fp32, "int8s": tuple(int8s), "pairs_each": tuple(pairs_each), "specs_each": specs_each,
        "checkpoints": checkpoints,
    }  # fmt: skip
    return _statistics_tree(chunks, chunk_layer_errors, kwargs, split_every)


def validation_graph(
    chunks: list[ChunkRef],
    fp32: ModelRef,
    int8s: tuple[ModelRef, ...],
    anchors: int = 0,
    outputs: tuple[str, ...] | None = None,
    checkpoints: Checkpoints | None = None,
    fp32_known: list | None = None,
):
    """Per chunk, in chunk order, one ChunkValidation for each of `int8s` (the rows of each model's
    validation.parquet): `outputs` compared, the lead one first (None: the model's first output). A chunk's
    task runs the FP32 model once for all of `int8s`, or not at all where `fp32_known` (per chunk, its FP32
    outputs or a future of them) has them.

    With `anchors` > 0, the first `anchors` chunks are the nearest-neighbour reference set: their
    outputs are computed once, joined into one task every chunk task reads, and compared there
    without running the models again.
    """
    kwargs = {"fp32": fp32, "int8s": tuple(int8s), "outputs": outputs}
    checked = {**kwargs, "checkpoints": checkpoints}  # the anchors' own chunks are compared from their outputs
    graph, chunk_keys, token = _chunk_tasks(chunks, validate_against, checked, ("list", anchors))
    reference, known = None, list(fp32_known) if fp32_known is not None else [None] * len(chunks)
    if anchors:
        run = partial(refusing, chunk_outputs, **kwargs)
        outputs = [(f"chunk_outputs-{token}", i) for i in range(anchors)]
        graph.update((key, (run, chunk, known[i])) for i, (key, chunk) in enumerate(zip(outputs, chunks, strict=False)))
        reference = f"join_anchors-{token}"
        graph[reference] = (join_anchors, outputs, chunks[0].start, chunks[anchors - 1].stop)
        compare = partial(refusing, compare_each, names=kwargs["outputs"])
        for key, chunk, output_key in zip(chunk_keys, chunks, outputs, strict=False):  # the anchors' own chunks
            graph[key] = (compare, chunk, output_key)
    for i, key in enumerate(chunk_keys):  # then the anchors' reference sets (a key, or None); FP32's outputs
        graph[key] = (*graph[key], reference) if i < anchors else (*graph[key], reference, known[i])
    root = f"validation-{token}"
    graph[root] = (list, chunk_keys)
    return ChunkGraph(root, graph, chunk_keys)
