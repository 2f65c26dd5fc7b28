"""Everything checked on the client before any work is submitted.

Only headers are read: the model's graph and the data files' array headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.inputs import DatasetSpec, describe_dataset, load_model, model_inputs
from dask_quant.pipeline.selection import default_op_types, tensors_to_calibrate
from dask_quant.tasks.chunks import ChunkRef, chunk_refs
from dask_quant.tasks.digest import sha256_file
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.sessions import ModelRef


@dataclass(frozen=True)
class Prepared:
    """Everything checked on the client before any work is submitted."""

    proto: object
    model: ModelRef
    tensors: tuple[tuple[str, int], ...]
    calib: DatasetSpec
    val: DatasetSpec | None


def prepare(config: RunConfig) -> Prepared:
    """Check model and data (headers only); raise InputError on the first problem."""
    proto = load_model(config.model)
    if any(init.data_location == 1 for init in proto.graph.initializer):  # TensorProto.EXTERNAL
        msg = (
            f"{config.model}: weights are stored as external data, which dask-quant does not read yet; "
            "save the model as one file"
        )
        raise InputError(msg)
    inputs = model_inputs(proto)
    for spec in inputs:
        if spec.batch is not None and config.chunk_size % spec.batch:
            msg = (
                f"--chunk-size {config.chunk_size} is not a multiple of the batch size {spec.batch} that "
                f"model input {spec.name!r} fixes; pass a multiple of it"
            )
            raise InputError(msg)
    calib = describe_dataset(config.calib, "--calib", inputs, labels_allowed=False)
    val = None if config.val is None else describe_dataset(config.val, "--val", inputs, labels_allowed=True)
    _check_names(proto, config)
    tensors = tensors_to_calibrate(proto, config.quant.op_types)
    if not tensors:
        op_types = ", ".join(config.quant.op_types) or "ORT's default list"
        msg = f"{config.model}: no operator that ONNX Runtime can quantize (op types: {op_types})"
        raise InputError(msg)
    return Prepared(proto, ModelRef(str(config.model.resolve()), sha256_file(config.model)), tensors, calib, val)


def _check_names(proto, config: RunConfig) -> None:
    """--exclude-nodes and --op-types must name things that exist: ORT would ignore a typo silently."""
    nodes = {node.name for node in proto.graph.node}
    missing = [name for name in config.quant.exclude_nodes if name not in nodes]
    if missing:
        example = ", ".join(sorted(nodes)[:3])
        names = ", ".join(map(repr, missing))
        msg = f"--exclude-nodes: no node named {names} in {config.model} (node names look like: {example})"
        raise InputError(msg)
    known = default_op_types()
    unknown = [op for op in config.quant.op_types if op not in known]
    if unknown:
        msg = (
            f"--op-types: ONNX Runtime cannot quantize {', '.join(map(repr, unknown))}; choose from: {', '.join(known)}"
        )
        raise InputError(msg)


def dataset_chunks(spec: DatasetSpec, chunk_size: int) -> list[ChunkRef]:
    return chunk_refs(spec.path, spec.members, spec.rows, chunk_size, spec.labels, spec.sha256)
