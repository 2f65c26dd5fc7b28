"""Run directories: atomic publication (the Parquet files are declared in pipeline.outputs).

A run is written into `OUT/.staging/RUN_ID/` and renamed to `OUT/RUN_ID/`
only when complete: a failed or interrupted run leaves nothing behind, and
earlier runs are never touched. Staging two levels down keeps unfinished files
out of globs such as `OUT/*/validation.parquet`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from types import TracebackType

from dask_quant.tasks.errors import InputError

TENSORRT_DIR = "tensorrt"
RUN_FILE = "run.json"
MODEL_FILE = "model.int8.onnx"
FP32_FILE = "model.fp32.onnx"  # the prepared FP32 model the INT8 model was made from (when preparation ran)
STAGING = ".staging"
WORK = ".work"  # OUT/.work: what a run needs while it lasts (chunk checkpoints, the prepared model)


def write_json(data: dict, path: Path) -> None:
    """`data` as strict JSON (what every reader parses): a float that is NaN or infinite, a metric of outputs
    that are not finite, is written as null."""
    path.write_text(json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


STEM_CHARS = 120  # a run id must stay a valid file name (255 bytes) whatever the model's file name


def new_run_id(model: Path | str, method: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stem = Path(model).stem.encode()[:STEM_CHARS].decode(errors="ignore")  # a path or a URL
    return f"{stem}-{method}-{stamp}-{secrets.token_hex(3)}"


def check_writable(folder: Path, option: str) -> None:
    """InputError unless `folder` exists as a writable directory or could be created."""
    existing = _first_existing(folder)
    if not existing.is_dir():
        msg = f"{option} {folder}: {existing} is a file, not a directory; choose a directory for results"
        raise InputError(msg)
    if not os.access(existing, os.W_OK | os.X_OK):
        msg = f"{option} {folder}: {existing} is not writable; choose a directory you can write to"
        raise InputError(msg)


def _first_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


class RunDirectory:
    """Context manager: a temporary run directory, published by `publish()`.

    On any exception (KeyboardInterrupt included) the temporary directory is
    removed, and so are any parent directories this run created.
    """

    def __init__(self, out: Path, run_id: str) -> None:
        self.out = out.absolute()
        self.run_id = run_id
        self.final = self.out / run_id
        self.staging = self.out / STAGING
        self.tmp = self.staging / run_id
        self._created: Path | None = None

    def check(self) -> None:
        """Fail early, before any work, if results could not be written."""
        check_writable(self.out, "--out")
        for inner in (self.staging, self.out / WORK):  # dask-quant's own folders under --out
            if inner.exists() or inner.is_symlink():
                if not inner.is_dir():
                    msg = f"--out {self.out}: {inner} is not a folder; remove it (dask-quant keeps its work there)"
                    raise InputError(msg)
                check_writable(inner, "--out")

    def __enter__(self) -> RunDirectory:
        self.check()
        if not self.out.exists():
            self._created = self.out
            while not self._created.parent.exists():
                self._created = self._created.parent
        for attempt in range(3):
            try:
                self.tmp.mkdir(parents=True)
                break
            except OSError as exc:  # /proc, a dangling symlink, a read-only mount, a full disk
                if isinstance(exc, FileNotFoundError) and attempt < 2 and self.out.is_dir():
                    continue  # a concurrent run removed the empty .staging between two mkdirs
                self.__exit__(type(exc), exc, None)
                msg = f"--out {self.out}: cannot create {self.tmp.parent} ({exc.strerror}); choose another --out"
                raise InputError(msg) from None
        return self

    def publish(self) -> Path:
        if self.final.exists():  # rename would replace an empty directory silently
            msg = f"{self.final} already exists; nothing was overwritten"
            raise FileExistsError(msg)
        self.tmp.rename(self.final)  # atomic on one filesystem
        self._drop_empty_staging()
        return self.final

    def _drop_empty_staging(self) -> None:
        with contextlib.suppress(OSError):  # not empty: another run is staging there
            self.staging.rmdir()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._drop_empty_staging()
        if self._created is None:
            return
        # The folders this run created, from --out up, each only while empty: another run may have put its
        # own work in one since (the zoo's jobs share OUT/runs; rmtree here once removed a sibling's staging).
        folder = self.out
        while folder != self._created.parent:
            try:
                folder.rmdir()
            except OSError:  # not empty, a dangling symlink, or gone: leave it and its parents
                return
            folder = folder.parent
