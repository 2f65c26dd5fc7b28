"""Read the scales and zero points ONNX Runtime wrote into a QDQ model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def activation_name(source: str, graph_outputs: set[str]) -> str:
    """The FP32 model's name for the input of a QuantizeLinear in the QDQ model."""
    original = source.removesuffix(_OUTPUT_SUFFIX)
    return original if original in graph_outputs else source


def _attribute(node, name: str):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return None


def read_qparams(proto) -> list[QParam]:
    """One QParam per quantized tensor, sorted by kind and name.

    Activations are the inputs of QuantizeLinear nodes; weights are the
    initializers feeding DequantizeLinear nodes directly, and in a QOperator
    model those its integer operators read (the dynamic scheme's) and the
    blocks of each MatMulNBits (the weight-only scheme's).
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
            name = activation_name(source, outputs)
        kind = "weight" if is_weight else "activation"
        found[(kind, name)] = QParam(
            name, kind, tuple(float(s) for s in scale), tuple(int(z) for z in zero_point), axis, zero_point.dtype.name
        )
    for name, quantized, scale, zero_point in _operator_weights(init, proto):
        if ("weight", name) not in found:
            axis = _channel_axis(quantized.shape, scale.size)
            found[("weight", name)] = QParam(
                name, "weight", tuple(float(v) for v in scale), tuple(int(z) for z in zero_point), axis,
                zero_point.dtype.name,
            )  # fmt: skip
    for param in _block_weights(init, proto):
        found.setdefault(("weight", param.tensor), param)
    return [found[key] for key in sorted(found)]


def _block_weights(init: dict, proto):
    """A QParam per MatMulNBits weight (the weight-only scheme's): `scale` holds every block's scale, row
    by row of the [N, K / block_size] grid MatMulNBits reads (one row per output column), `zero_point` the
    blocks' integer zero points in the same order (none when they are floats, as HQQ's are)."""
    from onnx import numpy_helper

    for node in proto.graph.node:
        if node.op_type != "MatMulNBits" or node.input[1] not in init:
            continue
        bits, n, k, block = (_attribute(node, name) for name in ("bits", "N", "K", "block_size"))
        blocks = -(-k // block)
        scale = numpy_helper.to_array(init[node.input[2]]).astype(np.float32).reshape(-1)
        zero_point: tuple[int, ...] = ()
        stored = init.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if stored is not None and stored.data_type == 2:  # uint8: packed `bits`-bit integers, row by row
            packed = numpy_helper.to_array(stored).reshape(n, -1)
            if bits == 4:  # two per byte, the low nibble first
                packed = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)
            zero_point = tuple(int(z) for z in packed[:, :blocks].reshape(-1))
        # The FP32 weight's name: MatMulNBitsQuantizer writes W_Q4, the GPTQ packing (ORT's) W_Q4G32.
        weight = node.input[1].removesuffix(f"_Q{bits}G{block}").removesuffix(f"_Q{bits}")
        yield QParam(weight, "weight", tuple(float(v) for v in scale), zero_point, None, f"uint{bits}")


def _operator_weights(init: dict, proto):
    """(name, quantized values, scale, zero point) of each weight a QOperator model (quantize_dynamic's)
    holds as `<w>_quantized` with `<w>_scale` and `<w>_zero_point` beside it, read by an integer operator
    (MatMulInteger, ConvInteger) rather than a DequantizeLinear."""
    from onnx import numpy_helper

    dequantized = {node.input[0] for node in proto.graph.node if node.op_type == "DequantizeLinear"}
    for key, tensor in init.items():
        if not key.endswith(_QUANTIZED_SUFFIX) or key in dequantized:
            continue
        name = key.removesuffix(_QUANTIZED_SUFFIX)
        scale, zero_point = init.get(f"{name}_scale"), init.get(f"{name}_zero_point")
        if scale is None or zero_point is None:
            continue
        yield (
            name,
            numpy_helper.to_array(tensor),
            numpy_helper.to_array(scale).astype(np.float32).reshape(-1),
            numpy_helper.to_array(zero_point).reshape(-1),
        )


def _channel_axis(shape: tuple[int, ...], channels: int) -> int | None:
    """The axis of a per-channel weight's scales (the one of that length; None when per tensor, or when
    several axes have it)."""
    if channels <= 1:
        return None
    axes = [axis for axis, size in enumerate(shape) if size == channels]
    return axes[0] if len(axes) == 1 else None


WEIGHT_SETTINGS = {
    "method": "weights",
    "symmetric": True,
    "percentile": None,
    "num_bins": None,
    "num_quantized_bins": None,
}


def qparam_rows(params, stats, ranges: dict, quant) -> list[dict]:
    """Rows of qparams.parquet: scalars for per-tensor parameters, lists for per-channel.

    `rmin`/`rmax` is the range handed to the quantizer (the method's choice),
    `observed_min`/`observed_max` the exact range seen in calibration.
    """
    from dask_quant.pipeline.methods import setting_values

    observed = stats.as_dict()
    activation_settings = {"method": quant.method.value, "symmetric": quant.symmetric, **setting_values(quant)}
    rows = []
    for p in params:
        per_tensor = len(p.scale) == 1
        seen = observed.get(p.tensor) if p.kind == "activation" else None
        chosen = ranges.get(p.tensor) if seen is not None else None
        rows.append(
            {
                "tensor": p.tensor,
                "kind": p.kind,
                "rmin": None if chosen is None else chosen[0],
                "rmax": None if chosen is None else chosen[1],
                "observed_min": None if seen is None else seen.min,
                "observed_max": None if seen is None else seen.max,
                "elements": None if seen is None else seen.count,
                "scale": p.scale[0] if per_tensor else None,
                "zero_point": p.zero_point[0] if per_tensor else None,
                "channel_scales": None if per_tensor else list(p.scale),
                "channel_zero_points": None if per_tensor else list(p.zero_point),
                "axis": p.axis,
                "dtype": p.dtype,
                **(activation_settings if p.kind == "activation" else WEIGHT_SETTINGS),
            }
        )
    return rows
