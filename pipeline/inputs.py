"""Checks of the model's inputs and of the data files that feed them, before any work is submitted.

Only headers are read here: the client never loads the dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from dask_quant.tasks.digest import fingerprint, identity
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.feeding import NO_FEEDING, Constant, Feeding
from dask_quant.tasks.npy_io import (
    NPY_MEMBER,
    ArrayInfo,
    array_info,
    check_crc,
    is_compressed,
    member_names,
    read_whole,
)
from dask_quant.tasks.storage import exists, is_url, suffix

LABELS = "labels"  # the label array's name in a validation .npz, unless --labels-key says otherwise


# Symbolic dimension names that say "batch" (exporters write batch, batch_size, N, unk__0, ...).
_BATCH_NAME = re.compile(r"batch|^n$|^b$|^bs$", re.IGNORECASE)
CONSTANT_BYTES = 1 << 20  # a constant input travels inside every task


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype string, dims (None where symbolic; no dims when the model gives
    no shape), the dims' symbolic names, and its batch axis (None: one value for every sample)."""

    name: str
    dtype: str
    dims: tuple[int | None, ...] | None
    symbols: tuple[str, ...] = ()
    batch_axis: int | None = 0

    @property
    def batch(self) -> int | None:
        """The batch size the batch axis fixes, if any."""
        if self.batch_axis is None or not self.dims:
            return None
        return self.dims[self.batch_axis]

    @property
    def sample_dims(self) -> tuple[int | None, ...] | None:
        """The dims of one sample as stored in a data file: the batch axis first."""
        if self.dims is None or self.batch_axis is None:
            return self.dims
        return (self.dims[self.batch_axis], *self.dims[: self.batch_axis], *self.dims[self.batch_axis + 1 :])

    @property
    def batch_symbol(self) -> str:
        return self.symbols[self.batch_axis] if self.batch_axis is not None and self.symbols else ""


def infer_batch_axis(dims: tuple[int | None, ...] | None, symbols: tuple[str, ...]) -> int | None:
    """Where the samples go: a symbolic dim named like a batch, else a symbolic axis 0, else the only symbolic
    dim, else axis 0 (a fixed batch). A rank-0 input has none: it takes one value for every sample."""
    if dims is None:
        return 0
    if not dims:
        return None
    symbolic = [axis for axis, dim in enumerate(dims) if dim is None]
    named = [axis for axis in symbolic if _BATCH_NAME.search(symbols[axis])]
    if len(named) == 1:
        return named[0]
    if not symbolic or symbolic[0] == 0 or len(symbolic) > 1:
        return 0
    return symbolic[0]


@dataclass(frozen=True)
class DatasetSpec:
    """A checked dataset file: which array feeds which input, how many rows."""

    path: str
    members: tuple[tuple[str, str], ...]
    rows: int
    sha256: str
    labels: str | None = None
    compressed: bool = False
    feeding: Feeding = NO_FEEDING
    identity: tuple[int, int] = ()  # (size, mtime ns) when fingerprinted: workers check the file is still it
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # inputs stored flat (Parquet lists): their sample dims


