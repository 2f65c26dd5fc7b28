"""ONNX Runtime's quantizer warnings: one line per kind, with the fix."""

from __future__ import annotations

from dask_quant.pipeline.advice import explain


def test_warnings_are_grouped_by_kind_and_explained():
    warnings = (
        "Please consider to run pre-processing before quantization. Refer to example: https://...",
        "Please consider pre-processing before quantization. See https://...",
        "Expected bias '0.bias' to be an initializer",
        "Bias of Gemm node '/6/Gemm' is not constant. Please exclude this node for better performance.",
        "Something new\nwith a second line",
    )
    assert explain(warnings) == [
        "ONNX Runtime advises pre-processing the model before quantization: drop --no-prepare (2 times)",
        "biases that are not initializers stay FP32 (Constant nodes?): drop --no-prepare to fold them (2 times)",
        "ONNX Runtime's quantizer: Something new",
    ]


def test_after_preparation_the_advice_does_not_say_drop_no_prepare():
    lines = explain(("Bias of Gemm node '/6/Gemm' is not constant. Please exclude this node.",), prepared=True)
    expected = "biases that are not constant stay FP32 (for example an input added into a fused Gemm); nothing to do"
    assert lines == [expected]


def test_per_channel_axis_past_a_1d_weight_is_one_line_with_its_count():
    warnings = tuple(f"Axis 1 is out-of-range for weight 'layer.{i}.LayerNorm.weight' with rank 1" for i in range(12))
    assert explain(warnings, prepared=True) == [
        "weights without the channel axis (1-D LayerNorm or normalisation scales) are quantized per tensor; "
        "nothing to do (12 times)"
    ]
