"""Files where users keep them: a local path, or a URL that fsspec opens (s3://, gs://, az://, file://, ...).

The client reads only headers, footers and listings through it; workers read
their own byte ranges. Credentials and endpoints come from each backend's own
environment and configuration (for s3fs: the AWS_* variables, such as
AWS_ENDPOINT_URL, and ~/.aws), the same on the client and on every worker.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from pathlib import PurePosixPath

from dask_quant.tasks.errors import InputError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Reads ask for what they need, plus this much ahead: headers are small, and a chunk's rows are one
# range; fsspec's default blocks (5 MiB, 50 MiB for s3fs) would fetch far more than a header.
READ_AHEAD = 1 << 16
_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(path) -> bool:
    return isinstance(path, str) and bool(_SCHEME.match(path))


def suffix(path) -> str:
    return PurePosixPath(str(path).split("://", 1)[-1]).suffix


def _filesystem(url: str):
    """(fsspec filesystem, its path) for `url`; InputError when its backend is not installed."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError:
        scheme = url.split("://", 1)[0]
        package = _BACKENDS.get(scheme, f"fsspec's {scheme} backend")
        msg = f"{url}: {scheme}:// needs {package}, installed on the client and on every worker"
        raise InputError(msg) from None
    except ValueError as exc:
        msg = f"{url}: not a URL fsspec knows ({exc})"
        raise InputError(msg) from None
    except STORE_ERRORS as exc:  # options the backend refuses (--storage-option), or its own failures
        msg = f"{url}: its filesystem cannot be opened ({type(exc).__name__}: {exc}); check --storage-option"
        raise InputError(msg) from None


# What a store's client raises besides OSError: botocore's NoCredentialsError and ClientError, for example,
# derive from Exception only. Each becomes one line that names the URL (no backend is imported here).
STORE_ERRORS = (Exception,)


def _credentials(exc: BaseException) -> bool:
    return "Credentials" in type(exc).__name__


def _refusal(url: str, where: str, exc: BaseException) -> InputError | None:
    """What reading and writing say alike: missing credentials, options the backend refuses, access denied
    (`where`: the URL, or the option and the URL)."""
    if _credentials(exc):
        return InputError(
            f"{url}: no credentials for it ({exc}); set the backend's own (for S3: AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE, ~/.aws) on the client and every worker, or pass --storage-option"
        )
    if _options_refused(exc):
        return InputError(f"{where}: its filesystem refuses the options ({type(exc).__name__}: {exc}); check "
                          "--storage-option")  # fmt: skip
    if isinstance(exc, PermissionError):
        return InputError(f"{where}: access denied ({exc}); check the credentials this machine uses for it")
    return None


def _unreachable(url: str, exc: BaseException) -> InputError:
    refused = _refusal(url, url, exc)
    if refused is not None:
        return refused
    if isinstance(exc, FileNotFoundError) and url.startswith("memory://"):
        return InputError(f"{url}: not found; memory:// is one process's memory: workers in processes of their own "
                          "never see what the client put there")  # fmt: skip
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{url}: not found; check the bucket and key (and that this machine sees them)")
    return InputError(f"{url}: cannot be read ({type(exc).__name__}: {exc})")


@contextmanager
def open_remote(url: str):
    """A seekable binary handle on the object at `url` (reads are ranged), and its size."""
    fs, path = _filesystem(url)
    try:
        size = fs.size(path)
        handle = fs.open(path, "rb", block_size=READ_AHEAD, cache_type="readahead")
    except STORE_ERRORS as exc:
        raise _unreachable(url, exc) from None
    with handle:
        yield handle, size


def arrow_filesystem(path: str):
    """(pyarrow filesystem, path in it) for a local path or a URL (fsspec's, wrapped for pyarrow)."""
    import pyarrow.fs

    if not is_url(path):
        return pyarrow.fs.LocalFileSystem(), path
    fs, inner = _filesystem(path)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), inner


def read_remote(url: str) -> bytes:
    """A whole (small) object: a model."""
    with open_remote(url) as (handle, _):
        return handle.read()


