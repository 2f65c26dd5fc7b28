"""Hardware presets (`--preset`): each a named set of quantization options taken from an execution
provider's own guidance. A preset fills the options it names; one given with another value is refused.

Only the CPU EP runs on a machine without the hardware; the others' models are checked for what their EP
needs (tests/cluster/test_presets.py): the QNN model passes onnx.checker with every quantized node between
uint8 DequantizeLinear and QuantizeLinear nodes, the TensorRT one has zero points of 0 and its table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Preset(str, Enum):
    CPU = "cpu"
    TENSORRT = "tensorrt"
    QNN = "qnn"


@dataclass(frozen=True)
class PresetInfo:
    """What a preset sets (QuantConfig fields; `tensorrt_table`: RunConfig's), said in one line, and why."""

    summary: str
    source: str
    quant: tuple[tuple[str, object], ...]
    tensorrt_table: bool = False
    weights: str = "int8 symmetric"  # the weight type its quantizer writes (QuantConfig has no field for it)


PRESETS = {
    Preset.CPU: PresetInfo(
        "static QDQ, int8 activations (asymmetric) and int8 symmetric per-channel weights (S8S8), MinMax ranges",
        "ONNX Runtime's quantization guide for the CPU EP: S8S8 in QDQ format is quantize_static's default and "
        "the first choice (U8U8 only where S8S8 loses accuracy); per-channel weights for accuracy",
        (("scheme", "static"), ("activation_type", "int8"), ("symmetric", False), ("per_channel", True)),
    ),
    Preset.TENSORRT: PresetInfo(
        "static QDQ, int8 symmetric activations and int8 symmetric per-channel weights (every zero point 0), "
        "MinMax ranges, and TensorRT's calibration table in tensorrt/",
        "the TensorRT EP quantizes symmetrically to int8 (zero point 0); for implicit quantization it reads each "
        "tensor's range from the calibration table (trt_int8_enable, trt_int8_calibration_table_name)",
        (("scheme", "static"), ("activation_type", "int8"), ("symmetric", True), ("per_channel", True)),
        tensorrt_table=True,
    ),
    Preset.QNN: PresetInfo(
        "static QDQ, uint8 activations and uint8 asymmetric per-tensor weights, with the overrides ONNX Runtime's "
        "get_qnn_qdq_config sets for QNN (fixed ranges of Sigmoid/Tanh outputs, shared scales, MinimumRealRange)",
        "onnxruntime.quantization.execution_providers.qnn.get_qnn_qdq_config, whose options quantize_static "
        "receives unchanged (op types: the ones ONNX Runtime's QDQ quantizer registers)",
        (("scheme", "static"), ("activation_type", "uint8"), ("symmetric", False), ("per_channel", False)),
        weights="uint8 asymmetric",
    ),
}


def weights_line(preset: Preset | str | None) -> str:
    """The weight type a static run writes: int8 symmetric, or what its preset says."""
    return PRESETS[Preset(preset)].weights if preset is not None else "int8 symmetric"


def preset_line(preset: Preset) -> str:
    """What a run prints about its preset."""
    return f"preset {preset.value}: {PRESETS[preset].summary}"


def qnn_kwargs(model, config) -> dict:
    """quantize_static's options for `model` (a ModelProto or a path) from get_qnn_qdq_config, for `config`'s
    op types (ORT's QDQ registry by default), excluded nodes and per-channel choice."""
    from pathlib import Path

    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from dask_quant.pipeline.selection import default_op_types

    qnn = get_qnn_qdq_config(
        str(model) if isinstance(model, Path) else model,
        None,  # the ranges come from our calibration
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8,
        per_channel=config.per_channel,
        op_types_to_quantize=list(config.op_types or default_op_types()),
        nodes_to_exclude=list(config.exclude_nodes) or None,
    )
    return {
        "quant_format": QuantFormat.QDQ,
        "op_types_to_quantize": qnn.op_types_to_quantize,
        "per_channel": qnn.per_channel,
        "reduce_range": qnn.reduce_range,
        "activation_type": qnn.activation_type,
        "weight_type": qnn.weight_type,
        "nodes_to_exclude": list(qnn.nodes_to_exclude or []),
        "extra_options": qnn.extra_options,
    }
