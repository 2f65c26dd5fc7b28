"""Chunk references: which rows of which file a task reads.

A chunk travels as a reference (path, array names, row range), never as the
arrays: workers read their own rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_quant.tasks.digest import check_identity
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.feeding import NO_FEEDING, Feeding
from dask_quant.tasks.npy_io import read_rows as npy_rows
from dask_quant.tasks.parquet_io import is_parquet
from dask_quant.tasks.parquet_io import read_rows as parquet_rows


@dataclass(frozen=True)
class ChunkRef:
    """Rows [start, stop) of a dataset file.

    `members` pairs each model input name with the array name in the file
    (NPY_MEMBER for a plain .npy); `labels` names the label array, if any;
    `sha256` is the file's, so a chunk's statistics can be keyed by content;
    `feeding` says how rows become the model's feeds (tasks.feeding).
    """

    path: str
    members: tuple[tuple[str, str], ...]
    start: int
    stop: int
    index: int
    labels: str | None = None
    sha256: str = ""
    feeding: Feeding = NO_FEEDING
    identity: tuple[int, int] = ()  # (size, mtime ns) of the fingerprinted file; () checks nothing
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # inputs stored flat: the sample dims they take

    @property
    def rows(self) -> int:
        return self.stop - self.start


def chunk_refs(
    path: str,
    members: tuple[tuple[str, str], ...],
    n_rows: int,
    chunk_size: int,
    labels: str | None = None,
    sha256: str = "",
    feeding: Feeding = NO_FEEDING,
    identity: tuple[int, int] = (),
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = (),
) -> list[ChunkRef]:
    """Split n_rows into consecutive chunks of chunk_size rows; a last row left alone joins the chunk before.

    ORT runs a single row through other kernels (a one-row GEMM) whose float
    sums can differ in the last bit, and a flipped rounding then moves an INT8
    value by a step: 301 rows in chunks of 300 must give what one chunk gives.
    Only --chunk-size 1 (or a one-row set) runs single rows.
    """
    if chunk_size < 1:
        msg = f"chunk size must be a positive number of rows, got {chunk_size}"
        raise ValueError(msg)
    starts = list(range(0, n_rows, chunk_size))
    if chunk_size > 1 and len(starts) > 1 and n_rows - starts[-1] == 1:
        starts.pop()
    stops = [*starts[1:], n_rows]
    return [
        ChunkRef(path, members, start, stop, index, labels, sha256, feeding, identity, shapes)
        for index, (start, stop) in enumerate(zip(starts, stops, strict=True))
    ]


def chunk_content(chunk: ChunkRef) -> tuple:
    """What a chunk's values depend on (a checkpoint's key): the file's bytes, the arrays and the rows,
    and how they are fed (not its path)."""
    return (chunk.sha256, chunk.members, chunk.start, chunk.stop, chunk.feeding, chunk.shapes)


def read_feeds(chunk: ChunkRef) -> dict[str, np.ndarray]:
    """The model inputs of one chunk, keyed by model input name, samples on axis 0.

    NaN and infinities in the data are refused, naming the input, the count and the rows; so is a
    file that is not the one fingerprinted when the run started (its checkpoints would lie).
    """
    check_identity(chunk.path, chunk.identity)
    feeds = {name: _rows(chunk, member) for name, member in chunk.members}
    for name, dims in chunk.shapes:  # lists stored flat, or of a length the schema does not fix
        if feeds[name].size != chunk.rows * int(np.prod(dims)):
            each = feeds[name].size // chunk.rows
            msg = (
                f"{chunk.path}[{name}]: rows {chunk.start}..{chunk.stop} hold {each} values each, but model "
                f"input {name!r} takes {'x'.join(map(str, dims))}; store one sample per row"
            )
            raise InputError(msg)
        feeds[name] = feeds[name].reshape((chunk.rows, *dims))
    for name, array in feeds.items():
        if np.issubdtype(array.dtype, np.floating):
            bad = int((~np.isfinite(array)).sum())
            if bad:
                msg = (
                    f"{bad} NaN or infinite value(s) in input {name!r} (rows {chunk.start}..{chunk.stop} of "
                    f"{chunk.path}); fix or remove those samples"
                )
                raise InputError(msg)
    return feeds


def read_labels(chunk: ChunkRef) -> np.ndarray | None:
    if chunk.labels is None:
        return None
    check_identity(chunk.path, chunk.identity)
    return _rows(chunk, chunk.labels)


def _rows(chunk: ChunkRef, member: str) -> np.ndarray:
    """One array's (or Parquet column's) rows of the chunk."""
    if is_parquet(chunk.path):
        return parquet_rows(chunk.path, member, chunk.start, chunk.stop, chunk.identity)  # checked just before
    return npy_rows(chunk.path, member, chunk.start, chunk.stop)
