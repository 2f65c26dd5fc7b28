"""The prepare stage: the model made ready for quantization, and everything checked before any work is submitted.

Model-level checks come first (can anything be quantized at all?), then the
inputs, then the data files, of which only headers are read. With
preparation on (the default) the graph goes through onnx's and ONNX Runtime's
own tools (pipeline.preparation) and every later stage uses the prepared
model, written next to the run's work area where the workers can read it.
"""

from __future__ import annotations

import math
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from dask_quant.pipeline.chunking import MAX_ROWS, activation_bytes_per_row
from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.inputs import (
    LABELS,
    DatasetSpec,
    InputSpec,
    constant_value,
    describe_dataset,
    model_inputs,
    output_batch_axes,
    with_layout,
)
from dask_quant.pipeline.metrics import compared_outputs
from dask_quant.pipeline.model_files import (
    check_external_data,
    data_file,
    files_of,
    is_large_file,
    load_external_data,
    load_model,
    load_remote_model,
    remove_model,
    save_model,
    share_like_model,
)
from dask_quant.pipeline.preparation import prepare_graph
from dask_quant.pipeline.results import FP32_FILE, WORK, check_writable
from dask_quant.pipeline.selection import (
    SUBGRAPHS_STAY_FP32,
    default_op_types,
    subgraph_owners,
    tensors_to_calibrate,
)
from dask_quant.tasks.chunks import ChunkRef, chunk_refs
from dask_quant.tasks.digest import model_sha256
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.sessions import ModelRef
from dask_quant.tasks.storage import is_url

DEFAULT_CHUNK_ROWS = MAX_ROWS  # --chunk-size auto without a cluster to ask (pipeline.chunking)
PREPARED_DIR = "models"  # under OUT/.work: prepared models the workers read while a run lasts