def model_inputs(proto) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializers listed as inputs excluded)."""
    from onnx import helper

    initializers = {init.name for init in proto.graph.initializer}
    specs = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            kind = value.type.WhichOneof("value") or "unknown"
            msg = (
                f"model input {value.name!r} is a {kind.removesuffix('_type')}, not a tensor; dask-quant feeds tensors"
            )
            raise InputError(msg)
        tensor_type = value.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).str
        except (KeyError, TypeError, ValueError):
            msg = (
                f"model input {value.name!r} has element type {tensor_type.elem_type}, which is undefined or has "
                "no numpy equivalent; re-export the model with a numeric input type"
            )
            raise InputError(msg) from None
        dims, symbols = None, ()
        if tensor_type.HasField("shape"):
            # A dim_value of 0 or less fixes nothing we can feed: treat it as symbolic.
            dims = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim
            )
            symbols = tuple(d.dim_param for d in tensor_type.shape.dim)
        specs.append(InputSpec(value.name, dtype, dims, symbols, infer_batch_axis(dims, symbols)))
    return _shared_batch_symbols(specs)


def _ambiguous(spec: InputSpec) -> bool:
    """Several symbolic dims, none named like a batch: axis 0 was only a guess."""
    symbolic = [axis for axis, dim in enumerate(spec.dims or ()) if dim is None]
    return len(symbolic) > 1 and not any(_BATCH_NAME.search(spec.symbols[axis]) for axis in symbolic)


def _shared_batch_symbols(specs: list[InputSpec]) -> list[InputSpec]:
    """An input whose batch axis was only a guess takes the dim whose name is another input's batch dim
    (exporters name one dynamic dim alike across inputs: x ['unk__2', 8], h0 ['unk__1', 'unk__2', 16])."""
    known = {spec.batch_symbol for spec in specs if not _ambiguous(spec)} - {""}
    resolved = []
    for spec in specs:
        if _ambiguous(spec):
            shared = [axis for axis, symbol in enumerate(spec.symbols) if symbol in known]
            if len(shared) == 1:
                spec = replace(spec, batch_axis=shared[0])
        resolved.append(spec)
    return resolved


def with_layout(
    specs: list[InputSpec], batch_axes: tuple[tuple[str, int], ...], constants: tuple[str, ...]
) -> list[InputSpec]:
    """`specs` with --batch-axis NAME=AXIS and --const-input NAME applied (names and axes checked)."""
    by_name = {spec.name: spec for spec in specs}
    for option, names in (("--batch-axis", [name for name, _ in batch_axes]), ("--const-input", constants)):
        unknown = [name for name in names if name not in by_name]
        if unknown:
            msg = f"{option}: the model has no input {unknown[0]!r} (inputs: {', '.join(by_name)})"
            raise InputError(msg)
    for name, axis in batch_axes:
        spec = by_name[name]
        rank = len(spec.dims or ())
        if spec.dims is not None and not 0 <= axis < rank:
            msg = f"--batch-axis {name}={axis}: input {name!r} has rank {rank}, so the axis must be 0..{rank - 1}"
            raise InputError(msg)
        by_name[name] = replace(spec, batch_axis=axis)
    for name in constants:
        by_name[name] = replace(by_name[name], batch_axis=None)
    if all(spec.batch_axis is None for spec in by_name.values()):
        msg = "every model input is a constant: nothing varies per sample; give at least one input its samples"
        raise InputError(msg)
    return [by_name[spec.name] for spec in specs]


def output_batch_axes(proto, specs: list[InputSpec]) -> tuple[tuple[str, int], ...]:
    """Outputs whose samples are not on axis 0: where a dim has the batch input's symbolic name."""
    symbols = {spec.batch_symbol for spec in specs if spec.batch_axis not in (None, 0)} - {""}
    moved = []
    for value in proto.graph.output:
        names = [d.dim_param for d in value.type.tensor_type.shape.dim]
        axis = next((i for i, name in enumerate(names) if name in symbols), 0)
        if axis:
            moved.append((value.name, axis))
    return tuple(moved)


def _members_for(path: Path, option: str, inputs: list[InputSpec]) -> tuple[tuple[str, str], ...]:
    if suffix(path) == ".npy":
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            msg = (
                f"{option} {path}: a .npy file feeds a single-input model, this one has inputs {names}; "
                "use a .npz with one array per input"
            )
            raise InputError(msg)
        return ((inputs[0].name, NPY_MEMBER),)
    found = member_names(str(path))
    missing = [i.name for i in inputs if i.name not in found]
    if missing:
        msg = (
            f"{option} {path}: no array named {', '.join(map(repr, missing))} "
            f"(found: {', '.join(map(repr, found)) or 'none'}); save one array per model input name"
        )
        raise InputError(msg)
    return tuple((i.name, i.name) for i in inputs)


def _check_array(path: Path, option: str, member: str, spec: InputSpec) -> int:
    where = f"{option} {path}" + (f"[{member}]" if member else "")
    return check_rows(where, array_info(str(path), member), spec)


