"""Weight-only GPTQ, distributed: which MatMuls it quantizes, its two passes and solve tasks, and the model.

GPTQ (Frantar et al., 2023) quantizes a weight column by column, spreading each
column's rounding error over the columns not yet quantized in proportion to
H = X^T X, the Gram matrix of the MatMul's input over the calibration set.
Here H is a calibration statistic like the ranges: pass 1 takes each input
channel's abs-max (tasks.smoothing, exact), which fixes the grid on which pass
2 sums every chunk's X^T X exactly (tasks.gram), merged in a tree; then one task
per weight solves it where the Gram tree ends (tasks.gptq, ONNX Runtime's own
solve and packing). Only the solved nodes come back to the client, which
splices them into the model (`write_gptq_model`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dask_quant.tasks.errors import Refused
from dask_quant.tasks.gptq import MatMulTarget, SolvedNode

# A partial Gram statistic holds K(K+1)/2 int64 per MatMul input (68 MiB for MiniLM's 24): merged in pairs,
# a task holds three of them, not split_every + 1, and the worker's peak stops growing with the chunks.
GRAM_FAN_IN = 2
# A chunk's Gram sums cost K^2 whatever its rows: with 64 rows of a 1024-wide MLP they were 12 MiB against
# 0.25 MiB of data, and 256 chunks spent their time allocating and merging sums. The GPTQ passes take
# chunks of up to K rows (the widest input's), as long as their activations stay within this.
GRAM_CHUNK_BYTES = 256 * 2**20
GPTQ_OP = "MatMul"  # what ONNX Runtime's GPTQ quantizes: MatMul with a constant 2-D weight


def gptq_targets(
    proto, tensors: dict[str, int], exclude_nodes: Sequence[str] = (), op_types: Sequence[str] = ()
) -> list[MatMulTarget]:
    """The MatMul nodes of the main graph whose second input is a 2-D float initializer and whose first is not
    one (ONNX Runtime's GPTQ's rule), minus `exclude_nodes`, in graph order; none when `op_types` is given
    without MatMul. A weight another node also reads, or that is also a graph input (a caller may feed
    another), stays FP32: GPTQ solves a weight for one input's Gram matrix."""
    from onnx import TensorProto

    if op_types and GPTQ_OP not in op_types:
        return []
    weights = {init.name: init for init in proto.graph.initializer}
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    overridable = {value.name for value in proto.graph.input}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    targets = []
    for node in proto.graph.node:
        if node.op_type != GPTQ_OP or len(node.input) != 2 or node.name in exclude_nodes:
            continue
        init = weights.get(node.input[1])
        if init is None or len(init.dims) != 2 or init.data_type not in floats or node.input[0] in weights:
            continue
        if readers[node.input[1]] > 1 or node.input[1] in overridable:
            continue
        if tensors.get(node.input[0], TensorProto.FLOAT) not in floats:
            continue
        targets.append(MatMulTarget(node.name, node.input[0], node.input[1], tuple(node.output)))
    return targets


def prepared_targets(prepared, exclude_nodes: Sequence[str], op_types: Sequence[str] = ()) -> list[MatMulTarget]:
    """gptq_targets of `prepared`'s model; InputError when there are none (checked before a cluster starts)."""
    from dask_quant.tasks.errors import InputError

    targets = gptq_targets(prepared.proto, dict(prepared.tensors), exclude_nodes, op_types)
    if not targets:
        graph = prepared.proto.graph
        constants = {out for node in graph.node if node.op_type == "Constant" for out in node.output}
        held = any(n.op_type == GPTQ_OP and len(n.input) == 2 and n.input[1] in constants for n in graph.node)
        fix = (
            "its MatMul weights are Constant nodes: drop --no-prepare, which folds them into initializers"
            if held
            else "use --scheme static or dynamic"
        )
        where = prepared.source.path if prepared.source else prepared.model.path
        msg = (
            f"--algorithm gptq: {where} has no MatMul with a constant 2-D weight of its own to quantize (outside "
            f"--exclude-nodes and within --op-types); {fix}"
        )
        raise InputError(msg)
    return targets


@dataclass(frozen=True)
class GptqWeights:
    """Every target's solved MatMulNBits node for one (bits, block size)."""

    bits: int
    block_size: int
    nodes: tuple[SolvedNode, ...]


def solve_graph(chunks, model, tensors, targets, shapes, split_every: int):
    """Pass 2 (the Gram tree of `tensors`: (name, elem, grid exponents)) and, where it ends, one solve task per
    (target, (bits, block size)) of `shapes`; the root is the tuple of GptqWeights, one per shape."""
    from dask_quant.pipeline.graph import gram_graph
    from dask_quant.tasks.gptq import solve_gptq

    grams = gram_graph(chunks, model, tensors, min(split_every, GRAM_FAN_IN))
    graph, token = dict(grams.dask), grams.key[0]
    roots = []
    for i, (bits, block) in enumerate(shapes):
        keys = [(f"solve_gptq-{bits}-{block}-{token}", j) for j in range(len(targets))]
        graph.update(
            (key, (solve_gptq, grams.key, model, target, bits, block))
            for key, target in zip(keys, targets, strict=True)
        )
        roots.append((f"gptq_weights-{token}", i))
        graph[roots[-1]] = (_weights, bits, block, keys)
    return type(grams)((f"gptq-{token}", 0), {**graph, (f"gptq-{token}", 0): (_all, roots)}, grams.chunk_keys)