@dataclass(frozen=True)
class Prepared:
    """The model every stage uses, and everything checked on the client before any work is submitted.

    `model` is the prepared file (or the user's, with preparation off);
    `source` the user's file; `steps` what preparation did; `chunk_size` the
    rows per task (the default rounded up to a multiple of a fixed batch).
    """

    proto: object
    model: ModelRef
    tensors: tuple[tuple[str, int], ...]
    calib: DatasetSpec
    val: DatasetSpec | None
    source: ModelRef | None = None
    steps: tuple[str, ...] = ()
    chunk_size: int = DEFAULT_CHUNK_ROWS
    output: str | None = None  # the output whose metrics lead (pipeline.metrics.compared_outputs)
    fixed_batch: int | None = None  # the batch size the model's inputs fix, if any: every chunk is a multiple of it
    others: tuple[str, ...] = ()  # the other outputs validation compares (each has its own metrics)
    row_bytes: int | None = None  # activations of one sample (pipeline.chunking), for --chunk-size auto
    models_url: str | None = None  # where workers read the models the client writes (--out at a URL), if anywhere

    @property
    def compared(self) -> tuple[str, ...] | None:
        """The outputs validation compares, the lead one first (None: the model's first output)."""
        return (self.output, *self.others) if self.output is not None else None

    @property
    def prepared(self) -> bool:
        """Whether `model` is a prepared copy (not the user's file)."""
        return self.source is not None and self.model.path != self.source.path

    def for_workers(self, model: ModelRef) -> ModelRef:
        """`model` as workers read it: with --out at a URL, uploaded there (pipeline.remote_out)."""
        if self.models_url is None:
            return model
        from dask_quant.pipeline.remote_out import upload_model

        return upload_model(model, self.models_url)

    def __enter__(self) -> Prepared:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove the prepared copy (the run directory keeps its own)."""
        if self.prepared:
            path = Path(self.model.path)
            remove_model(path)
            for folder in (path.parent, *path.parents[1:3]):  # its own folder, models/, then .work/, when empty
                with suppress(OSError):
                    folder.rmdir()


def prepare(config: RunConfig, folder: Path | None = None) -> Prepared:
    """Prepare and check model and data; raise InputError on the first problem.

    The prepared model is written to `folder` (default OUT/.work/models), which
    the workers must be able to read; `Prepared.discard()` removes it. A large
    model (pipeline.model_files.is_large_file) is prepared from its files into
    a staging folder there, and the client never holds its weights.
    """
    folder = folder or config.out.absolute() / WORK / PREPARED_DIR
    large = False
    if is_url(config.model):
        proto, source = load_remote_model(config.model)
        _check_passthrough(proto, config.model)
    else:
        proto = load_model(config.model)
        _check_passthrough(proto, config.model)
        check_external_data(proto, config.model)  # first: it names a missing data file
        large = is_large_file(config.model)
        if not large:
            load_external_data(proto, config.model)
        source = ModelRef(str(config.model.resolve()), model_sha256(config.model))
    with _staging(folder if large and config.prepare else None) as staging:
        return _prepared(config, proto, source, folder, staging)


@contextmanager
def _staging(folder: Path | None) -> Iterator[Path | None]:
    """A folder under `folder` (same file system: its files are renamed out of it) for a large model's
    preparation, removed at the end; None without `folder`."""
    if folder is None:
        yield None
        return
    check_writable(folder, "--out")
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for empty in created:  # deepest first: what was made for nothing is not left behind
            with suppress(OSError):
                empty.rmdir()


def _prepared(config: RunConfig, proto, source: ModelRef, folder: Path, staging: Path | None) -> Prepared:
    steps: tuple[str, ...] = ()
    written = None
    if config.prepare:
        files = None if staging is None else (Path(config.model), staging / FP32_FILE)
        graph = prepare_graph(proto, per_channel=config.quant.per_channel, where=str(config.model), files=files)
        proto, steps = graph.proto, graph.steps
        written = files[1] if graph.written else None
    inputs = model_inputs(proto)
    tensors = quantizable(proto, config)
    _check_names(proto, config)
    inputs = with_layout(inputs, config.batch_axes, tuple(name for name, _ in config.const_inputs))
    chunk_size = _chunk_size(config, inputs)
    by_name = {spec.name: spec for spec in inputs}
    constants = tuple(constant_value(by_name[name], value) for name, value in config.const_inputs)
    layout = {"constants": constants, "output_axes": output_batch_axes(proto, inputs)}
    calib = describe_dataset(config.calib, "--calib", inputs, **layout)
    labels = _labels_key(config, inputs)
    val, output, others = None, None, ()
    batch = next((spec.batch for spec in inputs if spec.batch is not None), None)
    if config.val is not None:
        val = describe_dataset(config.val, "--val", inputs, labels=labels, **layout)
        _check_labels_key(config, val)
        axes = dict(layout["output_axes"])
        output, *others = compared_outputs(proto, batch, axes, str(config.model), config.lead_output)
    elif config.lead_output is not None:
        msg = f"--lead-output {config.lead_output!r} chooses among the outputs validation compares: pass --val"
        raise InputError(msg)
    model = source
    if config.prepare and (staging is None or written is not None):
        model = write_prepared(proto, folder, Path(config.model).stem, written)
    per_row = activation_bytes_per_row(proto)
    return Prepared(proto, model, tensors, calib, val, source, steps, chunk_size, output, batch, tuple(others), per_row)


def write_prepared(proto, folder: Path, stem: str, written: Path | None = None) -> ModelRef:
    """The prepared model in a folder of its own (unique name: concurrent runs never share or delete it), under
    the name a run publishes it with, so that a large model's data file has its published name too.
    `written`: a large model's prepared file, already written with its data file under `folder` (renamed)."""
    check_writable(folder, "--out")
    path = folder / f"{stem}-{secrets.token_hex(4)}" / FP32_FILE
    partial = path.with_suffix(".partial")
    created = [parent for parent in (path.parent, *path.parents[1:]) if not parent.exists()]  # deepest first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if written is None:
            save_model(proto, partial, name=path)  # a large model's data file is written under its final name
        else:
            written.replace(partial)
            for data in files_of(partial)[1:]:
                (written.parent / data.name).replace(path.parent / data.name)
            share_like_model(partial)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        (path.parent / data_file(path)).unlink(missing_ok=True)
        for empty in created:
            with suppress(OSError):
                empty.rmdir()
        msg = f"--out: cannot write the prepared model to {folder} ({exc.strerror}); free space or choose another --out"
        raise InputError(msg) from None
    return ModelRef(str(path), model_sha256(path))