def _objects(url: str, hidden: bool = False) -> list[tuple[str, dict]]:
    """(URL, fsspec info) of the object at `url`, or of every object under it as a folder, in key order,
    without those under a name starting with '_' or '.' (as digest.tree_files does on disk) unless `hidden`."""
    fs, path = _filesystem(url)
    try:
        if fs.isfile(path):
            return [(url, fs.info(path))]
        found = fs.find(path, detail=True)
    except STORE_ERRORS as exc:
        raise _unreachable(url, exc) from None
    scheme = url.split("://", 1)[0]
    base = path.rstrip("/")
    objects = []
    for key in sorted(found):
        relative = key[len(base) :].lstrip("/")
        if not relative or key.endswith("/"):  # a folder's own marker object (S3 consoles and s3a write them)
            continue
        visible = hidden or not any(part.startswith(("_", ".")) for part in relative.split("/"))
        if found[key].get("type") == "file" and visible:
            objects.append((f"{scheme}://{fs._strip_protocol(key)}", found[key]))  # noqa: SLF001
    return objects


def _ask(url: str, question: str) -> bool:
    fs, path = _filesystem(url)
    try:
        return getattr(fs, question)(path)
    except STORE_ERRORS as exc:
        raise _unreachable(url, exc) from None


def exists(url: str) -> bool:
    return _ask(url, "exists")


def is_folder(url: str) -> bool:
    return _ask(url, "isdir")


def object_size(url: str) -> int:
    return int(_ask(url, "size"))


def remote_files(url: str) -> list[str]:
    """The object itself, or the objects under a folder URL in key order (data files only)."""
    return [name for name, _ in _objects(url)]


def _version(info: dict) -> str:
    """What changes when an object is rewritten: its ETag (S3, GCS, Azure), else its modification time."""
    for key in ("ETag", "etag", "md5Hash", "content_settings", "LastModified", "mtime", "last_modified", "updated"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def _listing(url: str, objects: list[tuple[str, dict]]) -> str:
    return "".join(f"{name[len(url) :].lstrip('/')}\0{info.get('size')}\0{_version(info)}\n" for name, info in objects)


def remote_sha256(url: str) -> str:
    """The fingerprint of remote data: the sha256 of one line per object (its key below `url`, size and
    version), not of its bytes, which the client would have to download whole."""
    return hashlib.sha256(_listing(url, _objects(url)).encode()).hexdigest()


def remote_identity(url: str) -> tuple[int, int]:
    """As digest.identity: the objects' total size and a digest of their keys, sizes and versions."""
    objects = _objects(url)
    if not objects:
        msg = f"{url}: no objects there (any more)"
        raise InputError(msg)
    digest = hashlib.sha256(_listing(url, objects).encode()).hexdigest()
    return sum(int(info.get("size") or 0) for _, info in objects), int(digest[:15], 16)


def _options_refused(exc: BaseException) -> bool:
    """A backend's own keyword check (an unknown or mistyped --storage-option) fails as these."""
    return isinstance(exc, (TypeError, AttributeError))


def _unwritable(url: str, option: str, exc: BaseException) -> InputError:
    refused = _refusal(url, f"{option} {url}", exc)
    if refused is not None:
        return refused
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{option} {url}: no such bucket or container ({exc}); create it, or choose another {option}")
    return InputError(f"{option} {url}: cannot be written ({type(exc).__name__}: {exc}); choose another {option}")


def put_bytes(url: str, data: bytes, option: str) -> None:
    """Write one object whole (an object store shows it complete, or not at all); `option` names what asked."""
    fs, path = _filesystem(url)
    try:
        fs.pipe_file(path, data)
    except STORE_ERRORS as exc:
        raise _unwritable(url, option, exc) from None


def put_file(local, url: str, option: str) -> None:
    """Upload the local file `local` to the object at `url`."""
    fs, path = _filesystem(url)
    try:
        fs.put_file(str(local), path)
    except STORE_ERRORS as exc:
        raise _unwritable(url, option, exc) from None


def modified(url: str) -> dict[str, float]:
    """Seconds since the epoch each object under `url` was last written (those whose store tells), by URL."""
    import datetime

    found = {}
    for name, info in _objects(url, hidden=True):
        keys = ("LastModified", "last_modified", "mtime", "updated", "created")
        stamp = next((info[key] for key in keys if info.get(key)), None)
        if isinstance(stamp, datetime.datetime):
            found[name] = stamp.timestamp()
        elif isinstance(stamp, (int, float)):
            found[name] = float(stamp)
    return found


def remove(url: str) -> None:
    """Remove the object at `url`, or every object under it; nothing there is no error."""
    fs, path = _filesystem(url)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        return
    except STORE_ERRORS as exc:
        raise _unwritable(url, "--out", exc) from None