def check_rows(where: str, info: ArrayInfo, spec: InputSpec) -> int:
    """The stored array's sample count, once its rank, dtype and dims are those of model input `spec`."""
    dims = spec.sample_dims
    if not info.shape:
        msg = (
            f"{where}: a scalar, but model input {spec.name!r} takes one value per sample on axis 0; "
            f"if it is the same for every sample, pass --const-input {spec.name}=VALUE"
        )
        raise InputError(msg)
    if dims is not None and len(info.shape) != len(dims):
        moved = f" (its batch axis {spec.batch_axis} first)" if spec.batch_axis else ""
        msg = (
            f"{where}: rank {len(info.shape)} (shape {info.shape}), but model input {spec.name!r} "
            f"has rank {len(dims)}; samples go on axis 0{moved}"
        )
        raise InputError(msg)
    check_dtype(where, info.dtype, spec)
    if info.fortran_order and len(info.shape) > 1:
        msg = f"{where}: stored in Fortran order; save it C-contiguous (numpy.ascontiguousarray) to read by rows"
        raise InputError(msg)
    for axis, (have, want) in enumerate(zip(info.shape[1:], (dims or info.shape)[1:], strict=True), start=1):
        if want is not None and have != want:
            msg = (
                f"{where}: shape {info.shape} differs from model input {spec.name!r} at axis {axis} ({have} != {want})"
            )
            raise InputError(msg)
    fixed = spec.batch
    if fixed is not None and info.shape[0] % fixed:
        msg = (
            f"{where}: {info.shape[0]} samples, but model input {spec.name!r} fixes the batch size to {fixed}; "
            f"pass a multiple of {fixed} samples"
        )
        raise InputError(msg)
    return info.shape[0]


def check_labels(where: str, info: ArrayInfo, n_rows: int) -> None:
    if info.shape not in ((n_rows,), (n_rows, 1)) or not np.issubdtype(np.dtype(info.dtype), np.integer):
        msg = (
            f"{where}: want one integer class per sample, shape ({n_rows},); "
            f"got shape {info.shape} of {np.dtype(info.dtype).name}"
        )
        raise InputError(msg)


def check_dtype(where: str, dtype: str, spec: InputSpec) -> None:
    # Byte order is not a mismatch: rows are read in native order (tasks.npy_io).
    if np.dtype(dtype).newbyteorder("=") != np.dtype(spec.dtype).newbyteorder("="):
        have, want = np.dtype(dtype).name, np.dtype(spec.dtype).name
        msg = f"{where}: dtype {have}, but model input {spec.name!r} wants {want}; convert with .astype"
        raise InputError(msg)


def constant_value(spec: InputSpec, text: str) -> Constant:
    """--const-input NAME=VALUE: VALUE filled into the input's (fixed) shape, in its dtype."""
    where = f"--const-input {spec.name}={text}"
    if spec.dims is None or any(dim is None for dim in spec.dims):
        msg = (
            f"{where}: input {spec.name!r} has dims that are not fixed ({spec.dims}), so one value cannot be "
            "filled into it; give it one row per sample in the data file"
        )
        raise InputError(msg)
    dtype = np.dtype(spec.dtype).newbyteorder("=")
    value = _parse_value(text, dtype)
    if value is None:
        kind = "true/false or 1/0" if dtype.kind == "b" else "a finite number"
        msg = f"{where}: not a {dtype.name} value; pass {kind}"
        raise InputError(msg)
    return Constant.of(spec.name, np.full(spec.dims, value, dtype=dtype))


def _parse_value(text: str, dtype: np.dtype):
    """`text` as one value of `dtype`, or None (NaN, infinity and overflow included)."""
    if dtype.kind == "b":
        return {"true": True, "1": True, "false": False, "0": False}.get(text.strip().lower())
    try:
        with np.errstate(all="ignore"):
            value = np.array(text, dtype=dtype) if dtype.kind == "f" else np.array(int(text), dtype=dtype)
    except (ValueError, OverflowError):
        return None
    return value if dtype.kind != "f" or np.isfinite(value) else None


def _stored_constant(path: Path, option: str, spec: InputSpec) -> Constant:
    """A constant input's value stored in the data file: one array of the input's whole shape."""
    where = f"{option} {path}[{spec.name}]"
    if suffix(path) != ".npz" or spec.name not in member_names(str(path)):
        msg = (
            f"{option} {path}: model input {spec.name!r} takes one value for every sample; pass "
            f"--const-input {spec.name}=VALUE, or store it in a .npz as an array named {spec.name!r}"
        )
        raise InputError(msg)
    info = array_info(str(path), spec.name)
    check_dtype(where, info.dtype, spec)
    wanted = spec.dims or ()
    if len(info.shape) != len(wanted) or any(w is not None and w != h for h, w in zip(info.shape, wanted, strict=True)):
        msg = f"{where}: shape {info.shape}, but constant input {spec.name!r} has shape {wanted} (no sample axis)"
        raise InputError(msg)
    size = int(np.prod(info.shape, dtype=np.int64)) * np.dtype(info.dtype).itemsize
    if size > CONSTANT_BYTES:
        msg = f"{where}: {size} bytes is too large for a constant (it travels with every task); give it samples"
        raise InputError(msg)
    value = read_whole(str(path), spec.name)
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        msg = f"{where}: NaN or infinite values in constant input {spec.name!r}; store finite values"
        raise InputError(msg)
    return Constant.of(spec.name, value)


