"""Checks of a Parquet dataset (a .parquet file or a folder of them) against the model's inputs, before
any work is submitted: from schemas and footers only, as pipeline.inputs does for .npz headers.

One column per model input, named like it: one value per row (for a
one-dimensional input), a fixed-size list (nested for more dims, or flat and
reshaped to the input's fixed sample dims; variable-length lists, as DuckDB and
Spark write arrays, too when every row has the input's size), or
pyarrow.fixed_shape_tensor. An integer column named like --labels-key holds
validation labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dask_quant.pipeline.inputs import DatasetSpec, InputSpec, check_labels, check_rows
from dask_quant.tasks.digest import fingerprint
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.feeding import Constant, Feeding
from dask_quant.tasks.npy_io import ArrayInfo
from dask_quant.tasks.parquet_io import ColumnInfo, column_info, footer, parquet_files
from dask_quant.tasks.storage import is_url


def _footers(path: Path, option: str) -> list[tuple[str, object]]:
    """(file, pyarrow.parquet.FileMetaData) of each file, in row order."""
    files = parquet_files(path)
    if not files:
        msg = f"{option} {path}: a folder without data files; pass a .parquet file or a folder that holds some"
        raise InputError(msg)
    footers = []
    for file in files:
        try:
            footers.append((file, footer(file)))
        except InputError as exc:
            msg = f"{option} {exc}"
            raise InputError(msg) from None
    return footers


def _types(file: str, meta, option: str, columns: list[str]) -> dict:
    """The Arrow type of each of `columns` in one file (None where it is missing)."""
    schema = meta.schema.to_arrow_schema()
    types = {}
    for name in columns:
        count = schema.names.count(name)
        if count > 1:
            msg = f"{option} {file}: {count} columns named {name!r}; a dataset needs one column per input"
            raise InputError(msg)
        types[name] = schema.field(name).type if count else None
    return types


def _same_schemas(footers: list, option: str, columns: list[str]) -> dict:
    """The Arrow type of each of `columns` present, the same in every file (present in all or none)."""
    first_file, first = footers[0]
    types = _types(first_file, first, option, columns)
    for file, meta in footers[1:]:
        for name, have in _types(file, meta, option, columns).items():
            if have != types[name]:
                msg = (
                    f"{option} {file}: column {name!r} is {have or 'missing'}, but in {first_file} it is "
                    f"{types[name] or 'missing'}; every file of a dataset needs the same columns"
                )
                raise InputError(msg)
    return {name: kind for name, kind in types.items() if kind is not None}


def _leaves(arrow_type) -> int:
    """How many Parquet leaf columns a column of `arrow_type` is stored as."""
    import pyarrow as pa

    if isinstance(arrow_type, pa.BaseExtensionType):
        return _leaves(arrow_type.storage_type)
    if pa.types.is_struct(arrow_type):
        return sum(_leaves(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_map(arrow_type):
        return _leaves(arrow_type.key_type) + _leaves(arrow_type.item_type)
    if hasattr(arrow_type, "value_type"):  # lists of every kind (a dictionary's values are one leaf)
        return 1 if pa.types.is_dictionary(arrow_type) else _leaves(arrow_type.value_type)
    return 1


def _no_nulls(footers: list, option: str, column: str) -> None:
    """Refuse null values that the footers' statistics count in `column`'s own leaf columns (files without
    statistics are checked as the workers read them)."""
    for file, meta in footers:
        schema = meta.schema.to_arrow_schema()
        first = sum(_leaves(schema.field(i).type) for i in range(schema.get_field_index(column)))
        leaves = range(first, first + _leaves(schema.field(column).type))
        for group in range(meta.num_row_groups):
            row_group = meta.row_group(group)
            for index in leaves:
                stats = row_group.column(index).statistics
                if stats is not None and stats.has_null_count and stats.null_count:
                    msg = (
                        f"{option} {file}[{column}]: {stats.null_count} null value(s) in row group {group}; "
                        "every row needs a value"
                    )
                    raise InputError(msg)


def _stored_shape(where: str, info: ColumnInfo, rows: int, spec: InputSpec) -> tuple[ArrayInfo, tuple[int, ...]]:
    """The column as an array of (rows, *dims), and the sample dims to reshape its rows to (() if none):
    a flat list, or lists of varying length (as DuckDB and Spark write arrays), take the input's dims."""
    wanted = spec.sample_dims
    flat = len(info.dims) == 1 and wanted is not None and len(wanted) > 2
    if None not in info.dims and not flat:
        return ArrayInfo((rows, *info.dims), info.dtype, False), ()
    if wanted is None or any(d is None for d in wanted[1:]):
        msg = (
            f"{where}: lists that do not fix their length, for model input {spec.name!r} whose dims are not fixed "
            f"({spec.dims}); store fixed-size lists (pyarrow.list_(type, size)) or pyarrow.fixed_shape_tensor"
        )
        raise InputError(msg)
    dims = tuple(int(d) for d in wanted[1:])
    if None not in info.dims and int(np.prod(info.dims)) != int(np.prod(dims)):
        msg = (
            f"{where}: lists of {info.dims[0]} values, but model input {spec.name!r} takes samples of "
            f"{'x'.join(map(str, dims))} = {int(np.prod(dims))} values; store one sample per row"
        )
        raise InputError(msg)
    return ArrayInfo((rows, *dims), info.dtype, False), dims


