"""The zoo history's rows: one per model x method of a night, measured or reused, compared with the last
good one (pipeline.zoo_compare), and the night's table as the command prints it."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict

from dask_quant.pipeline import zoo_compare, zoo_history, zoo_keys
from dask_quant.pipeline.target import metric_value
from dask_quant.pipeline.zoo_manifest import ZooModel


def note(row: dict) -> str:
    """What a row's alert is, in capitals ("" for none and for a failure, which has its error)."""
    if row["status"] != "ok":
        return ""
    if row["regression"]:
        return "REGRESSION"
    if row["nondeterministic"]:
        return "NON-DETERMINISTIC"
    return "BROKEN" if zoo_history.broken(row) else ""


def is_alert(row: dict) -> bool:
    """A job that failed, regressed, was not deterministic or made a broken INT8 model (a NaN lead value:
    pipeline.target.metric_value), reused or not: what makes `zoo run` exit 1."""
    broken = row["status"] == "ok" and zoo_history.broken(row)
    return row["status"] != "ok" or broken or bool(row["regression"]) or bool(row["nondeterministic"])


BROKEN_WHY = "its INT8 output collapsed or is inf/NaN where FP32's is finite (lead value NaN)"


def rows(job, history: list[dict], zoo_run: str) -> Iterator[dict]:
    """`job`'s rows (a pipeline.zoo job: its model, keys, reused rows, results or error), compared."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    versions = json.dumps(zoo_keys.versions(), sort_keys=True)
    for method in job.model.methods:
        parts = job.parts.get(method.value, {})
        row = {
            "model": job.model.name,
            "method": method.value,
            "lead": job.model.lead,
            "key": zoo_keys.job_key(parts) if parts else None,
            "key_parts": json.dumps(parts, sort_keys=True) if parts else None,
            "versions": versions,
            "zoo_run": zoo_run,
            "created_utc": created,
            "reused": False,
            "regression": False,
            "nondeterministic": False,
            "duration_s": round(job.seconds, 3),
        }
        if method.value in job.reuse:
            earlier = job.reuse[method.value]
            copied = ("lead_value", "mean_cosine", "agreement", "fp32_accuracy", "int8_accuracy", "sqnr_db")
            row |= {name: earlier[name] for name in (*copied, "worst_layer", "worst_layer_sqnr_db", "run_dir")}
            row |= {"status": "ok", "reused": True, "duration_s": 0.0, "qparams_sha256": earlier["qparams_sha256"]}
        elif method.value in job.results:
            row |= {"status": "ok", **_measured(job.results[method.value], job.model.lead)}
        else:
            row |= {"status": "error", "error": job.error or "not run"}
        yield _compared(row, job.model, history)


def _measured(result, lead: str) -> dict:
    """A RunResult's columns of the history."""
    stats = result.validation
    value = metric_value(lead, stats) if stats is not None else None  # NaN where INT8 broke: a fall
    worst = result.layers[0] if result.layers else None
    return {
        "lead_value": _number(value),
        "mean_cosine": _number(stats.mean_cosine) if stats else None,
        "agreement": _number(stats.agreement) if stats else None,
        "fp32_accuracy": _number(stats.fp32_accuracy) if stats else None,
        "int8_accuracy": _number(stats.int8_accuracy) if stats else None,
        "sqnr_db": _number(stats.sqnr_db) if stats else None,
        "worst_layer": worst and worst["tensor"],
        "worst_layer_sqnr_db": worst and _number(worst["sqnr_db"]),
        "run_dir": str(result.run_dir),
        "qparams_sha256": qparams_digest(result.qparams),
    }


def _number(value) -> float | None:
    return None if value is None else float(value)


def qparams_digest(qparams) -> str:
    """A digest of every tensor's quantization parameters (what must not move under an unchanged key)."""
    plain = sorted((asdict(q) for q in qparams), key=lambda q: (q["tensor"], q["kind"]))
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()


def _compared(row: dict, model: ZooModel, history: list[dict]) -> dict:
    """`row` with its comparison to the last good result of the same model and method."""
    previous = zoo_history.last_good(history, row["model"], row["method"])
    if row["status"] != "ok" or previous is None or row["reused"]:
        return row | {"previous_lead_value": previous and previous["lead_value"]}
    value, before = row["lead_value"], previous["lead_value"]
    row["previous_lead_value"] = before
    row["lead_change"] = None if value is None or before is None else value - before
    row["regression"] = zoo_compare.lead_regressed(value, before, model.max_drop)
    layers = zoo_compare.regressed_layers(row["run_dir"], previous["run_dir"], model.max_layer_sqnr_drop_db)
    row["regression"] = row["regression"] or bool(layers)
    row["regressed_layers"] = json.dumps(layers[: zoo_compare.MOVED_SHOWN], default=_json_number)
    same_key = row["key"] == previous["key"]
    parts, previous_parts = json.loads(row["key_parts"]), json.loads(previous["key_parts"])
    changed = [] if same_key else zoo_keys.changed_parts(parts, previous_parts)
    row["changed"] = json.dumps(changed)
    different = row["qparams_sha256"] != previous["qparams_sha256"] or not _same(value, before)
    row["nondeterministic"] = same_key and different
    if different:
        moved = zoo_compare.moved_tensors(row["run_dir"], previous["run_dir"])
        row["moved_tensors"] = json.dumps(moved[: zoo_compare.MOVED_SHOWN], default=_json_number)
    return row


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _json_number(value):
    return str(value)


def already_recorded(row: dict, night: str, history: list[dict]) -> bool:
    """A reused result the same night already holds (a second run that night): no second row."""
    return row["reused"] and any(
        earlier["date"] == night
        and earlier["model"] == row["model"]
        and earlier["method"] == row["method"]
        and earlier["key"] == row["key"]
        and earlier["status"] == "ok"
        for earlier in history
    )


def summary_lines(rows: list[dict] | tuple[dict, ...]) -> list[str]:
    """The night as a table, then one line per alert with what changed."""
    lines = [f"{'model':<16} {'method':<11} {'status':<10} {'lead':<10} {'value':>8} {'change':>9}  note"]
    for row in rows:
        status = "error" if row["status"] != "ok" else "reused" if row["reused"] else "ok"
        value = "" if row.get("lead_value") is None else f"{row['lead_value']:.4f}"
        change = "" if row.get("lead_change") is None else f"{row['lead_change']:+.4f}"
        cells = f"{row['model']:<16} {row['method']:<11} {status:<10} {row['lead']:<10} {value:>8} {change:>9}"
        lines.append(f"{cells}  {note(row)}")
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"{row['model']} {row['method']}: failed: {row['error']}")
        elif note(row) == "BROKEN":
            lines.append(f"{row['model']} {row['method']}: {BROKEN_WHY}; see {row['run_dir']}")
        elif row["regression"] or row["nondeterministic"]:
            changed = json.loads(row.get("changed") or "[]")
            moved = [m["tensor"] for m in json.loads(row.get("moved_tensors") or "[]")]
            layers = [m["tensor"] for m in json.loads(row.get("regressed_layers") or "[]")]
            why = f"changed: {', '.join(changed)}" if changed else "nothing in its key changed"
            lines.append(
                f"{row['model']} {row['method']}: {row['lead']} {row['previous_lead_value']} -> {row['lead_value']}; "
                f"{why}; tensors moved: {', '.join(moved[:5]) or 'none'}"
                + (f"; layers whose SQNR fell: {', '.join(layers[:5])}" if layers else "")
            )
    return lines
