"""Content fingerprints for files that travel by reference."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

_BLOCK = 1 << 20


def tree_files(folder: str | Path) -> list[Path]:
    """A folder's files, in path order, without those under a name starting with '_' or '.' (Spark's
    _SUCCESS, checksum files, pyarrow.dataset's own rule): the files of a dataset stored as a folder."""
    folder = Path(folder)
    files = (
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(("_", ".")) for part in path.relative_to(folder).parts)
    )
    return sorted(files, key=lambda path: path.as_posix())  # string order, as pyarrow.dataset and object stores list


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in blocks so memory stays flat; of a folder, the sha256 of its
    tree_files' relative paths and sha256s; of a URL, tasks.storage.remote_sha256."""
    from dask_quant.tasks.storage import is_url, remote_sha256

    if is_url(path):
        return remote_sha256(path)
    path = Path(path)
    if path.is_dir():
        listing = "".join(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n" for file in tree_files(path))
        return hashlib.sha256(listing.encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _sha256_as_of(path: str, stat: tuple[int, int, int, int], model: bool) -> str:
    return model_sha256(path) if model else sha256_file(path)


def known_sha256(path: str | Path, model: bool = False) -> str:
    """sha256_file (model_sha256 for a `model`), remembered per process while the file keeps its device,
    inode, size and modification time: for a file checked again and again (the model every tune variant
    is quantized from)."""
    from dask_quant.tasks.storage import is_url

    if is_url(path):
        return sha256_file(path)
    path = Path(path)
    return _sha256_as_of(str(path.resolve()), file_state(path), model)


def file_state(path: str | Path) -> tuple[int, int, int, int]:
    """(device, inode, size, modification time in ns) of a local file: while they stay, so does what it holds
    (what a process may remember about a file it reads again and again)."""
    stat = Path(path).stat()
    return (stat.st_dev, stat.st_ino, *identity(path))


def identity(path: str | Path) -> tuple[int, int]:
    """(size, modification time in ns): what changes when a file is rewritten or replaced; of a folder,
    its tree_files' total size and a digest of their names, sizes and times (a file added, removed or
    rewritten changes it); of a URL, tasks.storage.remote_identity."""
    from dask_quant.tasks.storage import is_url, remote_identity

    if is_url(path):
        return remote_identity(path)
    path = Path(path)
    if path.is_dir():
        stats = [(file.relative_to(path).as_posix(), file.stat()) for file in tree_files(path)]
        listing = "".join(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n" for name, stat in stats)
        return sum(stat.st_size for _, stat in stats), int(hashlib.sha256(listing.encode()).hexdigest()[:15], 16)
    stat = path.stat()
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
            f"{path}: the file changed since the run started (its size, modification time or ETag differ from "
            "when it was fingerprinted); a file must not change while a run reads it: run again"
        )
        raise InputError(msg)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def external_locations(data: bytes) -> list[str]:
    """The files a serialized model keeps its external data in (relative to its folder), sorted."""
    if b"location" not in data:  # the key every external tensor carries: most models are one file
        return []
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load_from_string(data)
    return sorted(
        {
            entry.value
            for tensor in _get_all_tensors(proto)
            if uses_external_data(tensor)
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )


def model_sha256(path: str | Path, data: bytes | None = None) -> str:
    """The sha256 of a model file (`data`: its bytes, if read already); of a model with external data,
    the sha256 of its own digest and its data files' (a changed weights file changes it)."""
    data = Path(path).read_bytes() if data is None else data
    locations = external_locations(data)
    if not locations:
        return sha256_bytes(data)
    folder = Path(path).parent
    listing = "".join(f"{location}\0{sha256_file(folder / location)}\n" for location in locations)
    return sha256_bytes(f"{sha256_bytes(data)}\n{listing}".encode())


def model_bytes(path: str | Path) -> int:
    """A model's size on disk: its file and the external data files it names (at a URL: its one object)."""
    from dask_quant.tasks.storage import is_url, object_size

    if is_url(path):
        return object_size(path)
    path = Path(path)
    locations = external_locations(path.read_bytes())
    return path.stat().st_size + sum((path.parent / location).stat().st_size for location in locations)