def describe_parquet(
    path: Path,
    option: str,
    inputs: list[InputSpec],
    *,
    labels: str | None = None,
    constants: tuple[Constant, ...] = (),
    output_axes: tuple[tuple[str, int], ...] = (),
) -> DatasetSpec:
    """pipeline.inputs.describe_dataset for Parquet: one column per input (and `labels`, if present)."""
    given = {c.name for c in constants}
    stored = [i.name for i in inputs if i.batch_axis is None and i.name not in given]
    if stored:
        msg = (
            f"{option} {path}: model input {stored[0]!r} takes one value for every sample, and a Parquet dataset "
            f"holds rows only; pass --const-input {stored[0]}=VALUE"
        )
        raise InputError(msg)
    footers = _footers(path, option)
    batched = [i for i in inputs if i.batch_axis is not None]
    types = _same_schemas(footers, option, [i.name for i in batched] + ([labels] if labels else []))
    missing = [i.name for i in batched if i.name not in types]
    if missing:
        found = footers[0][1].schema.to_arrow_schema().names
        msg = (
            f"{option} {path}: no column named {', '.join(map(repr, missing))} (found: "
            f"{', '.join(map(repr, found)) or 'none'}); store one column per model input name"
        )
        raise InputError(msg)
    n_rows = sum(meta.num_rows for _, meta in footers)
    if n_rows == 0:
        msg = f"{option} {path}: holds no rows; pass at least one sample"
        raise InputError(msg)
    shapes = []
    for spec in batched:
        where = f"{option} {path}[{spec.name}]"
        info, reshape = _stored_shape(where, column_info(types[spec.name], where), n_rows, spec)
        check_rows(where, info, spec)
        _no_nulls(footers, option, spec.name)
        if reshape:
            shapes.append((spec.name, reshape))
    if labels is not None and labels not in types:
        labels = None
    if labels is not None:
        where = f"{option} {path}[{labels}]"
        info = column_info(types[labels], where)
        check_labels(where, ArrayInfo((n_rows, *info.dims), info.dtype, False), n_rows)
        _no_nulls(footers, option, labels)
    axes = tuple((i.name, i.batch_axis) for i in batched if i.batch_axis)
    feeding = Feeding(axes, output_axes, tuple(sorted(constants, key=lambda c: c.name)))
    sha256, stamp = fingerprint(path, f"{option} {path}")
    members = tuple((i.name, i.name) for i in batched)
    where = path if is_url(path) else str(path.resolve())
    return DatasetSpec(where, members, n_rows, sha256, labels, False, feeding, stamp, tuple(shapes))
