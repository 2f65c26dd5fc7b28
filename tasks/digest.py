"""Content fingerprints for files that travel by reference."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

_BLOCK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in blocks so memory stays flat."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _sha256_as_of(path: str, stat: tuple[int, int, int, int]) -> str:
    return sha256_file(path)


def known_sha256(path: str | Path) -> str:
    """sha256_file, remembered per process while the file keeps its device, inode, size and modification
    time: for a file checked again and again (the model every tune variant is quantized from)."""
    stat = Path(path).stat()
    return _sha256_as_of(str(Path(path).resolve()), (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))


def identity(path: str | Path) -> tuple[int, int]:
    """(size, modification time in ns): what changes when a file is rewritten or replaced."""
    stat = Path(path).stat()
    return stat.st_size, stat.st_mtime_ns


def fingerprint(path: str | Path, where: str) -> tuple[str, tuple[int, int]]:
    """The file's sha256 and identity, refusing a file that changed while it was hashed."""
    from dask_quant.tasks.errors import InputError

    before = identity(path)
    digest = sha256_file(path)
    if identity(path) != before:
        msg = f"{where}: the file changed while it was being fingerprinted; wait until it is written, then run again"
        raise InputError(msg)
    return digest, before


def check_identity(path: str | Path, expected: tuple[int, int]) -> None:
    """InputError when the file is not the one fingerprinted (rewritten or replaced since)."""
    from dask_quant.tasks.errors import InputError

    try:
        now = identity(path)
    except OSError as exc:
        msg = f"{path}: the file went away during the run ({exc.strerror}); a file must stay while a run reads it"
        raise InputError(msg) from None
    if expected and now != expected:
        msg = (
            f"{path}: the file changed since the run started (size or modification time differ from when it "
            "was fingerprinted); a file must not change while a run reads it: run again"
        )
        raise InputError(msg)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
