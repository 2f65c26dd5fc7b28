"""ONNX Runtime's quantizer warnings, each said once in one line with the fix."""

from __future__ import annotations

import re

# (pattern in ORT's message, what it means for the user and what to do; the same after preparation)
_KNOWN = (
    (
        re.compile(r"pre-process|pre_process|preprocess", re.IGNORECASE),
        "ONNX Runtime advises pre-processing the model before quantization: drop --no-prepare",
        "ONNX Runtime advises pre-processing the model before quantization (it was prepared)",
    ),
    (
        re.compile(r"Expected bias .* to be an initializer|Bias of .* is not constant", re.IGNORECASE),
        "biases that are not initializers stay FP32 (Constant nodes?): drop --no-prepare to fold them",
        "biases that are not constant stay FP32 (for example an input added into a fused Gemm); nothing to do",
    ),
    (  # qdq_quantizer.is_tensor_per_channel: an axis past the weight's rank means per-tensor for that weight
        re.compile(r"Axis -?\d+ is out-of-range for weight '.*' with rank", re.IGNORECASE),
        "weights without the channel axis (1-D LayerNorm or normalisation scales) are quantized per tensor; "
        "nothing to do",
        "weights without the channel axis (1-D LayerNorm or normalisation scales) are quantized per tensor; "
        "nothing to do",
    ),
    (
        re.compile(r"opset version .* does not support|Updating the model automatically to opset", re.IGNORECASE),
        "the model's opset is too old for quantization and ONNX Runtime upgraded it: drop --no-prepare",
        "the model's opset is too old for quantization and ONNX Runtime upgraded it",
    ),
)


def explain(warnings: tuple[str, ...], prepared: bool = False) -> list[str]:
    """One line per kind of warning (known kinds explained, with how many times it was given);
    `prepared`: the model went through preparation, so "drop --no-prepare" is no advice."""
    counts: dict[str, int] = {}
    for warning in warnings:
        line = next((known[2 if prepared else 1] for known in _KNOWN if known[0].search(warning)), None)
        if line is None:
            line = "ONNX Runtime's quantizer: " + warning.strip().splitlines()[0][:200]
        counts[line] = counts.get(line, 0) + 1
    return [line + (f" ({count} times)" if count > 1 else "") for line, count in counts.items()]
