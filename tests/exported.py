"""Models built to look like what other tools export (onnx.helper rewrites of our own models, seeded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(proto, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def with_opset(source: Path, path: Path, opset: int):
    """A copy claiming an older opset (every op of the digits CNN means the same there)."""
    import onnx

    proto = onnx.load(str(source))
    proto.opset_import[0].version = opset
    return _save(proto, path)


def with_constant_weights(source: Path, path: Path, opset: int = 12) -> Path:
    """Every initializer moved into a Constant node, at an older opset (as paddle2onnx and TF converters write)."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(source))
    constants = [
        helper.make_node("Constant", [], [i.name], name=f"const_{i.name}", value=i) for i in proto.graph.initializer
    ]
    names = {i.name for i in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in names]
    nodes = [*constants, *proto.graph.node]
    del proto.graph.initializer[:], proto.graph.input[:], proto.graph.node[:]
    proto.graph.input.extend(inputs)
    proto.graph.node.extend(nodes)
    proto.opset_import[0].version = opset
    return _save(proto, path)


def with_destroyed_layer(source: Path, path: Path) -> Path:
    """The digits CNN with `+ c - c` after its first ReLU, c huge in one channel: FP32 barely changes,
    but the Add's INT8 range spans 1e5, so that layer ('destroy/Add') loses every other channel."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(source))
    offset = np.zeros((1, 16, 1, 1), np.float32)
    offset[0, 3] = 1e5
    proto.graph.initializer.append(numpy_helper.from_array(offset, "destroy_offset"))
    nodes = list(proto.graph.node)
    relu = next(i for i, node in enumerate(nodes) if node.op_type == "Relu")
    original = nodes[relu].output[0]
    nodes[relu].output[0] = "relu_raw"
    added = [
        helper.make_node("Add", ["relu_raw", "destroy_offset"], ["shifted"], name="destroy/Add"),
        helper.make_node("Sub", ["shifted", "destroy_offset"], [original], name="destroy/Sub"),
    ]
    del proto.graph.node[:]
    proto.graph.node.extend([*nodes[: relu + 1], *added, *nodes[relu + 1 :]])
    return _save(proto, path)


def recurrent_model(path: Path, hidden: int = 16, scalar_name: str = "sr", batch: str | int = "batch") -> Path:
    """A recurrent-style step: x [batch, 8], a state h0 [2, batch, H] (batch on axis 1) and a scalar input;
    outputs out [batch, 4] and the next state h1 [2, batch, H]. `batch`: a dim name, or a fixed size."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    weights = [
        numpy_helper.from_array(rng.normal(size=(8, hidden)).astype(np.float32) * 0.3, "w_in"),
        numpy_helper.from_array(rng.normal(size=(hidden, 4)).astype(np.float32) * 0.3, "w_out"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["projected"], name="in/MatMul"),
        helper.make_node("ReduceSum", ["h0", "axis0"], ["state"], name="state/ReduceSum", keepdims=0),
        helper.make_node("Add", ["projected", "state"], ["mixed"], name="mix/Add"),
        helper.make_node("Mul", ["mixed", scalar_name], ["scaled"], name="scale/Mul"),
        helper.make_node("Relu", ["scaled"], ["hidden"], name="act/Relu"),
        helper.make_node("MatMul", ["hidden", "w_out"], ["out"], name="out/MatMul"),
        helper.make_node("Mul", ["h0", scalar_name], ["h1"], name="next/Mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "recurrent",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [2, batch, hidden]),
            helper.make_tensor_value_info(scalar_name, TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4]),
            helper.make_tensor_value_info("h1", TensorProto.FLOAT, [2, batch, hidden]),
        ],
        initializer=weights,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def recurrent_data(path: Path, rows: int, seed: int, hidden: int = 16, **extra) -> Path:
    """x [rows, 8] and h0 stored samples first, [rows, 2, H]; `extra` arrays as given (e.g. a 0-d sr)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    h0 = rng.normal(size=(rows, 2, hidden)).astype(np.float32)
    np.savez(path, x=x, h0=h0, **extra)
    return path


def where_model(path: Path) -> Path:
    """Where on a boolean condition: ONNX Runtime's quantizer inserts nothing into it."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Greater", ["input", "zero"], ["positive"]),
            helper.make_node("Where", ["positive", "input", "zero"], ["out"], name="where"),
        ],
        "where",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 1, 8, 8])],
        initializer=[numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def if_only_model(path: Path) -> Path:
    """All compute inside an If: both branches hold a MatMul, nothing quantizable at the top level."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, scale: float):
        weight = numpy_helper.from_array(np.full((64, 4), scale, np.float32), f"w_{name}")
        return helper.make_graph(
            [
                helper.make_node("Reshape", ["input", "flat_shape"], [f"flat_{name}"]),
                helper.make_node("MatMul", [f"flat_{name}", f"w_{name}"], [f"out_{name}"], name=f"{name}/MatMul"),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"out_{name}", TensorProto.FLOAT, ["n", 4])],
            initializer=[weight],
        )

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "zero"], ["cond"]),
            helper.make_node(
                "If",
                ["cond"],
                ["out"],
                name="branch/If",
                then_branch=branch("then", 1.0),
                else_branch=branch("else", -1.0),
            ),
        ],
        "if_only",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4])],
        initializer=[
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
            numpy_helper.from_array(np.array([-1, 64], np.int64), "flat_shape"),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def token_model(path: Path, vocabulary: int = 10, input_name: str = "ids") -> Path:
    """int64 token ids [batch, 5] -> Gather from an embedding table -> MatMul: ids outside the vocabulary
    make ONNX Runtime fail at run time."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", input_name], ["embedded"], name="embed/Gather"),
            helper.make_node("ReduceMean", ["embedded"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"], name="head/MatMul"),
        ],
        "tokens",
        [helper.make_tensor_value_info(input_name, TensorProto.INT64, ["batch", 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(rng.normal(size=(vocabulary, 6)).astype(np.float32), "table"),
            numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w"),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def offset_model(path: Path) -> Path:
    """out = x @ (w / 100) + 1000: a constant offset dwarfs what depends on the input, so INT8's output
    is the same for every sample while its cosine to FP32 stays near 1."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(13)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["projected"], name="proj/MatMul"),
            helper.make_node("Add", ["projected", "offset"], ["out"], name="offset/Add"),
        ],
        "offset",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array((rng.normal(size=(8, 4)) / 100).astype(np.float32), "w"),
            numpy_helper.from_array(np.full(4, 1000, np.float32), "offset"),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def with_if_head(source: Path, path: Path) -> Path:
    """The digits CNN with its logits through an If: a MatMul head in each branch, picked by the sign of the
    input's sum (as exporters write data-dependent heads). The CNN is quantizable, the heads stay FP32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(source))
    graph = proto.graph
    logits = graph.output[0].name
    weight = np.random.default_rng(0).normal(size=(10, 10)).astype(np.float32)

    def branch(name: str, sign: float):
        return helper.make_graph(
            [helper.make_node("MatMul", [logits, f"w_{name}"], [f"head_{name}"], name=f"{name}/MatMul")],
            name,
            [],
            [helper.make_tensor_value_info(f"head_{name}", TensorProto.FLOAT, ["batch", 10])],
            initializer=[numpy_helper.from_array(sign * weight, f"w_{name}")],
        )

    graph.node.extend(
        [
            helper.make_node("ReduceSum", [graph.input[0].name], ["total"], keepdims=0, name="total/ReduceSum"),
            helper.make_node("Greater", ["total", "zero"], ["cond"], name="cond/Greater"),
            helper.make_node(
                "If", ["cond"], ["head"], name="head/If", then_branch=branch("then", 1.0),
                else_branch=branch("else", -1.0),
            ),
        ]
    )  # fmt: skip
    graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("head", TensorProto.FLOAT, ["batch", 10]))
    return _save(proto, path)


def argmax_first_model(source: Path, path: Path) -> Path:
    """The digits CNN with an int64 ArgMax as its first output and the logits second (as some exporters do)."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(source))
    proto.graph.node.append(helper.make_node("ArgMax", ["logits"], ["class"], axis=1, keepdims=0, name="pick"))
    outputs = [helper.make_tensor_value_info("class", TensorProto.INT64, ["batch"]), *proto.graph.output]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    return _save(proto, path)


def masked_attention_model(path: Path) -> Path:
    """Scores masked with -inf where the mask is 0 (by design, as a padding mask), then Softmax and MatMul."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(17)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["scores"], name="scores/MatMul"),
            helper.make_node("Cast", ["mask"], ["keep"], to=TensorProto.BOOL),
            helper.make_node("Where", ["keep", "scores", "minus_inf"], ["masked"], name="mask/Where"),
            helper.make_node("Softmax", ["masked"], ["weights"], axis=-1, name="attn/Softmax"),
            helper.make_node("MatMul", ["weights", "v"], ["out"], name="out/MatMul"),
        ],
        "masked",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", 6]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "v"),
            numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf"),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def squeezed_output_model(source: Path, path: Path) -> Path:
    """The digits CNN fixed to batch 1 with its logits reshaped to [10]: the output has no sample axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(source))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    proto.graph.initializer.append(numpy_helper.from_array(np.array([10], np.int64), "flat_shape"))
    proto.graph.node.append(helper.make_node("Reshape", ["logits", "flat_shape"], ["flat"], name="squeeze"))
    del proto.graph.output[:]
    proto.graph.output.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, [10]))
    return _save(proto, path)
