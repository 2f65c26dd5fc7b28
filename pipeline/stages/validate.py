"""The validate stage: FP32 against INT8 over the validation chunks, on the cluster.

Model outputs (metrics per chunk, merged exactly), then per-layer errors (one
merge tree): one pass after the other, so a worker holds one pass's sessions at
a time (tasks.sessions' budget lets the other pass's go; with both passes
interleaved a 1 GiB worker rebuilt or held four). Several INT8 models (a run's
methods) are compared in the same tasks, which run the FP32 model once for all.
Latency runs alone afterwards, so nothing else competes for the core it measures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce

from dask_quant.pipeline.compute import compute
from dask_quant.pipeline.config import Metric
from dask_quant.pipeline.graph import layer_graph, validation_graph
from dask_quant.pipeline.inputs import DatasetSpec
from dask_quant.pipeline.layers import layer_rows, quantized_layers, report_specs
from dask_quant.pipeline.metrics import ANCHORS, resolve_metric
from dask_quant.pipeline.progress import Progress
from dask_quant.pipeline.stages.prepare import Prepared, dataset_chunks
from dask_quant.pipeline.stages.quantize import QuantizedModel
from dask_quant.tasks.checkpoint import Checkpoints
from dask_quant.tasks.chunks import ChunkRef
from dask_quant.tasks.latency import Latency, measure_latency
from dask_quant.tasks.merging import add_counts
from dask_quant.tasks.sessions import ModelRef
from dask_quant.tasks.validate import ChunkValidation, ValidationStats

LATENCY_REPEATS = 20
# The per-layer pass splits a small set finer than the outputs' comparison (its sums are exact for any
# chunking): one task per 64-row chunk made two long MiniLM tasks of 128 rows, and the scheduler put both
# on one worker while the other sat idle for half the stage. Sixteen tasks balance over a few workers.
LAYER_TASKS = 16


def layer_chunks(val: DatasetSpec, chunk_size: int, fixed_batch: int | None = None) -> list[ChunkRef]:
    """The per-layer pass's chunks: at most `chunk_size` rows, about LAYER_TASKS of them when the set has
    the rows, none of one row unless `chunk_size` is 1 (tasks.chunks.chunk_refs), and a multiple of the
    batch the model fixes (as `chunk_size` is)."""
    unit = fixed_batch or 1
    wanted = max(2, -(-val.rows // LAYER_TASKS))
    return dataset_chunks(val, min(chunk_size, -(-wanted // unit) * unit))


@dataclass(frozen=True)
class Validation:
    """What validation measured. Empty (summary None) when there was no validation data."""

    summary: ValidationStats | None = None
    per_chunk: tuple[ChunkValidation, ...] = ()
    layers: tuple[dict, ...] = ()  # layers.parquet rows, worst SQNR first
    latency: Latency | None = None
    metric: Metric | None = None
    output: str | None = None  # the model output whose metrics lead
    # Every other output compared: (name, its metrics' kind, its statistics), in the model's order.
    others: tuple[tuple[str, Metric, ValidationStats], ...] = ()
    # Per pass (outputs, per_layer): chunks (computed, reused from checkpoints, discarded).
    chunks: tuple[tuple[str, tuple[int, int, int]], ...] = ()

    @property
    def ran(self) -> bool:
        return self.summary is not None

    def by_output(self) -> list[tuple[str | None, Metric | None, ValidationStats]]:
        """(output, metric kind, statistics) of every output compared, the lead one first."""
        return [(self.output, self.metric, self.summary), *self.others]


def validate(prepared: Prepared, quantized: QuantizedModel, client, **options) -> Validation:
    """Compare `quantized` with `prepared`'s FP32 model on `prepared.val` over `client`'s workers (the
    options are validate_each's)."""
    (validation,) = validate_each(prepared, [quantized], client, **options)
    return validation


def validate_each(
    prepared: Prepared,
    models: Sequence[QuantizedModel],
    client,
    *,
    metric: Metric = Metric.AUTO,
    chunk_size: int = 64,
    split_every: int = 8,
    log: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
    per_layer: bool = True,
    checkpoints: Checkpoints | None = None,
    fp32_known: list | None = None,
) -> list[Validation]:
    """Compare each of `models` (INT8 models of `prepared`, e.g. one per method) with `prepared`'s FP32 model
    on `prepared.val` over `client`'s workers. A pass's task compares one chunk for every model, the FP32 model
    run once (and its histograms counted once where the models' bins agree); each model's values are those
    it gets alone. Latency is measured in one task, the models taking turns, with one FP32 time for all.
    `fp32_known`, per chunk (of `chunk_size` rows), the FP32 model's compared outputs there (or a future of
    them) as the metric pass computes them: that pass then runs the INT8 models only.

    `client` is the caller's and is never closed here. Without validation data, empty Validations.
    `per_layer=False` skips the per-layer pass (layers.parquet is then empty). With `checkpoints`, every
    chunk's statistics are kept on disk, and with their resume flag read back, as calibration's are.
    """
    import onnx

    if prepared.val is None:
        return [Validation() for _ in models]
    chunks = dataset_chunks(prepared.val, chunk_size)
    metric = resolve_metric(metric, prepared.proto, prepared.val.labels is not None, prepared.output)
    # Embeddings: the first whole chunks, about ANCHORS rows, are the nearest-neighbour reference set.
    anchors = min(len(chunks), max(1, ANCHORS // chunk_size)) if metric is Metric.EMBEDDING else 0
    int8s = [prepared.for_workers(ModelRef(str(q.path), q.sha256)) for q in models]
    layers = [quantized_layers(prepared.proto, onnx.load(str(q.path)), dict(prepared.tensors)) for q in models]
    # A dynamic model quantizes no activation ahead of time: nothing to compare layer by layer.
    skipped = "per-layer error skipped" if not per_layer else "no activation quantized ahead of time to compare"
    # Only the models that have layers to compare (a sweep's dynamic or weight-only entry has none).
    layered = [i for i, ls in enumerate(layers) if ls] if per_layer else []
    per_layer = bool(layered)
    per_layer_chunks = layer_chunks(prepared.val, chunk_size, prepared.fixed_batch) if per_layer else []
    compared = (
        f"per-layer error of {'/'.join(str(n) for n in dict.fromkeys(len(layers[i]) for i in layered))} "
        f"activations in {len(per_layer_chunks)} chunks"
        if per_layer
        else skipped
    )
    which = f"{1 + len(prepared.others)} outputs ({prepared.output!r} leads)" if prepared.others else "outputs"
    methods = ", ".join(q.quant.label for q in models)
    against = "INT8" if len(models) == 1 else f"{len(models)} INT8 models ({methods})"
    log(
        f"validating FP32 against {against} on {prepared.val.rows} rows: {which} in {len(chunks)} chunks, "
        f"{compared} ({metric.value} metrics)"
    )
    names = prepared.compared
    # One graph per pass for every model: a chunk's task runs the FP32 model once for all of them.
    graph = validation_graph(chunks, prepared.model, tuple(int8s), anchors, names, checkpoints, fp32_known)
    (per_chunk,) = compute(client, [graph], "validation", progress)
    outputs_of = [[each[i] for each in per_chunk] for i in range(len(models))]
    errors_of = [None] * len(models)
    if per_layer:
        graph = layer_graph(
            per_layer_chunks, prepared.model, tuple(int8s[i] for i in layered),
            tuple(tuple((layer.tensor, layer.dequantized, layer.elem_type) for layer in layers[i]) for i in layered),
            split_every, tuple(report_specs(models[i].calibration.stats, layers[i]) for i in layered), checkpoints,
        )  # fmt: skip
        (each,) = compute(client, [graph], "per-layer error", progress)
        for i, errors in zip(layered, each.values, strict=True):
            errors_of[i] = errors
    # Latency alone afterwards (nothing else of this job competes for the core it measures).
    latencies = client.submit(
        measure_latency, chunks[0], prepared.model, tuple(int8s), LATENCY_REPEATS, pure=False
    ).result()
    return [
        _validation(prepared, int8, model_layers, outputs, errors, metric, latency)
        for int8, model_layers, outputs, errors, latency in zip(
            int8s, layers, outputs_of, errors_of, latencies, strict=True
        )
    ]


def _validation(prepared: Prepared, int8: ModelRef, layers, outputs, errors, metric, latency) -> Validation:
    """One model's Validation from its passes' results."""
    rows = tuple(layer_rows(layers, errors)) if errors is not None else ()
    summary = reduce(ValidationStats.merge, (c.stats for c in outputs), ValidationStats())
    others = tuple(
        (
            name,
            resolve_metric(Metric.AUTO, prepared.proto, False, name),
            reduce(ValidationStats.merge, (c.others[i] for c in outputs), ValidationStats()),
        )
        for i, name in enumerate(prepared.others)
    )
    counts = [("outputs", reduce(add_counts, (c.chunks for c in outputs), (0, 0, 0)))]
    counts += [("per_layer", errors.chunks)] if errors is not None else []
    return Validation(summary, tuple(outputs), rows, latency, metric, prepared.output, others, tuple(counts))
