"""Run directories and their files: explicit Parquet schemas, atomic publication.

A run is written into `OUT/.staging/RUN_ID/` and renamed to `OUT/RUN_ID/`
only when complete: a failed or interrupted run leaves nothing behind, and
earlier runs are never touched. Staging two levels down keeps unfinished files
out of globs such as `OUT/*/validation.parquet`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from types import TracebackType

from tasks.errors import InputError

QPARAMS_FILE = "qparams.parquet"
VALIDATION_FILE = "validation.parquet"
HISTOGRAMS_FILE = "histograms.parquet"
LAYERS_FILE = "layers.parquet"
TENSORRT_DIR = "tensorrt"
RUN_FILE = "run.json"
MODEL_FILE = "model.int8.onnx"
STAGING = ".staging"


def qparams_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("tensor", pa.string()),
            ("kind", pa.string()),
            ("rmin", pa.float32()),
            ("rmax", pa.float32()),
            ("observed_min", pa.float32()),
            ("observed_max", pa.float32()),
            ("elements", pa.int64()),
            ("scale", pa.float32()),
            ("zero_point", pa.int32()),
            ("channel_scales", pa.list_(pa.float32())),
            ("channel_zero_points", pa.list_(pa.int32())),
            ("axis", pa.int32()),
            ("dtype", pa.string()),
            ("method", pa.string()),
            ("symmetric", pa.bool_()),
            ("percentile", pa.float64()),
            ("num_bins", pa.int32()),
            ("num_quantized_bins", pa.int32()),
        ]
    )


def layers_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("tensor", pa.string()),
            ("op_type", pa.string()),
            ("node", pa.string()),
            ("sqnr_db", pa.float64()),
            ("cosine", pa.float64()),
            ("max_abs_error", pa.float64()),
            ("samples", pa.int64()),
            ("elements", pa.int64()),
            ("hist_edges", pa.list_(pa.float32())),
            ("hist_counts", pa.list_(pa.int64())),
        ]
    )


def histograms_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("tensor", pa.string()),
            ("absolute", pa.bool_()),
            ("bin_edges", pa.list_(pa.float32())),
            ("counts", pa.list_(pa.int64())),
        ]
    )


def validation_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("chunk_index", pa.int32()),
            ("row_start", pa.int64()),
            ("row_stop", pa.int64()),
            ("samples", pa.int64()),
            ("labelled", pa.int64()),
            ("fp32_correct", pa.int64()),
            ("int8_correct", pa.int64()),
            ("top1_agree", pa.int64()),
            ("max_abs_error", pa.float64()),
            ("mean_cosine", pa.float64()),
            ("min_cosine", pa.float64()),
            ("elements", pa.int64()),
            ("squared_error", pa.float64()),
            ("signal", pa.float64()),
            ("neighbour_agree", pa.int64()),
            ("neighbour_queries", pa.int64()),
        ]
    )


def write_parquet(rows: list[dict], schema, path: Path, run_id: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"run_id": run_id, **row} for row in rows], schema=schema)
    pq.write_table(table, path)


def write_json(data: dict, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def new_run_id(model: Path) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{model.stem}-{stamp}-{secrets.token_hex(3)}"


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
        existing = _first_existing(self.out)
        if not existing.is_dir():
            msg = f"--out {self.out}: {existing} is a file, not a directory; choose a directory for results"
            raise InputError(msg)
        if not os.access(existing, os.W_OK | os.X_OK):
            msg = f"--out {self.out}: {existing} is not writable; choose a directory you can write to"
            raise InputError(msg)

    def __enter__(self) -> RunDirectory:
        self.check()
        if not self.out.exists():
            self._created = self.out
            while not self._created.parent.exists():
                self._created = self._created.parent
        self.tmp.mkdir(parents=True)
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
        if self._created is not None and not any(self.out.iterdir()):
            shutil.rmtree(self._created, ignore_errors=True)