def describe_dataset(path: Path | str, option: str, inputs: list[InputSpec], **options) -> DatasetSpec:
    """Check a dataset against the model inputs: a .npy/.npz file (headers only, and small constants), or
    a Parquet file or folder (pipeline.parquet_inputs: schemas and footers only).

    `labels` names the label array (column) to use if present (None: no labels);
    `constants` are the inputs' values given on the command line. A dataset rewritten while it is being
    checked (between its headers and its fingerprint) is refused: the spec would mix the two.
    """
    try:
        before = identity(path)
    except (OSError, InputError):
        before = None  # missing: said below, with the option's name
    spec = _described(path, option, inputs, **options)
    if before is not None and spec.identity != before:
        msg = f"{option} {path}: changed while it was being checked; wait until it is written, then run again"
        raise InputError(msg)
    return spec


def _described(
    path: Path,
    option: str,
    inputs: list[InputSpec],
    *,
    labels: str | None = None,
    constants: tuple[Constant, ...] = (),
    output_axes: tuple[tuple[str, int], ...] = (),
) -> DatasetSpec:
    from dask_quant.pipeline.parquet_inputs import describe_parquet
    from dask_quant.tasks.parquet_io import is_parquet

    remote = is_url(path)
    if is_parquet(path) and (exists(path) if remote else path.exists()):
        return describe_parquet(path, option, inputs, labels=labels, constants=constants, output_axes=output_axes)
    if not (exists(path) if remote else path.is_file()):
        msg = f"{option} {path}: file not found; pass an existing .npz, .npy or .parquet file (or a folder of them)"
        raise InputError(msg)
    if suffix(path) not in (".npy", ".npz"):
        msg = (
            f"{option} {path}: unsupported file type {suffix(path)!r}; pass a .npz (one array per input), a .npy, "
            "or Parquet (a .parquet file or a folder of them: one column per input)"
        )
        raise InputError(msg)
    given = {c.name for c in constants}
    batched = [i for i in inputs if i.batch_axis is not None]
    constants = (
        *constants,
        *(_stored_constant(path, option, i) for i in inputs if i.batch_axis is None and i.name not in given),
    )
    members = _members_for(path, option, batched)
    by_name = {i.name: i for i in inputs}
    name_of = PurePosixPath(str(path)).name
    rows = {member or name_of: _check_array(path, option, member, by_name[name]) for name, member in members}
    if len(set(rows.values())) > 1:
        msg = (
            f"{option} {path}: arrays have different sample counts {rows}; every input needs one row per sample "
            "(an input that is the same for every sample: --const-input NAME=VALUE)"
        )
        raise InputError(msg)
    n_rows = next(iter(rows.values()))
    if n_rows == 0:
        msg = f"{option} {path}: holds no samples (axis 0 has length 0); pass at least one sample"
        raise InputError(msg)
    if labels is not None and not (suffix(path) == ".npz" and labels in member_names(str(path))):
        labels = None
    if labels is not None:
        check_labels(f"{option} {path}[{labels}]", array_info(str(path), labels), n_rows)
    for member in [m for _, m in members] + ([labels] if labels else []) if not remote else ():
        check_crc(str(path), member)  # reads the members whole: not from object storage (its ETag stands for it)
    compressed = any(is_compressed(str(path), member) for _, member in members)
    axes = tuple((i.name, i.batch_axis) for i in batched if i.batch_axis)
    feeding = Feeding(axes, output_axes, tuple(sorted(constants, key=lambda c: c.name)))
    sha256, stamp = fingerprint(path, f"{option} {path}")
    where = path if remote else str(path.resolve())
    return DatasetSpec(where, members, n_rows, sha256, labels, compressed, feeding, stamp)
