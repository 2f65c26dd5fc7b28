"""The worker's calibration copy of a model: per-tensor extrema (or whole tensors) as extra outputs.

Like ONNX Runtime's own MinMax calibrator, each tensor to calibrate gets
ReduceMin and ReduceMax (keepdims=1) followed by Reshape to [-1], plus Size.
Only these small outputs leave the session, and the reductions are listed so
that ORT runs each right after its tensor is made and can free it then: a
task's memory follows the chunk, not the number of calibrated tensors.
"""

from __future__ import annotations

import numpy as np

_FLAT_SHAPE = "dask_quant/flat_shape"


def extrema_names(tensor: str) -> tuple[str, str, str]:
    """Output names carrying a tensor's min, max and element count."""
    return f"{tensor}/dask_quant_min", f"{tensor}/dask_quant_max", f"{tensor}/dask_quant_size"


def add_extrema_outputs(proto, tensors: tuple[tuple[str, int], ...]):
    """A copy of `proto` with min/max/size outputs for each (name, elem type) in `tensors`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if not tensors:
        return model
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), _FLAT_SHAPE))
    reductions = []
    for tensor, elem_type in tensors:
        low, high, size = extrema_names(tensor)
        for op, out, out_type in (("ReduceMin", low, elem_type), ("ReduceMax", high, elem_type), ("Size", size, None)):
            kept = f"{out}/kept"
            attributes = {"keepdims": 1} if op != "Size" else {}
            reductions.append(
                (
                    helper.make_node(op, [tensor], [kept], name=kept, **attributes),
                    helper.make_node("Reshape", [kept, _FLAT_SHAPE], [out], name=out),
                )
            )
            graph.output.append(helper.make_tensor_value_info(out, out_type or TensorProto.INT64, [None]))
    # ORT orders nodes by a depth-first walk back from the graph's leaf nodes,
    # last listed leaf first. Listing the reductions latest-made tensor first
    # lets ORT reduce, and free, each activation right after it is made.
    # Listed the other way round every activation of the chunk stayed alive to
    # the end: 2.6 GB instead of ~0.6 GB for a 64-row MiniLM chunk.
    made = _production_order(graph)
    for nodes in sorted(reductions, key=lambda pair: made.get(pair[0].input[0], 0), reverse=True):
        graph.node.extend(nodes)
    return model


def _production_order(graph) -> dict[str, int]:
    """Position of each tensor's producer in the graph's node list (graph inputs and initializers: 0)."""
    return {name: position + 1 for position, node in enumerate(graph.node) for name in node.output}


def add_outputs(proto, tensors: tuple[tuple[str, int], ...]):
    """`proto` with each (name, elem type) in `tensors` also a graph output (in place; returns it)."""
    from onnx import helper

    present = {o.name for o in proto.graph.output}
    for name, elem_type in tensors:
        if name not in present:
            proto.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
    return proto


def channel_max_names(tensor: str) -> tuple[str, str]:
    """Output names carrying a tensor's per-channel abs-max (over its last axis) and element count."""
    return f"{tensor}/dask_quant_channel_max", f"{tensor}/dask_quant_size"


def add_channel_max_outputs(proto, tensors: tuple[tuple[str, int, int], ...]):
    """A copy of `proto` with, for each (name, elem type, channels) in `tensors`, max |x| over every
    axis but the last (a vector of `channels`) and the element count as extra outputs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = "dask_quant/channel_axis"
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), axis))
    reductions = []
    for tensor, elem_type, channels in tensors:
        top, size = channel_max_names(tensor)
        rows, absolute = f"{top}/rows", f"{top}/abs"
        shape = f"{top}/shape"
        graph.initializer.append(numpy_helper.from_array(np.array([-1, channels], dtype=np.int64), shape))
        # ReduceMax takes its axes as an attribute before opset 18, as an input from 18 on.
        reduce = (
            helper.make_node("ReduceMax", [absolute, axis], [top], name=top, keepdims=0)
            if opset >= 18
            else helper.make_node("ReduceMax", [absolute], [top], name=top, keepdims=0, axes=[0])
        )
        reductions.append(
            (
                helper.make_node("Reshape", [tensor, shape], [rows], name=rows),
                helper.make_node("Abs", [rows], [absolute], name=absolute),
                reduce,
                helper.make_node("Size", [tensor], [size], name=size),
            )
        )
        graph.output.append(helper.make_tensor_value_info(top, elem_type, [channels]))
        graph.output.append(helper.make_tensor_value_info(size, TensorProto.INT64, []))
    made = _production_order(graph)  # as in add_extrema_outputs: reduce each activation as soon as it is made
    for nodes in sorted(reductions, key=lambda group: made.get(group[0].input[0], 0), reverse=True):
        graph.node.extend(nodes)
    return model


def itemsize(elem_type: int) -> int:
    """Bytes per value of an ONNX elem type."""
    from onnx import helper

    return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)