def _weights(bits: int, block_size: int, nodes: list):
    """GptqWeights of the solved nodes, or the refusal one of them passed on."""
    refused = [node for node in nodes if isinstance(node, Refused)]
    return refused[0] if refused else GptqWeights(bits, block_size, tuple(nodes))


def _all(weights: list):
    """Every shape's GptqWeights, or a refusal (pipeline.compute reports it once)."""
    refused = [w for w in weights if isinstance(w, Refused)]
    return refused[0] if refused else tuple(weights)


def gptq_weights(
    prepared,
    client,
    shapes: Sequence[tuple[int, int]],
    exclude_nodes: Sequence[str],
    op_types: Sequence[str],
    chunk_size: int,
    split_every: int,
    log: Callable[[str], None],
    progress,
) -> tuple[GptqWeights, ...]:
    """GPTQ's solved nodes of `prepared`'s model for each (bits, block size): the channel-max pass, the Gram
    pass and the solve tasks over `client`'s workers."""
    from dask_quant.pipeline.compute import compute
    from dask_quant.pipeline.graph import channel_max_graph
    from dask_quant.pipeline.stages.prepare import dataset_chunks
    from dask_quant.tasks.gram import grid_exponents

    proto = prepared.proto  # a weight's dims and type are in the graph even when its data is in a file
    tensors = dict(prepared.tensors)
    targets = prepared_targets(prepared, exclude_nodes, op_types)
    channels = {t.activation: _rows(proto, t.weight) for t in targets}
    wanted = tuple((name, tensors.get(name, 1), rows) for name, rows in sorted(channels.items()))
    rows = gram_chunk_rows(chunk_size, prepared.row_bytes, max(channels.values()))
    chunks = dataset_chunks(prepared.calib, rows)
    log(
        f"GPTQ: Gram matrices of {len(wanted)} MatMul inputs in {len(chunks)} chunks of up to {rows} rows, then "
        f"{len(targets)} weights solved on the workers"
    )
    maxima_graph = channel_max_graph(chunks, prepared.model, wanted, split_every)
    (maxima,) = compute(client, [maxima_graph], "GPTQ pass 1 (channel maxima)", progress)
    grids = tuple((name, elem, grid_exponents(maxima.get(name).array())) for name, elem, _ in wanted)
    graph = solve_graph(chunks, prepared.model, grids, tuple(targets), tuple(shapes), split_every)
    (solved,) = compute(client, [graph], "GPTQ pass 2 (Gram matrices) and solve", progress)
    return solved


def gram_chunk_rows(chunk_size: int, row_bytes: int | None, widest: int) -> int:
    """Rows per chunk of the GPTQ passes: the run's chunk size, raised towards the widest MatMul input's
    channels while a chunk's activations (`row_bytes` a row, when known) stay within GRAM_CHUNK_BYTES."""
    if not row_bytes:
        return chunk_size
    return max(chunk_size, min(widest, GRAM_CHUNK_BYTES // row_bytes))


def _rows(proto, weight: str) -> int:
    return next(int(init.dims[0]) for init in proto.graph.initializer if init.name == weight)


def write_gptq_model(model, weights: GptqWeights, exclude_nodes: Sequence[str], out_path: Path, large: bool) -> None:
    """Write `model` (a ModelProto, or a model file's path) with each solved MatMul replaced, where it stands, by
    its MatMulNBits node (the same input and output: the order stays topological), its weight by the packed
    blocks; a `large` model keeps its weights in `out_path`.data."""
    import onnx
    from onnxruntime.quantization.onnx_model import ONNXModel

    from dask_quant.pipeline.model_files import share_like_model
    from dask_quant.tasks.errors import InputError

    proto = onnx.load(str(model)) if isinstance(model, Path) else model
    graph = proto.graph
    position = {tuple(node.output): i for i, node in enumerate(graph.node)}  # outputs are unique; names may not be
    taken = {init.name for init in graph.initializer} | {v.name for v in graph.input}
    taken |= {name for node in graph.node for name in node.output}
    replaced = set()
    for solved in weights.nodes:
        if solved.target.name in exclude_nodes:
            continue
        inits = [onnx.TensorProto.FromString(raw) for raw in solved.initializers]
        clash = [init.name for init in inits if init.name in taken]
        if clash:
            msg = f"{clash[0]!r} already names a tensor of the model, and GPTQ's packed weight would take it"
            raise InputError(msg)
        taken |= {init.name for init in inits}
        graph.node[position[solved.target.outputs]].CopyFrom(onnx.NodeProto.FromString(solved.node))
        graph.initializer.extend(inits)
        replaced.add(solved.target.weight)
    kept = [init for init in graph.initializer if init.name not in replaced]  # each read by its MatMul alone
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(op.domain == "com.microsoft" for op in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # MatMulNBits' domain
    ONNXModel(proto).save_model_to_file(str(out_path), use_external_data_format=large)
    if large:
        share_like_model(out_path)
