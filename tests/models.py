"""Test models and data, made by the tests themselves (seeded, no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dask_quant.pipeline.builtin import CALIB, MODEL, VAL, builtin_path


def digits_paths() -> tuple[Path, Path, Path]:
    return builtin_path(MODEL), builtin_path(CALIB), builtin_path(VAL)


def build_residual_model(path: Path) -> Path:
    """A two-input model with a residual Add, a Concat, a MatMul and a Gemm (random weights, seeded)."""
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.proj = nn.Parameter(torch.randn(8 * 4 + 6, 12) * 0.2)
            self.head = nn.Linear(12, 5)

        def forward(self, image, extra):
            h = torch.relu(self.conv1(image))
            h = torch.relu(self.conv2(h) + h)  # residual Add
            pooled = nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
            joined = torch.cat([pooled, extra], dim=1)  # Concat
            hidden = torch.tanh(joined @ self.proj)  # MatMul
            return self.head(hidden)  # Gemm

    torch.manual_seed(1)
    model = Residual().eval()
    sample = (torch.randn(2, 3, 6, 6), torch.randn(2, 6))
    torch.onnx.export(
        model,
        sample,
        str(path),
        input_names=["image", "extra"],
        output_names=["out"],
        dynamic_axes={"image": {0: "n"}, "extra": {0: "n"}, "out": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def residual_data(path: Path, rows: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(rows, 3, 6, 6)).astype(np.float32)
    extra = (rng.normal(size=(rows, 6)) * 3).astype(np.float32)
    np.savez(path, image=image, extra=extra)
    return path


def load_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Whole arrays of a dataset (tests and the reference only; the pipeline never does this)."""
    if path.suffix == ".npy":
        return {names[0]: np.load(path)}
    with np.load(path) as data:
        return {name: data[name] for name in names}


def with_fixed_batch(source: Path, path: Path, batch: int) -> Path:
    """A copy of a model whose inputs and outputs fix axis 0 to `batch` (as many exported models do)."""
    import onnx

    proto = onnx.load(str(source))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(proto, str(path))
    return path


def build_float16_model(path: Path) -> Path:
    """A float16 MatMul -> Add -> Relu model (seeded weights): ranges must stay float16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weight = numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float16), "w")
    bias = numpy_helper.from_array(rng.normal(size=(6,)).astype(np.float16), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
            helper.make_node("Add", ["m", "b"], ["a"], name="add"),
            helper.make_node("Relu", ["a"], ["out"], name="relu"),
        ],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT16, ["n", 6])],
        initializer=[weight, bias],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def build_outlier_mlp(path: Path, hidden_layers: int = 1) -> Path:
    """MatMuls "first", "hidden1".."hiddenN", "last" with Tanh between them (seeded weights);
    outlier_mlp_data's calibration set has one row with a huge first feature, so only the first MatMul's
    input range (and its output's) is ruined."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(7)
    names = ["first", *(f"hidden{i}" for i in range(1, hidden_layers + 1)), "last"]
    sizes = [(8, 16), *[(16, 16)] * hidden_layers, (16, 4)]
    weights, nodes, current = [], [], "x"
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        weights.append(numpy_helper.from_array((rng.normal(size=size) / np.sqrt(size[0])).astype(np.float32), f"w{i}"))
        made = "out" if name == "last" else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [made], name=name))
        if name != "last":
            nodes.append(helper.make_node("Tanh", [made], [f"t{i}"], name=f"tanh{i}"))
            current = f"t{i}"
    return _save_checked(path, nodes, "outlier_mlp", weights, 4)


def build_two_headed_model(path: Path) -> Path:
    """x -> MatMul "lead_mm" -> out (the lead output) and x -> MatMul "side_mm" -> side, whose weight holds
    one large value: quantized per tensor, its other weights round coarsely and only the second output loses
    (ORT's quantizer, MinMax, outlier_mlp_data without the outlier: cosine 0.9999 and 0.9972; with side_mm in
    FP32, 0.9999 and 0.9998)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    side = (rng.normal(size=(8, 4)) / np.sqrt(8)).astype(np.float32)
    side[0, 0] = 20.0
    weights = [
        numpy_helper.from_array((rng.normal(size=(8, 4)) / np.sqrt(8)).astype(np.float32), "w0"),
        numpy_helper.from_array(side, "w1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["out"], name="lead_mm"),
        helper.make_node("MatMul", ["x", "w1"], ["side"], name="side_mm"),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 4]) for name in ("out", "side")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    model = helper.make_model(
        helper.make_graph(nodes, "two_headed", [x], outputs, weights), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _save_checked(path: Path, nodes, name: str, weights, outputs: int) -> Path:
    """An opset-17 model of `nodes` from input x [n, 8] to output out [n, `outputs`], checked, saved."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", outputs])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def outlier_mlp_data(path: Path, rows: int, seed: int, outlier: bool) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    if outlier:
        x[rows // 2, 0] = 5000.0  # one rare value: the uint8 scale of x then has ~40 per step
    np.savez(path, x=x)
    return path


def build_shared_outlier_model(path: Path) -> Path:
    """x -> Add "shift" -> s, read by MatMuls "left" and "right" -> Tanh each -> Add "join" -> out.

    With outlier_mlp_data's calibration set, s's range is ruined, and three nodes ask ORT for s's one QDQ
    pair (shift for its output, left and right for their input): no single node's revert takes it out,
    only the three together (the shared quantizer's group)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(11)
    weights = [
        numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32) * 0.1, "c"),
        numpy_helper.from_array((rng.normal(size=(8, 16)) / np.sqrt(8)).astype(np.float32), "wl"),
        numpy_helper.from_array((rng.normal(size=(8, 16)) / np.sqrt(8)).astype(np.float32), "wr"),
    ]
    nodes = [
        helper.make_node("Add", ["x", "c"], ["s"], name="shift"),
        helper.make_node("MatMul", ["s", "wl"], ["l"], name="left"),
        helper.make_node("MatMul", ["s", "wr"], ["r"], name="right"),
        helper.make_node("Tanh", ["l"], ["tl"], name="tanh_left"),
        helper.make_node("Tanh", ["r"], ["tr"], name="tanh_right"),
        helper.make_node("Add", ["tl", "tr"], ["out"], name="join"),
    ]
    return _save_checked(path, nodes, "shared_outlier", weights, 16)
