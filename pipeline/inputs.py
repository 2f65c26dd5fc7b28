"""Checks of the user's model and data files, before any work is submitted.

Only headers are read here: the client never loads the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dask_quant.tasks.digest import sha256_file
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.npy_io import NPY_MEMBER, array_info, is_compressed, member_names

LABELS = "labels"


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype string, dims (None where symbolic; no dims when the model gives no shape)."""

    name: str
    dtype: str
    dims: tuple[int | None, ...] | None

    @property
    def batch(self) -> int | None:
        """The batch size axis 0 fixes, if any."""
        return self.dims[0] if self.dims else None


@dataclass(frozen=True)
class DatasetSpec:
    """A checked dataset file: which array feeds which input, how many rows."""

    path: str
    members: tuple[tuple[str, str], ...]
    rows: int
    sha256: str
    labels: str | None = None
    compressed: bool = False


def load_model(path: Path):
    """The ModelProto at `path`, or an InputError saying why it is not one."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        msg = f"model file not found: {path}; pass the path of an .onnx file"
        raise InputError(msg)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        msg = f"{path} is not an ONNX model ({type(exc).__name__}); pass an .onnx file exported by your framework"
        raise InputError(msg) from None
    if proto.ir_version <= 0 or not proto.graph.node:
        msg = f"{path} is not an ONNX model (no IR version or no graph nodes); pass an .onnx file"
        raise InputError(msg)
    return proto


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
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).str
        dims = None
        if tensor_type.HasField("shape"):
            # A dim_value of 0 or less fixes nothing we can feed: treat it as symbolic.
            dims = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim
            )
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def _members_for(path: Path, option: str, inputs: list[InputSpec]) -> tuple[tuple[str, str], ...]:
    if path.suffix == ".npy":
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
    info = array_info(str(path), member)
    if not info.shape:
        msg = f"{where}: a scalar; samples go on axis 0, so save an array of at least one dimension"
        raise InputError(msg)
    if spec.dims is not None and len(info.shape) != len(spec.dims):
        msg = (
            f"{where}: rank {len(info.shape)} (shape {info.shape}), but model input {spec.name!r} "
            f"has rank {len(spec.dims)}; samples go on axis 0"
        )
        raise InputError(msg)
    # Byte order is not a mismatch: rows are read in native order (tasks.npy_io).
    if np.dtype(info.dtype).newbyteorder("=") != np.dtype(spec.dtype).newbyteorder("="):
        have, want = np.dtype(info.dtype).name, np.dtype(spec.dtype).name
        msg = f"{where}: dtype {have}, but model input {spec.name!r} wants {want}; convert with .astype"
        raise InputError(msg)
    for axis, (have, want) in enumerate(zip(info.shape[1:], (spec.dims or info.shape)[1:], strict=True), start=1):
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


def describe_dataset(path: Path, option: str, inputs: list[InputSpec], *, labels_allowed: bool) -> DatasetSpec:
    """Check a .npy/.npz dataset against the model inputs; read headers only."""
    if not path.is_file():
        msg = f"{option} {path}: file not found; pass an existing .npz or .npy file"
        raise InputError(msg)
    if path.suffix not in (".npy", ".npz"):
        msg = f"{option} {path}: unsupported file type {path.suffix!r}; pass a .npz (one array per input) or .npy"
        raise InputError(msg)
    members = _members_for(path, option, inputs)
    by_name = {i.name: i for i in inputs}
    rows = {member or path.name: _check_array(path, option, member, by_name[name]) for name, member in members}
    if len(set(rows.values())) > 1:
        msg = f"{option} {path}: arrays have different sample counts {rows}; every input needs one row per sample"
        raise InputError(msg)
    n_rows = next(iter(rows.values()))
    if n_rows == 0:
        msg = f"{option} {path}: holds no samples (axis 0 has length 0); pass at least one sample"
        raise InputError(msg)
    labels = None
    if labels_allowed and path.suffix == ".npz" and LABELS in member_names(str(path)):
        info = array_info(str(path), LABELS)
        if info.shape not in ((n_rows,), (n_rows, 1)) or not np.issubdtype(np.dtype(info.dtype), np.integer):
            msg = (
                f"{option} {path}[labels]: want one integer class per sample, shape ({n_rows},); "
                f"got shape {info.shape} of {np.dtype(info.dtype).name}"
            )
            raise InputError(msg)
        labels = LABELS
    compressed = any(is_compressed(str(path), member) for _, member in members)
    return DatasetSpec(str(path.resolve()), members, n_rows, sha256_file(path), labels, compressed)
