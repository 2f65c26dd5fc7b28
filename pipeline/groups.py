"""Quantizer groups for the tune search: the nodes ONNX Runtime's quantizer quantized.

ORT places QDQ pairs per node (its inputs, its weights, its output), and
`nodes_to_exclude` takes a node back out with all of them: so a group is one
node, named as in the prepared model, and reverting any set of groups is one
more `--exclude-nodes` list that always yields a valid model.
"""

from __future__ import annotations

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def quantized_nodes(int8_proto, fp32_proto, op_types: tuple[str, ...]) -> tuple[str, ...]:
    """Names of the FP32 model's nodes of `op_types` (what the quantizer was asked to quantize) that read a
    DequantizeLinear output in the INT8 model, in graph order. A node of another type can read one too (a
    Tanh after a quantized MatMul's output) but excluding it would change nothing."""
    made_by = {out: node.op_type for node in int8_proto.graph.node for out in node.output}
    quantized = {
        node.name
        for node in int8_proto.graph.node
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and any(made_by.get(name) == "DequantizeLinear" for name in node.input)
    }
    wanted = set(op_types)
    return tuple(node.name for node in fp32_proto.graph.node if node.name in quantized and node.op_type in wanted)


def int8_share(int8_proto, op_types: tuple[str, ...] = WEIGHTED) -> dict[str, tuple[int, int]]:
    """Per op type in `op_types`: (nodes whose every input is dequantized, nodes) in a QDQ model."""
    made_by = {out: node.op_type for node in int8_proto.graph.node for out in node.output}
    share: dict[str, tuple[int, int]] = {}
    for node in int8_proto.graph.node:
        if node.op_type in op_types:
            inputs = [name for name in node.input[:2] if name]
            int8 = all(made_by.get(name) == "DequantizeLinear" for name in inputs)
            done, total = share.get(node.op_type, (0, 0))
            share[node.op_type] = (done + int8, total + 1)
    return share
