"""Which FP32 tensor each quantized activation is compared with, and the rows of layers.parquet."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dask_quant.pipeline.qparams import activation_name
from dask_quant.tasks.histogram import HistogramSpec
from dask_quant.tasks.layer_error import LayerErrors
from dask_quant.tasks.range_stats import RangeStats


def _histogram_columns(histogram) -> dict:
    if histogram is None:
        return {"hist_edges": None, "hist_counts": None}
    return {"hist_edges": histogram.spec.edges().tolist(), "hist_counts": histogram.counts.tolist()}


@dataclass(frozen=True)
class Layer:
    """A quantized activation: its FP32 tensor, the INT8 model's dequantized copy, and who makes it."""

    tensor: str
    dequantized: str
    elem_type: int
    op_type: str
    node: str


def quantized_layers(fp32_proto, int8_proto, elem_types: dict[str, int]) -> list[Layer]:
    """Every activation the INT8 model quantizes, paired with its DequantizeLinear output."""
    initializers = {i.name for i in int8_proto.graph.initializer}
    outputs = {o.name for o in int8_proto.graph.output}
    dequantize_of = {n.input[0]: n.output[0] for n in int8_proto.graph.node if n.op_type == "DequantizeLinear"}
    producer = {out: node for node in fp32_proto.graph.node for out in node.output}
    layers = {}
    for node in int8_proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue
        tensor = activation_name(node.input[0], outputs)
        if tensor not in elem_types or node.output[0] not in dequantize_of:
            continue
        made_by = producer.get(tensor)
        layers[tensor] = Layer(
            tensor,
            dequantize_of[node.output[0]],
            elem_types[tensor],
            made_by.op_type if made_by is not None else "(graph input)",
            made_by.name if made_by is not None else "",
        )
    return [layers[name] for name in sorted(layers)]


REPORT_BINS = 256


def report_specs(stats: RangeStats, layers: list[Layer]) -> tuple[HistogramSpec, ...]:
    """Bins for the validation-set histograms of each quantized activation, on its calibration range."""
    observed = stats.as_dict()
    specs = []
    for layer in layers:
        seen = observed.get(layer.tensor)
        if seen is not None and seen.count:
            bound = max(abs(seen.min), abs(seen.max))
            specs.append(HistogramSpec(layer.tensor, -bound, bound, REPORT_BINS))
    return tuple(specs)


def layer_rows(layers: list[Layer], errors: LayerErrors) -> list[dict]:
    """Rows of layers.parquet, worst SQNR first."""
    measured = dict(errors.entries)
    rows = [
        {
            "tensor": layer.tensor,
            "op_type": layer.op_type,
            "node": layer.node,
            "sqnr_db": measured[layer.tensor].sqnr_db,
            "cosine": measured[layer.tensor].cosine,
            "max_abs_error": measured[layer.tensor].max_abs_error,
            "samples": measured[layer.tensor].samples,
            "elements": measured[layer.tensor].elements,
            "non_finite": measured[layer.tensor].non_finite,
            **_histogram_columns(measured[layer.tensor].histogram),
        }
        for layer in layers
        if layer.tensor in measured
    ]
    return sorted(rows, key=lambda r: (r["sqnr_db"] if not math.isnan(r["sqnr_db"]) else math.inf, r["tensor"]))
