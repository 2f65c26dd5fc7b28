"""Which activations get statistics: the ones ONNX Runtime would calibrate.

Mirrors the reference rule (onnxruntime.quantization.calibrate,
CalibraterBase.select_tensors_to_calibrate) so our ranges cover exactly the
tensors its MinMax calibrator reports: float/float16 inputs and outputs of
nodes whose op type is quantizable, initializers excluded (and, unlike it,
tensors that only --exclude-nodes touch, which are never quantized).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain


def default_op_types() -> tuple[str, ...]:
    """Every op type ORT's static quantizer handles (what quantize_static uses by default)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return tuple(sorted(set(QLinearOpsRegistry) | set(QDQRegistry)))


def scheme_op_types(quant) -> tuple[str, ...]:
    """The op types `quant`'s scheme quantizes: --op-types, else what its ORT tool takes by default
    (quantize_static's registries; quantize_dynamic's IntegerOps registry; MatMulNBitsQuantizer's MatMul)."""
    from dask_quant.pipeline.config import Scheme

    if quant.op_types:
        return tuple(quant.op_types)
    if quant.scheme is Scheme.DYNAMIC:
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        return tuple(sorted(IntegerOpsRegistry))
    return ("MatMul",) if quant.scheme is Scheme.WEIGHT_ONLY else default_op_types()


def tensors_to_calibrate(
    proto, op_types: tuple[str, ...] = (), exclude_nodes: tuple[str, ...] = ()
) -> tuple[tuple[str, int], ...]:
    """Sorted (tensor name, ONNX elem type) pairs to collect statistics for.

    Nodes in `exclude_nodes` are skipped: a tensor only they touch is never quantized, and may hold what
    no range can (an attention mask's -inf), so it is not calibrated.
    """
    import onnx

    from dask_quant.pipeline.model_files import weights_aside

    with weights_aside(proto) as graph:
        inferred = onnx.shape_inference.infer_shapes(graph)
    typed = {v.name: v for v in chain(inferred.graph.value_info, inferred.graph.output, inferred.graph.input)}
    initializers = {init.name for init in inferred.graph.initializer}
    wanted_types = set(op_types or default_op_types())
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    selected = {}
    for node in inferred.graph.node:
        if node.op_type not in wanted_types or node.name in exclude_nodes:
            continue
        for name in chain(node.input, node.output):
            value = typed.get(name)
            if value is None or name in initializers or not value.type.HasField("tensor_type"):
                continue
            if value.type.tensor_type.elem_type in float_types:
                selected[name] = value.type.tensor_type.elem_type
    return tuple(sorted(selected.items()))


# Why operators inside control flow stay FP32 (ORT's QDQ quantizer has no subgraph support; its QOperator
# one enters them only when asked, which dask-quant does not).
SUBGRAPHS_STAY_FP32 = "ONNX Runtime's quantizer does not enter the subgraphs of If, Loop and Scan"


def control_flow_note(owners: Sequence[str]) -> str:
    """What left_in_control_flow's `owners` mean, in one sentence (the run's note and the report's row)."""
    from dask_quant.pipeline.groups import WEIGHTED

    kinds = f"{', '.join(WEIGHTED[:-1])} and {WEIGHTED[-1]}"
    return f"the {kinds} nodes inside {', '.join(owners[:3])} stay FP32: {SUBGRAPHS_STAY_FP32}"


def left_in_control_flow(proto, quant) -> tuple[str, ...]:
    """The control-flow nodes whose subgraphs hold a MatMul, Conv or Gemm that `quant` quantizes in the main
    graph and leaves FP32 there (SUBGRAPHS_STAY_FP32). Weight-only RTN and HQQ come from ORT's
    MatMulNBitsQuantizer, which does enter subgraphs; GPTQ's passes see the main graph only."""
    from dask_quant.pipeline.config import Scheme, WeightAlgorithm
    from dask_quant.pipeline.groups import WEIGHTED

    if quant.scheme is Scheme.WEIGHT_ONLY and quant.algorithm is not WeightAlgorithm.GPTQ:
        return ()
    weighted = tuple(op for op in scheme_op_types(quant) if op in WEIGHTED)
    return tuple(subgraph_owners(proto, weighted)) if weighted else ()


def subgraph_owners(proto, op_types: tuple[str, ...] = ()) -> list[str]:
    """Names of the control-flow nodes (If, Loop, Scan) whose subgraphs hold quantizable operators."""
    from onnx import AttributeProto

    wanted = set(op_types or default_op_types())

    def quantizable(graph) -> bool:
        for node in graph.node:
            if node.op_type in wanted:
                return True
            if any(quantizable(g) for g in _subgraphs(node, AttributeProto)):
                return True
        return False

    return [
        f"{node.op_type} {node.name or node.output[0]!r}"
        for node in proto.graph.node
        if any(quantizable(g) for g in _subgraphs(node, AttributeProto))
    ]


def _subgraphs(node, attribute_proto) -> list:
    graphs = []
    for attribute in node.attribute:
        if attribute.type == attribute_proto.GRAPH:
            graphs.append(attribute.g)
        elif attribute.type == attribute_proto.GRAPHS:
            graphs.extend(attribute.graphs)
    return graphs
