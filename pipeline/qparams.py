"""Read the scales and zero points ONNX Runtime wrote into a QDQ model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.range_stats import RangeStats

_QUANTIZED_SUFFIX = "_quantized"
# ORT renames a quantized graph output's producer to "<output>_QuantizeLinear_Input".
_OUTPUT_SUFFIX = "_QuantizeLinear_Input"


@dataclass(frozen=True)
class QParam:
    """Quantization parameters of one tensor as written in the model."""

    tensor: str
    kind: str  # "activation" or "weight" (weights include quantized biases)
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None
    dtype: str


def _attribute(node, name: str):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return None


def read_qparams(proto) -> list[QParam]:
    """One QParam per quantized tensor, sorted by kind and name.

    Activations are the inputs of QuantizeLinear nodes; weights are the
    initializers feeding DequantizeLinear nodes directly.
    """
    from onnx import numpy_helper

    init = {i.name: i for i in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    found: dict[tuple[str, str], QParam] = {}
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        source = node.input[0]
        is_weight = source in init
        if node.op_type == "QuantizeLinear" and is_weight:
            continue  # a weight kept in float with its own Q/DQ pair: its DequantizeLinear reports it
        if node.op_type == "DequantizeLinear" and not is_weight:
            continue
        scale = numpy_helper.to_array(init[node.input[1]]).astype(np.float32).reshape(-1)
        zero_point = numpy_helper.to_array(init[node.input[2]]).reshape(-1)
        axis = _attribute(node, "axis") if scale.size > 1 else None
        if is_weight:
            name = source.removesuffix(_QUANTIZED_SUFFIX)
        else:
            name = source.removesuffix(_OUTPUT_SUFFIX) if source.removesuffix(_OUTPUT_SUFFIX) in outputs else source
        kind = "weight" if is_weight else "activation"
        found[(kind, name)] = QParam(
            name, kind, tuple(float(s) for s in scale), tuple(int(z) for z in zero_point), axis, zero_point.dtype.name
        )
    return [found[key] for key in sorted(found)]


def qparam_rows(params: list[QParam], stats: RangeStats, method: str) -> list[dict]:
    """Rows of qparams.parquet: scalars for per-tensor parameters, lists for per-channel."""
    ranges = stats.as_dict()
    rows = []
    for p in params:
        per_tensor = len(p.scale) == 1
        observed = ranges.get(p.tensor) if p.kind == "activation" else None
        rows.append(
            {
                "tensor": p.tensor,
                "kind": p.kind,
                "rmin": None if observed is None else observed.min,
                "rmax": None if observed is None else observed.max,
                "elements": None if observed is None else observed.count,
                "scale": p.scale[0] if per_tensor else None,
                "zero_point": p.zero_point[0] if per_tensor else None,
                "channel_scales": None if per_tensor else list(p.scale),
                "channel_zero_points": None if per_tensor else list(p.zero_point),
                "axis": p.axis,
                "dtype": p.dtype,
                "method": method if p.kind == "activation" else "weights",
            }
        )
    return rows
