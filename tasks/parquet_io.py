"""Read column types and row slices from a Parquet dataset: one file, or a folder of files (hive-partitioned
or not), whose rows follow the files in path order.

A column holds one value per row: a number, a fixed-size list (nested lists
give more dims), or Arrow's fixed-shape tensor extension type. A worker reads
only the row groups its rows lie in, one column at a time, and keeps the last
one it decoded for the chunks after it: its memory is bounded by its chunk and
a row group, not by the dataset. Nothing else is read: partition columns and
other columns are ignored.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dask_quant.tasks.digest import identity, tree_files
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.storage import arrow_filesystem, is_folder, is_url, open_remote, remote_files, suffix

SUFFIX = ".parquet"
_cache: dict[tuple, tuple[tuple[str, int], np.ndarray]] = {}  # (column, dataset stamp) -> last row group
_cache_lock = threading.Lock()


def is_parquet(path: str | Path) -> bool:
    """A .parquet file, or a folder (a Parquet dataset's files), local or at a URL."""
    if suffix(path) in (SUFFIX, ".npy", ".npz"):
        return suffix(path) == SUFFIX
    return is_folder(path) if is_url(path) else Path(path).is_dir()


def parquet_files(path: str | Path) -> list[str]:
    """The dataset's files in row order: the file itself, or a folder's files in path order (names starting
    with '_' or '.' skipped, as Spark's _SUCCESS and .crc files and pyarrow.dataset skip them)."""
    if is_url(path):
        return remote_files(path)
    path = Path(path)
    return [str(path)] if path.is_file() else [str(file) for file in tree_files(path)]


def footer(file: str):
    """The file's pyarrow.parquet.FileMetaData; InputError when it is not Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if is_url(file):
            with open_remote(file) as (handle, _):
                return pq.ParquetFile(handle).metadata
        return pq.ParquetFile(file).metadata
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise corrupt(file, exc) from None


@dataclass(frozen=True)
class ColumnInfo:
    """One column's values per row: their numpy dtype and dims (() for one number; None for the length of
    a variable-length list, known only from the rows)."""

    dtype: str
    dims: tuple[int | None, ...]


def _nested(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def column_info(arrow_type, where: str) -> ColumnInfo:
    """What a row of a column of `arrow_type` holds; InputError for a type that is not (lists of) numbers."""
    import pyarrow as pa

    dims: list[int | None] = []
    leaf = arrow_type
    if isinstance(leaf, pa.FixedShapeTensorType):
        if list(leaf.permutation or range(len(leaf.shape))) != list(range(len(leaf.shape))):
            msg = f"{where}: a tensor column with a permutation ({leaf.permutation}); store it in row-major order"
            raise InputError(msg)
        dims, leaf = list(leaf.shape), leaf.value_type
    while _nested(leaf):
        dims.append(leaf.list_size if pa.types.is_fixed_size_list(leaf) else None)
        leaf = leaf.value_type
    if not (pa.types.is_integer(leaf) or pa.types.is_floating(leaf) or pa.types.is_boolean(leaf)):
        msg = f"{where}: values of type {leaf}, not numbers; store numbers (lists of them for tensors)"
        raise InputError(msg)
    return ColumnInfo(np.dtype(leaf.to_pandas_dtype()).str, tuple(dims))


@functools.lru_cache(maxsize=16)
def _layout(path: str, stamp: tuple[int, int]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Each file of the dataset with the row counts of its row groups (footers only)."""
    layout = []
    for file in parquet_files(path):
        meta = footer(file)
        layout.append((file, tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))))
    return tuple(layout)


def corrupt(file: str, exc: BaseException) -> InputError:
    return InputError(f"{file}: not a readable Parquet file ({type(exc).__name__}: {exc}); write it again")


