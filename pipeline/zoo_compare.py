"""A zoo result against the last good one of the same model and method: regressions, and what moved.

Parameters are bit-identical for a given key, so a result that differs under
an unchanged key is non-determinism (a bug), and one under a changed key is
explained by the parts that changed and the tensors whose scales moved.
"""

from __future__ import annotations

import math
from pathlib import Path

from dask_quant.pipeline.outputs import LAYERS, QPARAMS

MOVED_SHOWN = 10  # tensors named per row, largest move first


def _table(file, run_dir: str | None) -> list[dict] | None:
    if not run_dir or not Path(run_dir).is_dir():
        return None
    try:
        table, _ = file.read(Path(run_dir))
    except Exception:  # a run folder removed or damaged since: the comparison says less, the row stays  # noqa: BLE001
        return None
    return table.to_pylist()


def moved_tensors(run_dir: str | None, previous_dir: str | None) -> list[dict]:
    """Tensors whose scale or zero point differs between two runs' qparams.parquet, largest relative
    scale change first (per-channel weights: their largest channel change)."""
    now, before = _table(QPARAMS, run_dir), _table(QPARAMS, previous_dir)
    if now is None or before is None:
        return []
    old = {row["tensor"]: row for row in before}
    moved = []
    for row in now:
        prior = old.get(row["tensor"])
        if prior is None:
            moved.append({"tensor": row["tensor"], "change": "new"})
            continue
        scales, prior_scales = _scales(row), _scales(prior)
        points, prior_points = _points(row), _points(prior)
        if scales == prior_scales and points == prior_points:
            continue
        change = max(
            (abs(a - b) / abs(b) if b else math.inf for a, b in zip(scales, prior_scales, strict=False)), default=0.0
        )
        moved.append(
            {
                "tensor": row["tensor"],
                "kind": row["kind"],
                "scale": scales[0] if len(scales) == 1 else None,
                "previous_scale": prior_scales[0] if len(prior_scales) == 1 else None,
                "zero_point": points[0] if len(points) == 1 else None,
                "previous_zero_point": prior_points[0] if len(prior_points) == 1 else None,
                "relative_scale_change": change,
            }
        )
    gone = sorted(set(old) - {row["tensor"] for row in now})
    moved += [{"tensor": name, "change": "gone"} for name in gone]
    return sorted(moved, key=lambda m: (-_size(m), m["tensor"]))


def _size(moved: dict) -> float:
    return math.inf if "change" in moved else moved["relative_scale_change"]


def _scales(row: dict) -> list[float]:
    return list(row["channel_scales"]) if row.get("channel_scales") else [row["scale"]]


def _points(row: dict) -> list[int]:
    return list(row["channel_zero_points"]) if row.get("channel_zero_points") else [row["zero_point"]]


def regressed_layers(run_dir: str | None, previous_dir: str | None, max_drop_db: float | None) -> list[dict]:
    """Quantized tensors whose SQNR fell more than `max_drop_db` since the previous run, largest fall first."""
    if max_drop_db is None:
        return []
    now, before = _table(LAYERS, run_dir), _table(LAYERS, previous_dir)
    if now is None or before is None:
        return []
    old = {row["tensor"]: row["sqnr_db"] for row in before}
    fallen = [
        {"tensor": row["tensor"], "sqnr_db": row["sqnr_db"], "previous_sqnr_db": old[row["tensor"]]}
        for row in now
        if row["tensor"] in old and _drop(old[row["tensor"]], row["sqnr_db"]) > max_drop_db
    ]
    return sorted(fallen, key=lambda r: -_drop(r["previous_sqnr_db"], r["sqnr_db"]))


def _drop(before: float, now: float) -> float:
    if math.isnan(before) or math.isnan(now) or before == now:
        return 0.0
    return before - now  # inf - x = inf: a tensor that was exact and no longer is fell by inf


def lead_regressed(value: float | None, previous: float | None, max_drop: float) -> bool:
    """The lead metric fell by more than `max_drop` (a metric that became NaN has fallen too)."""
    if previous is None or math.isnan(previous):
        return False
    if value is None or math.isnan(value):
        return True
    return previous - value > max_drop
