"""Read array headers and row slices from .npy and .npz files.

Only the requested rows are read: a worker's memory is bounded by its chunk,
never by the file. Nothing is unpickled (object arrays are refused).
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from dask_quant.tasks.errors import InputError
from dask_quant.tasks.storage import is_url, open_remote, suffix

NPY_MEMBER = ""  # the member name used for a plain .npy file


@dataclass(frozen=True)
class ArrayInfo:
    """Shape and dtype of one stored array, read from its header only."""

    shape: tuple[int, ...]
    dtype: str
    fortran_order: bool


_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


def _stored_offset(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int | None:
    """Where an uncompressed member's bytes start in the file, or None if it is compressed."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    archive.fp.seek(info.header_offset)
    header = archive.fp.read(_LOCAL_HEADER)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + _LOCAL_HEADER + name_length + extra_length


# What a corrupt file raises from the zip and zlib layers.
_CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, EOFError, struct.error, NotImplementedError, zlib.error)


def _corrupt(where: str, exc: BaseException) -> InputError:
    return InputError(f"{where}: cannot be read ({type(exc).__name__}: {exc}); the file is corrupt, write it again")


@contextmanager
def _opened(path: str) -> Iterator[tuple[IO[bytes], int]]:
    """A binary handle on a local file or a URL (tasks.storage: ranged reads), and the size of what it reads."""
    if is_url(path):
        with open_remote(path) as opened:
            yield opened
        return
    with Path(path).open("rb") as handle:
        yield handle, os.fstat(handle.fileno()).st_size  # the size of the file we read, not of its path


@contextmanager
def _archive(path: str) -> Iterator[zipfile.ZipFile]:
    with _opened(path) as (handle, _), zipfile.ZipFile(handle) as archive:
        yield archive


@contextmanager
def _open_member(path: str, member: str) -> Iterator[tuple[IO[bytes], int]]:
    """A seekable handle at the start of the member's .npy bytes, and the handle position where they end.

    Stored .npz members are read straight from the file (seeks cost nothing);
    a deflated member can only be decompressed forward from its start. Every
    read must stay within the member's size: past it lie other members' bytes.
    """
    where = f"{path}[{member}]" if member else path
    with _opened(path) as (handle, size):
        if member == NPY_MEMBER:
            yield handle, size
            return
        archive = None
        try:
            archive = zipfile.ZipFile(handle)
            info = archive.getinfo(f"{member}.npy")
            offset = _stored_offset(archive, info)
            deflated = archive.open(info) if offset is None else None
        except (*_CORRUPT, ValueError) as exc:
            if archive is not None:
                archive.close()
            raise _corrupt(where, exc) from None
        with archive:
            if deflated is not None:
                with deflated:
                    yield deflated, info.file_size
                return
            handle.seek(offset)
            yield handle, offset + info.file_size


def is_compressed(path: str, member: str) -> bool:
    if member == NPY_MEMBER:
        return False
    with _archive(path) as archive:
        return archive.getinfo(f"{member}.npy").compress_type != zipfile.ZIP_STORED


def _read_header(handle: IO[bytes], where: str, end: int) -> tuple[ArrayInfo, int]:
    """The array's header, and where its data starts; InputError unless the data fills the member exactly."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = fmt.read_array_header_2_0(handle)
    except _CORRUPT as exc:
        raise _corrupt(where, exc) from None
    except Exception as exc:  # noqa: BLE001  numpy parses a hostile header with tokenize and literal_eval:
        # whatever they raise (TokenError, UnicodeDecodeError, SyntaxError, ...) means "not an array"
        msg = f"{where}: not a valid .npy array ({type(exc).__name__}); save it with numpy.save or numpy.savez"
        raise InputError(msg) from None
    if dtype.hasobject:
        msg = f"{where}: holds Python objects ({dtype}); only numeric arrays are read (nothing is unpickled)"
        raise InputError(msg)
    info = ArrayInfo(tuple(int(d) for d in shape), dtype.str, bool(fortran))
    start = handle.tell()
    data = int(np.prod(info.shape, dtype=object)) * dtype.itemsize
    if start + data != end:
        rows = info.shape[0] if info.shape else 1
        msg = (
            f"{where}: its header says shape {info.shape} ({data} bytes of data), but it holds {end - start}; "
            f"the file is truncated or corrupt ({rows} rows claimed): write it again"
        )
        raise InputError(msg)
    return info, start


def member_names(path: str) -> list[str]:
    """Array names in a .npz, or [NPY_MEMBER] for a .npy file."""
    if suffix(path) == ".npy":
        return [NPY_MEMBER]
    try:
        with _archive(path) as archive:
            return sorted(n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy"))
    except (*_CORRUPT, ValueError) as exc:
        msg = f"{path}: not a .npz archive ({exc}); save it with numpy.savez"
        raise InputError(msg) from exc


def array_info(path: str, member: str) -> ArrayInfo:
    where = f"{path}[{member}]" if member else path
    with _open_member(path, member) as (handle, size):
        return _read_header(handle, where, size)[0]


def read_rows(path: str, member: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) along axis 0, reading only those bytes."""
    where = f"{path}[{member}]" if member else path
    with _open_member(path, member) as (handle, size):
        info, offset = _read_header(handle, where, size)
        if info.fortran_order and len(info.shape) > 1:
            msg = f"{where}: stored in Fortran order; save it C-contiguous (numpy.ascontiguousarray) to read by rows"
            raise InputError(msg)
        dtype = np.dtype(info.dtype)
        row_items = int(np.prod(info.shape[1:], dtype=np.int64))
        row_bytes = row_items * dtype.itemsize
        stop = min(stop, info.shape[0])
        # Seeking a deflated zip member decompresses forward without keeping it.
        wanted = (stop - start) * row_bytes
        try:
            handle.seek(offset + start * row_bytes)
            raw = handle.read(wanted)
        except _CORRUPT as exc:
            raise _corrupt(where, exc) from None
        if len(raw) != wanted:
            msg = f"{where}: file is truncated (rows {start}..{stop} not all present); write it again"
            raise InputError(msg)
        rows = np.frombuffer(raw, dtype=dtype).reshape((stop - start, *info.shape[1:]))
        return rows.astype(dtype.newbyteorder("="))  # a copy, in native byte order as ORT wants


def read_whole(path: str, member: str) -> np.ndarray:
    """A whole (small) array, scalars included, in native byte order."""
    where = f"{path}[{member}]" if member else path
    with _open_member(path, member) as (handle, stored):
        info, _ = _read_header(handle, where, stored)
        dtype = np.dtype(info.dtype)
        size = int(np.prod(info.shape, dtype=np.int64))
        try:
            raw = handle.read(size * dtype.itemsize)
        except _CORRUPT as exc:
            raise _corrupt(where, exc) from None
        if len(raw) != size * dtype.itemsize:
            msg = f"{where}: file is truncated; write it again"
            raise InputError(msg)
        order = "F" if info.fortran_order else "C"
        array = np.frombuffer(raw, dtype=dtype).reshape(info.shape, order=order)
        return np.array(array, order="C").astype(dtype.newbyteorder("="))


def check_crc(path: str, member: str) -> None:
    """Read a .npz member to its end so zipfile checks its CRC-32 (the archive's own integrity claim);
    InputError when it fails. A .npy has no checksum: nothing to do."""
    if member == NPY_MEMBER:
        return
    where = f"{path}[{member}]"
    try:
        with _archive(path) as archive, archive.open(f"{member}.npy") as handle:
            while handle.read(1 << 20):
                pass
    except (*_CORRUPT, ValueError) as exc:
        raise _corrupt(where, exc) from None
