"""Which validation metrics fit the model: chosen by --metric, or guessed from the model and data."""

from __future__ import annotations

import math
import re

from dask_quant.pipeline.config import Metric
from dask_quant.tasks.errors import InputError

ANCHORS = 256  # validation rows every sample's nearest neighbour is looked up among
_CLASSIFIER_NAME = re.compile(r"logit|prob|score|class", re.IGNORECASE)


_FLOATS = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _per_sample(value, batch: int | None, output_axes: dict[str, int], batch_names: set[str] | None = None) -> bool:
    """A floating-point output with one row per sample. With `batch_names` (the inputs' batch dims), a
    symbolic row count must be one of them: an output whose rows depend on the data (NonZero's) is not
    compared."""
    tensor = value.type.tensor_type
    if tensor.elem_type not in _FLOATS:
        return False
    if not tensor.HasField("shape"):
        return batch_names is None
    dims = tensor.shape.dim
    axis = output_axes.get(value.name, 0)
    if len(dims) <= axis:
        return False
    rows = dims[axis]
    if rows.HasField("dim_value"):
        return batch is not None and rows.dim_value == batch
    return batch_names is None or rows.dim_param in batch_names


def compared_outputs(
    proto, batch: int | None, output_axes: dict[str, int], where: str, lead: str | None = None
) -> tuple[str, ...]:
    """The outputs validation compares, the lead one first (`lead`, or the first): every floating-point
    output with one row per sample.

    An int64 ArgMax or an output that lost its batch axis (batch 1 squeezed to `[10]`) is skipped:
    its rows are not samples. InputError when no output qualifies, or `lead` does not.
    """
    names = [value.name for value in proto.graph.output if _per_sample(value, batch, output_axes)]
    # The lead may be any such output (the first, or --lead-output); the others only those whose rows are
    # named like an input's batch: compared alongside, they must not stop a run (tasks.validate checks too).
    batch_names = _batch_names(proto)
    sure = [value.name for value in proto.graph.output if _per_sample(value, batch, output_axes, batch_names)]
    shapes = ", ".join(
        f"{v.name} {[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]}" for v in proto.graph.output
    )
    if lead is not None and lead not in names:
        msg = (
            f"--lead-output {lead!r}: not an output validation can compare (floating-point, one row per sample: "
            f"{', '.join(map(repr, names)) or 'none'}; the model's outputs: {shapes})"
        )
        raise InputError(msg)
    if not names:
        msg = (
            f"{where}: no floating-point output has one row per sample (outputs: {shapes}), so FP32 and INT8 "
            "outputs cannot be compared sample by sample; run without --val"
        )
        raise InputError(msg)
    lead = lead or names[0]
    return (lead, *(name for name in sure if name != lead))


def _batch_names(proto) -> set[str]:
    """The symbolic names of the graph inputs' dims (a batch dim is among them)."""
    initializers = {init.name for init in proto.graph.initializer}
    return {
        dim.dim_param
        for value in proto.graph.input
        if value.name not in initializers
        for dim in value.type.tensor_type.shape.dim
        if dim.dim_param
    }


def resolve_metric(requested: Metric, proto, has_labels: bool, output: str | None = None) -> Metric:
    """`requested`, or for auto: classification with labels; regression for one value per sample or a
    dense map (three or more axes per sample, e.g. C x H x W), whatever its name or producer; then
    classification for a classifier-looking output; else embedding."""
    if requested is not Metric.AUTO:
        return requested
    if has_labels:
        return Metric.CLASSIFICATION
    output = next((o for o in proto.graph.output if o.name == output), proto.graph.output[0])
    per_sample = [d.dim_value for d in output.type.tensor_type.shape.dim[1:]]
    # A detector's score map or a segmenter's per-pixel classes: its values matter, and a top-1 over
    # every pixel means nothing. Nor does one over a single value per sample.
    if len(per_sample) >= 3 or (per_sample and all(d > 0 for d in per_sample) and math.prod(per_sample) == 1):
        return Metric.REGRESSION
    producer = next((n for n in proto.graph.node if output.name in n.output), None)
    if (producer is not None and producer.op_type in ("Softmax", "LogSoftmax")) or _CLASSIFIER_NAME.search(output.name):
        return Metric.CLASSIFICATION
    return Metric.EMBEDDING


def _pct(value) -> str:
    return "n/a (no labels)" if value is None else f"{100 * value:.2f}%"


def _num(value, digits: int = 5) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def headline_metrics(summary: dict) -> list[tuple[str, str]]:
    """(label, value) pairs of the metrics that lead, from a run.json summary record."""
    metric = summary.get("metric") or Metric.CLASSIFICATION.value
    if metric == Metric.EMBEDDING.value:
        return [
            ("mean cosine", _num(summary["mean_cosine"])),
            ("min cosine", _num(summary["min_cosine"])),
            ("NN agreement", _pct(summary["neighbour_agreement"]).replace(" (no labels)", "")),
        ]
    if metric == Metric.REGRESSION.value:
        sqnr = summary["sqnr_db"]
        return [
            ("output MSE", f"{summary['mse']:.4g}"),
            ("output SQNR", "exact" if sqnr is None else f"{sqnr:.1f} dB"),
            ("max |error|", f"{summary['max_abs_error']:.4g}"),
        ]
    return [
        ("FP32 accuracy", _pct(summary["fp32_accuracy"])),
        ("INT8 accuracy", _pct(summary["int8_accuracy"])),
        ("top-1 agreement", _pct(summary["top1_agreement"])),
        ("mean cosine", _num(summary["mean_cosine"])),
    ]


def shown_metrics(summary: dict) -> str:
    """One line of a summary record's leading metrics, those it has (another output than the lead has no
    labels or neighbours)."""
    return ", ".join(f"{label} {value}" for label, value in headline_metrics(summary) if not value.startswith("n/a"))
