"""SmoothQuant: activation outliers migrated into the weights of the MatMul and Gemm nodes that read them.

For an activation X read by nodes with constant weights W (rows = X's last
axis), each input channel k gets a scale s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)
(Xiao et al., 2023); the model then reads X / s and the weights are s * W, which
computes the same products in exact arithmetic while the activation's outlier
channels shrink and the weights take them, where per-channel weight
quantization absorbs them. max|X_k| is the calibration set's (tasks.smoothing,
exact for any chunking); the smoothed model is then calibrated and quantized
as any other. Everything here is a pure function of (model, statistics, alpha).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_quant.tasks.smoothing import ChannelMaxima

SMOOTHED_OPS = ("MatMul", "Gemm")
_INVERSE = "dask_quant_smooth_inverse"
_LIMITS = (1e-5, 1e5)  # scales outside this would only trade one outlier for another


@dataclass(frozen=True)
class SmoothTarget:
    """An activation and the nodes reading it whose weights take its scales."""

    tensor: str
    elem_type: int
    channels: int
    nodes: tuple[str, ...]


def _transposed(node) -> bool:
    """Whether the node stores its weight as [outputs, channels] (Gemm with transB=1)."""
    return node.op_type == "Gemm" and bool(next((a.i for a in node.attribute if a.name == "transB"), 0))


def _weight_rows(node, weight: np.ndarray) -> np.ndarray:
    """The weight as [channels of the activation, outputs]."""
    return weight.T if _transposed(node) else weight


def _is_plain(node) -> bool:
    """A MatMul, or a Gemm that does not transpose its activation (transA=0)."""
    return node.op_type == "MatMul" or not next((a.i for a in node.attribute if a.name == "transA"), 0)


def smoothing_targets(proto, tensors: dict[str, int], exclude_nodes: tuple[str, ...] = ()) -> list[SmoothTarget]:
    """Every calibrated float32 activation read (as the first input) by MatMul/Gemm nodes whose second input
    is a 2-D float32 initializer used by no other node; the excluded nodes' activations are left alone."""
    from onnx import TensorProto, numpy_helper

    weights = {init.name: init for init in proto.graph.initializer}
    users: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    readers: dict[str, list] = {}
    for node in proto.graph.node:
        if node.op_type not in SMOOTHED_OPS or len(node.input) < 2 or not _is_plain(node):
            continue
        init = weights.get(node.input[1])
        if init is None or init.data_type != TensorProto.FLOAT or len(init.dims) != 2 or users[node.input[1]] != 1:
            continue
        if tensors.get(node.input[0]) == TensorProto.FLOAT and node.input[0] not in weights:
            readers.setdefault(node.input[0], []).append(node)
    targets = []
    for tensor, nodes in sorted(readers.items()):
        if any(node.name in exclude_nodes for node in nodes):
            continue
        channels = {_weight_rows(n, numpy_helper.to_array(weights[n.input[1]])).shape[0] for n in nodes}
        if len(channels) == 1:
            targets.append(SmoothTarget(tensor, TensorProto.FLOAT, channels.pop(), tuple(n.name for n in nodes)))
    return targets


def smoothing_scales(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s = max|X|^alpha / max|W|^(1 - alpha) per channel (float32); 1 where either side is all zeros."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = activation_max**alpha / weight_max ** (1 - alpha)
    usable = (activation_max > 0) & (weight_max > 0) & np.isfinite(scales)
    return np.clip(np.where(usable, scales, 1.0), *_LIMITS).astype(np.float32)


def smooth_model(proto, targets: list[SmoothTarget], maxima: ChannelMaxima, alpha: float):
    """A copy of `proto` in which every target's readers take X * (1 / s) and s-scaled weights."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    by_name = {node.name: node for node in graph.node}
    position = {id(node): i for i, node in enumerate(graph.node)}
    inserts = []
    for target in targets:
        readers = [by_name[name] for name in target.nodes]
        rows = [_weight_rows(n, numpy_helper.to_array(weights[n.input[1]])) for n in readers]
        weight_max = np.max([np.abs(r).max(axis=1) for r in rows], axis=0).astype(np.float64)
        scales = smoothing_scales(maxima.get(target.tensor).array(), weight_max, alpha)
        inverse, smoothed = f"{target.tensor}/{_INVERSE}", f"{target.tensor}/smoothed"
        graph.initializer.append(numpy_helper.from_array((np.float32(1) / scales).astype(np.float32), inverse))
        for node, weight in zip(readers, rows, strict=True):
            scaled = (weight * scales[:, None]).astype(np.float32)
            stored = np.ascontiguousarray(scaled.T if _transposed(node) else scaled)
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(stored, node.input[1]))
            node.input[0] = smoothed
        first = min(position[id(node)] for node in readers)
        inserts.append((first, helper.make_node("Mul", [target.tensor, inverse], [smoothed], name=smoothed)))
    for index, node in sorted(inserts, key=lambda pair: pair[0], reverse=True):  # before its first reader
        graph.node.insert(index, node)
    return model


def smoothing_muls(proto) -> tuple[str, ...]:
    """The Mul nodes smooth_model inserted. They are never quantized: a QDQ pair on their input would
    quantize the activation with the very outliers smoothing moved out of it."""
    return tuple(
        node.name
        for node in proto.graph.node
        if node.op_type == "Mul" and len(node.input) == 2 and node.input[1].endswith(f"/{_INVERSE}")
    )


def excluding_smoothing(quant, proto):
    """`quant` with the smoothing Muls of `proto` added to its excluded nodes."""
    from dataclasses import replace

    extra = tuple(name for name in smoothing_muls(proto) if name not in quant.exclude_nodes)
    return replace(quant, exclude_nodes=(*quant.exclude_nodes, *extra)) if extra else quant
