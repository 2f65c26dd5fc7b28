"""Quantizer groups for the tune search: sets of nodes that go back to FP32 together.

ORT places QDQ pairs per node (its inputs, its weights, its output), and
`nodes_to_exclude` takes a node back out with all of them, so any set of
excluded nodes is a valid model. But an activation keeps its one QDQ pair
while any node that asked for it is still quantized (its producer, if that
quantizes its output, and each quantized reader), and every reader then
reads the dequantized value. So there are three kinds of group:

- a node: its weights, and the activations only it asked for;
- a shared quantizer: every node of the quantized op types next to one
  quantized activation (producer and readers), for an activation that two
  or more of them share. Reverting it is what takes that QDQ pair out: a
  mask or a residual whose range is ruined reaches every reader, and no
  single node's revert changes anything (MiniLM from every op type);
- an op type: every quantized node of a type that holds no weights (all
  the Adds, all the LayerNormalizations), for a type with two or more.
  With every op type quantized, the error is spread over hundreds of small
  QDQ pairs whose reverts each help a little; a few of these groups take
  it back in a few steps. Weighted types (MatMul, Conv, Gemm) never form
  one: their INT8 is the point of quantizing, and the search picks by the
  metric alone.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_QDQ = ("QuantizeLinear", "DequantizeLinear")
# What the dynamic and weight-only schemes write in place of a node: its output is then made by another op.
QUANTIZED_FORMS = {"MatMulNBits": "MatMul", "MatMulInteger": "MatMul", "ConvInteger": "Conv"}


NODE, SHARED, OP_TYPE = "node", "shared", "op type"


@dataclass(frozen=True)
class Group:
    name: str  # the node's name, the shared activation's, or "all OPTYPE"
    nodes: tuple[str, ...]  # in graph order
    kind: str = NODE  # NODE, SHARED or OP_TYPE


def quantized_nodes(int8_proto, fp32_proto, op_types: tuple[str, ...], replaced: bool = False) -> tuple[str, ...]:
    """Names of the FP32 model's nodes of `op_types` (what the quantizer was asked to quantize) that read a
    DequantizeLinear output in the INT8 model (static QDQ), or, for a scheme that `replaced` nodes, whose
    output another op makes there (dynamic's MatMulInteger, weight-only's MatMulNBits), in graph order. (In
    a QDQ model another op can make a node's output too, a Conv for the Relu ORT folded into it: not a
    quantized node.) A node of another type can read
    a dequantized value too (a Tanh after a quantized MatMul's output) but excluding it would change nothing."""
    made_by = {out: node.op_type for node in int8_proto.graph.node for out in node.output}
    quantized = {
        node.name
        for node in int8_proto.graph.node
        if node.op_type not in _QDQ and any(made_by.get(name) == "DequantizeLinear" for name in node.input)
    }
    wanted = set(op_types)
    return tuple(
        node.name
        for node in fp32_proto.graph.node
        if node.op_type in wanted
        and (node.name in quantized or (replaced and made_by.get(node.output[0], node.op_type) != node.op_type))
    )


def _quantized_activations(int8_proto, fp32_names: set[str]) -> set[str]:
    """Activations of the FP32 model that have a QuantizeLinear in the INT8 model. ORT quantizes a graph
    output through a renamed copy (`NAME_QuantizeInput`), so a name the FP32 model lacks is mapped back."""
    found = set()
    for node in int8_proto.graph.node:
        if node.op_type == "QuantizeLinear":
            name = node.input[0]
            if name not in fp32_names and name.endswith("_QuantizeInput"):
                name = name[: -len("_QuantizeInput")]
            found.add(name)
    return found


def quantizer_groups(
    int8_proto,
    fp32_proto,
    op_types: tuple[str, ...],
    excluded: tuple[str, ...] = (),
    fp32_outputs: tuple[str, ...] = (),
    replaced: bool = False,
) -> tuple[Group, ...]:
    """Every quantized node as its own group, then one group per activation whose QDQ pair two or more of
    the nodes that may ask for it share, then one per unweighted op type with two or more quantized nodes
    (each unless the same nodes already form a group), in graph order. Nodes of `fp32_outputs` (ORT's
    OpTypesToExcludeOutputQuantization) never ask for their outputs: a MatMul's output read by a quantized
    Add is then the Add's alone, and reverting it needs no MatMul in FP32."""
    nodes = quantized_nodes(int8_proto, fp32_proto, op_types, replaced)
    groups = [Group(name, (name,)) for name in nodes]
    order = {node.name: i for i, node in enumerate(fp32_proto.graph.node)}
    wanted, skipped, inputs_only = set(op_types), set(excluded), set(fp32_outputs)
    quantized = set(nodes)
    askers: dict[str, list[str]] = {}  # activation -> the nodes that may have asked for its QDQ pair
    for node in fp32_proto.graph.node:
        if node.op_type in wanted and node.name not in skipped:
            read = [name for name in node.input if name] if node.name in quantized else []
            made = [] if node.op_type in inputs_only else list(node.output)
            for name in dict.fromkeys([*read, *made]):  # its writer may quantize it without reading one
                askers.setdefault(name, []).append(node.name)
    names = {*order, *(g.name for g in groups)}
    tensors = {name for node in fp32_proto.graph.node for name in (*node.input, *node.output)}
    seen = {g.nodes for g in groups}
    shared = sorted(_quantized_activations(int8_proto, tensors) & set(askers), key=lambda t: _first(t, askers, order))
    for tensor in shared:
        members = tuple(sorted(set(askers[tensor]), key=order.__getitem__))
        if len(members) < 2 or members in seen:
            continue
        seen.add(members)
        label = tensor if tensor not in names else f"{tensor} (activation)"
        groups.append(Group(label, members, SHARED))
    op_of = {node.name: node.op_type for node in fp32_proto.graph.node}
    by_type: dict[str, list[str]] = {}
    for name in nodes:
        by_type.setdefault(op_of[name], []).append(name)
    for op_type, members in by_type.items():
        if op_type not in WEIGHTED and len(members) >= 2 and tuple(members) not in seen:
            seen.add(tuple(members))
            label = f"all {op_type}" if f"all {op_type}" not in names else f"all {op_type} (op type)"
            groups.append(Group(label, tuple(members), OP_TYPE))
    return tuple(groups)


def _first(tensor: str, askers: dict[str, list[str]], order: dict[str, int]) -> tuple[int, str]:
    return min(order[n] for n in askers[tensor]), tensor


def weighted_nodes(fp32_proto, groups: tuple[Group, ...]) -> set[str]:
    """The groups' nodes of a weighted op type (MatMul, Conv, Gemm): those whose INT8 the search keeps."""
    in_groups = {n for g in groups for n in g.nodes}
    return {node.name for node in fp32_proto.graph.node if node.op_type in WEIGHTED and node.name in in_groups}


def int8_share(int8_proto, op_types: tuple[str, ...] = WEIGHTED) -> dict[str, tuple[int, int]]:
    """Per op type in `op_types`: (nodes in INT8, nodes): in a QDQ model those whose every input is
    dequantized; a MatMulNBits or MatMulInteger counts as a MatMul in INT8 (QUANTIZED_FORMS)."""
    made_by = {out: node.op_type for node in int8_proto.graph.node for out in node.output}
    share: dict[str, tuple[int, int]] = {}
    for node in int8_proto.graph.node:
        op_type = QUANTIZED_FORMS.get(node.op_type, node.op_type)
        if op_type in op_types:
            inputs = [name for name in node.input[:2] if name]
            int8 = op_type != node.op_type or all(made_by.get(name) == "DequantizeLinear" for name in inputs)
            done, total = share.get(op_type, (0, 0))
            share[op_type] = (done + int8, total + 1)
    return share
