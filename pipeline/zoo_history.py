"""The zoo's history: an append-only Parquet dataset, one row per model x method x night.

    OUT/history/date=YYYY-MM-DD/part-ZOO_RUN_ID.parquet

Hive-partitioned by night, so pandas, DuckDB (`read_parquet('OUT/history/*/*.parquet',
hive_partitioning=true)`) and `pyarrow.dataset` read it as one table. A zoo run
adds one file, written to a temporary name and renamed, and never rewrites
another; runs on one output folder take turns (pipeline.zoo holds a lock), so
two at once cannot both append the same night's rows.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from dask_quant.tasks.errors import InputError

HISTORY = "history"
PARTITION = "date"
# (column, pyarrow type name): the schema, written explicitly so every night's file has the same one.
COLUMNS = (
    ("model", "string"),
    ("method", "string"),
    ("status", "string"),  # ok | error
    ("reused", "bool"),  # the key had a good result already: not recomputed
    ("regression", "bool"),
    ("nondeterministic", "bool"),  # same key as the last good result, different results: must never happen
    ("lead", "string"),
    ("lead_value", "float64"),
    ("previous_lead_value", "float64"),
    ("lead_change", "float64"),  # this night's lead metric minus the last good night's
    ("mean_cosine", "float64"),
    ("agreement", "float64"),
    ("fp32_accuracy", "float64"),
    ("int8_accuracy", "float64"),
    ("sqnr_db", "float64"),
    ("worst_layer", "string"),
    ("worst_layer_sqnr_db", "float64"),
    ("key", "string"),
    ("key_parts", "string"),  # JSON: the digest of each part of the key (model, data, config, versions)
    ("changed", "string"),  # JSON list: the parts of the key that differ from the last good result's
    ("moved_tensors", "string"),  # JSON list of {tensor, scale, previous_scale, ...}, largest move first
    ("regressed_layers", "string"),  # JSON list of {tensor, sqnr_db, previous_sqnr_db}
    ("qparams_sha256", "string"),
    ("versions", "string"),  # JSON
    ("error", "string"),
    ("duration_s", "float64"),
    ("run_dir", "string"),
    ("zoo_run", "string"),
    ("created_utc", "string"),
)


def schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, "bool_" if kind == "bool" else kind)()) for name, kind in COLUMNS])


def history_dir(out: Path) -> Path:
    return Path(out) / HISTORY


def read_history(out: Path) -> list[dict]:
    """Every row so far (with its `date`), oldest first; InputError naming a file that is not a history part."""
    import pyarrow.parquet as pq

    folder = history_dir(out)
    rows = []
    for part in sorted(folder.glob(f"{PARTITION}=*/part-*.parquet")):
        try:
            table = pq.read_table(part, schema=schema())
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            msg = (
                f"{part}: not a readable zoo history file ({str(exc).splitlines()[0][:200]}); move it out of "
                f"{folder} (the other nights are intact)"
            )
            raise InputError(msg) from None
        night = part.parent.name.split("=", 1)[1]
        rows += [{PARTITION: night, **row} for row in table.to_pylist()]
    return sorted(rows, key=lambda row: (row["created_utc"] or "", row[PARTITION]))


def broken(row: dict) -> bool:
    """Whether a history row's INT8 model was broken (its lead value NaN: pipeline.target.metric_value)."""
    value = row.get("lead_value")
    return value is not None and math.isnan(value)


def last_good(history: list[dict], model: str, method: str, key: str | None = None) -> dict | None:
    """The latest good row of (model, method) whose run directory still exists: with `key`, the latest with
    that key (to reuse: the same inputs give the same result, a broken one too, which alerts again); without,
    the latest whose INT8 model was not broken (to compare with: a broken night is no baseline)."""
    for row in reversed(history):
        if row["model"] != model or row["method"] != method or row["status"] != "ok":
            continue
        if key is None and broken(row):
            continue
        if key is not None and row["key"] != key:
            continue
        if key is not None and not (Path(row["run_dir"]) / "run.json").is_file():
            continue  # its files are gone: run it again
        return row
    return None


def append_night(out: Path, night: str, zoo_run: str, rows: list[dict]) -> Path | None:
    """Add `rows` as one new file of the `night` partition (nothing when there are none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        return None
    folder = history_dir(out) / f"{PARTITION}={night}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"part-{zoo_run}.parquet"
    if target.exists():
        msg = f"{target} exists already: a zoo run id was used twice"
        raise InputError(msg)
    table = pa.Table.from_pylist([{name: row.get(name) for name, _ in COLUMNS} for row in rows], schema=schema())
    temporary = folder / f".part-{zoo_run}.parquet.tmp"
    pq.write_table(table, temporary)
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    temporary.rename(target)  # readers glob part-*.parquet: they never see a half-written file
    return target