def _decoded(file: str, group: int, column: str, stamp: tuple[int, int]) -> np.ndarray:
    """One row group of one column as an array, rows on axis 0. The last one decoded per column stays
    (the next chunk usually lies in it too: decoding a row group per chunk was 5x slower); it is dropped
    before another is decoded, so a reading thread holds at most one row group per column."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    slot, wanted = (column, stamp), (file, group)
    with _cache_lock:
        held = _cache.get(slot)
        if held is not None and held[0] == wanted:
            return held[1]
        _cache.pop(slot, None)
    where = f"{file}[{column}] (row group {group})"
    try:
        # The system allocator hands a freed row group back: pyarrow's default pool (mimalloc) kept them,
        # and a worker's peak grew with the row groups it had read (343 against 311 MiB, 1 M and 100 k rows).
        pool = pa.system_memory_pool()
        filesystem, where_in = arrow_filesystem(file)
        fragment = ds.ParquetFileFormat().make_fragment(where_in, filesystem, row_groups=[group])
        table = fragment.to_table(columns=[column], use_threads=False, memory_pool=pool)  # one thread a task
        values = table.column(column).combine_chunks(pool)
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        raise corrupt(file, exc) from None
    array = to_numpy(values, column_info(values.type, where), where)
    with _cache_lock:
        _cache[slot] = (wanted, array)
    return array


def to_numpy(values, info: ColumnInfo, where: str) -> np.ndarray:
    """An Arrow array of rows as a numpy array of shape (rows, *dims); InputError for null values, and for
    variable-length lists whose lengths differ (a tensor's rows all have one shape)."""
    import pyarrow as pa

    rows, dims = len(values), []
    if isinstance(values.type, pa.BaseExtensionType):  # the tensor type: its storage is a flat fixed-size list
        values = values.storage
    while True:
        if values.null_count:
            msg = f"{where}: {values.null_count} null value(s); every row needs a value"
            raise InputError(msg)
        if not _nested(values.type):
            break
        if pa.types.is_fixed_size_list(values.type):
            dims.append(values.type.list_size)
        else:
            lengths = values.value_lengths().to_numpy()
            uneven = np.flatnonzero(lengths != lengths[0]) if len(lengths) else ()
            if len(uneven):
                msg = (
                    f"{where}: lists of different lengths ({lengths[0]} and {lengths[uneven[0]]}); every row "
                    "holds one tensor of the input's shape"
                )
                raise InputError(msg)
            dims.append(int(lengths[0]) if len(lengths) else 0)
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False)
    shape = info.dims if None not in info.dims else dims  # a tensor's dims are its type's, not its storage's
    return flat.reshape((rows, *shape)).astype(np.dtype(info.dtype), copy=False)


def read_rows(path: str, column: str, start: int, stop: int, stamp: tuple[int, int] = ()) -> np.ndarray:
    """Rows [start, stop) of a column, reading only the row groups that hold them. `stamp`: the dataset's
    identity, if the caller has checked it (else it is taken again: a listing, on object storage)."""
    stamp = stamp or identity(path)
    parts = []
    first = 0
    for file, groups in _layout(path, stamp):
        for group, count in enumerate(groups):
            lo, hi = max(start, first), min(stop, first + count)
            if lo < hi:
                parts.append(_decoded(file, group, column, stamp)[lo - first : hi - first])
            first += count
            if first >= stop:
                return _joined(parts, path, column, start, stop)
    return _joined(parts, path, column, start, stop)


def _joined(parts: list[np.ndarray], path: str, column: str, start: int, stop: int) -> np.ndarray:
    rows = sum(len(part) for part in parts)
    if rows != stop - start:
        msg = (
            f"{path}[{column}]: rows {start}..{stop} are not all there (a file holds fewer rows than its footer "
            "says, or the dataset shrank); write it again"
        )
        raise InputError(msg)
    shapes = sorted({part.shape[1:] for part in parts})
    if len(shapes) > 1:  # lists of one length in a row group, of another in the next
        msg = (
            f"{path}[{column}]: rows {start}..{stop} hold values of shapes {shapes[0]} and {shapes[1]}; every row "
            "holds one tensor of the input's shape"
        )
        raise InputError(msg)
    return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)