def _check_passthrough(proto, model: Path) -> None:
    """ONNX Runtime's quantizer fails ('Graph is not a DAG') on a graph output that is a graph input itself."""
    inputs = {value.name for value in proto.graph.input}
    passed = [value.name for value in proto.graph.output if value.name in inputs]
    if passed:
        msg = (
            f"{model}: output {passed[0]!r} is the model input of that name, passed through; ONNX Runtime's "
            "quantizer cannot take such a graph: drop that output, or make it an Identity of the input"
        )
        raise InputError(msg)


def quantizable(proto, config: RunConfig) -> tuple[tuple[str, int], ...]:
    """The tensors to calibrate; InputError when the quantizer would find nothing to do."""
    tensors = tensors_to_calibrate(proto, config.quant.op_types, config.quant.exclude_nodes)
    if tensors:
        return tensors
    owners = subgraph_owners(proto, config.quant.op_types)
    if owners:
        msg = (
            f"{config.model}: every quantizable operator is inside control flow ({', '.join(owners[:3])}), "
            f"and {SUBGRAPHS_STAY_FP32}; export the model without If/Loop/Scan (for example traced with fixed "
            "shapes)"
        )
        raise InputError(msg)
    op_types = ", ".join(config.quant.op_types) or "ORT's default list"
    msg = f"{config.model}: no operator that ONNX Runtime can quantize (op types: {op_types})"
    raise InputError(msg)


def _chunk_size(config: RunConfig, inputs: list[InputSpec]) -> int:
    """--chunk-size, or the default rounded up to a multiple of a batch size the model fixes."""
    fixed = next((spec for spec in inputs if spec.batch is not None), None)
    if config.chunk_size is None:
        return DEFAULT_CHUNK_ROWS if fixed is None else math.ceil(DEFAULT_CHUNK_ROWS / fixed.batch) * fixed.batch
    if fixed is not None and config.chunk_size % fixed.batch:
        msg = (
            f"--chunk-size {config.chunk_size} is not a multiple of the batch size {fixed.batch} that "
            f"model input {fixed.name!r} fixes; pass a multiple of it"
        )
        raise InputError(msg)
    return config.chunk_size


def _labels_key(config: RunConfig, inputs: list[InputSpec]) -> str | None:
    """The validation labels' array name: --labels-key, else 'labels' unless that is a model input's name."""
    names = {spec.name for spec in inputs}
    if config.labels_key is None:
        return None if LABELS in names else LABELS
    if config.labels_key in names:
        msg = f"--labels-key {config.labels_key!r} is the name of a model input; save the labels under another name"
        raise InputError(msg)
    return config.labels_key


def _check_labels_key(config: RunConfig, val: DatasetSpec) -> None:
    if config.labels_key is not None and val.labels is None:
        msg = f"--val {config.val}: no array named {config.labels_key!r} for --labels-key; check its spelling"
        raise InputError(msg)


def _check_names(proto, config: RunConfig) -> None:
    """--exclude-nodes, --op-types and --fp32-outputs must name things that exist: ORT would ignore a typo silently."""
    nodes = {node.name for node in proto.graph.node}
    missing = [name for name in config.quant.exclude_nodes if name not in nodes]
    if missing:
        example = ", ".join(sorted(nodes)[:3])
        names = ", ".join(map(repr, missing))
        prepared = " after preparation (--no-prepare keeps the graph as exported)" if config.prepare else ""
        msg = f"--exclude-nodes: no node named {names} in {config.model}{prepared} (node names look like: {example})"
        raise InputError(msg)
    known = default_op_types()
    for option, ops in (("--op-types", config.quant.op_types), ("--fp32-outputs", config.quant.fp32_outputs)):
        unknown = [op for op in ops if op not in known]
        if unknown:
            names = ", ".join(map(repr, unknown))
            msg = f"{option}: ONNX Runtime cannot quantize {names}; choose from: {', '.join(known)}"
            raise InputError(msg)


def dataset_chunks(spec: DatasetSpec, chunk_size: int) -> list[ChunkRef]:
    return chunk_refs(
        spec.path,
        spec.members,
        spec.rows,
        chunk_size,
        spec.labels,
        spec.sha256,
        spec.feeding,
        spec.identity,
        spec.shapes,
    )
