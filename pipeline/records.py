"""What a run writes: the rows of its Parquet files and its run.json record."""

from __future__ import annotations

import math
import time

from pipeline.config import RunConfig, config_dict
from pipeline.inputs import DatasetSpec
from pipeline.versions import package_versions
from tasks.exact_sum import to_float
from tasks.histogram import Histograms
from tasks.validate import ChunkValidation, ValidationStats


def data_record(spec: DatasetSpec | None, chunk_size: int) -> dict | None:
    if spec is None:
        return None
    chunks = -(-spec.rows // chunk_size)
    return {"path": spec.path, "sha256": spec.sha256, "rows": spec.rows, "chunks": chunks, "labels": spec.labels}


def summary_record(stats: ValidationStats | None, metric=None) -> dict | None:
    if stats is None:
        return None
    return {
        "metric": metric.value if metric is not None else None,
        "samples": stats.samples,
        "fp32_accuracy": stats.fp32_accuracy,
        "int8_accuracy": stats.int8_accuracy,
        "top1_agreement": stats.agreement,
        "mean_cosine": stats.mean_cosine,
        "min_cosine": stats.min_cosine,
        "neighbour_agreement": stats.neighbour_agreement,
        "mse": stats.mse,
        "sqnr_db": None if math.isinf(stats.sqnr_db) else stats.sqnr_db,
        "max_abs_error": stats.max_abs_error,
    }


def validation_rows(chunks: list[ChunkValidation]) -> list[dict]:
    return [
        {
            "chunk_index": c.index,
            "row_start": c.start,
            "row_stop": c.stop,
            "samples": c.stats.samples,
            "labelled": c.stats.labelled,
            "fp32_correct": c.stats.fp32_correct,
            "int8_correct": c.stats.int8_correct,
            "top1_agree": c.stats.top1_agree,
            "max_abs_error": c.stats.max_abs_error,
            "mean_cosine": c.stats.mean_cosine,
            "min_cosine": c.stats.min_cosine,
            "elements": c.stats.elements,
            "squared_error": to_float(c.stats.squared_error),
            "signal": to_float(c.stats.signal),
            "neighbour_agree": c.stats.neighbour_agree,
            "neighbour_queries": c.stats.neighbour_queries,
        }
        for c in chunks
    ]


def run_record(config: RunConfig, run_id: str, sections: dict) -> dict:
    """run.json: the config, package versions and creation time around the run's own sections."""
    return {
        "run_id": run_id,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config_dict(config),
        "versions": package_versions(),
        **sections,
    }


def histogram_rows(histograms: Histograms) -> list[dict]:
    return [
        {
            "tensor": name,
            "absolute": h.spec.absolute,
            "bin_edges": h.spec.edges().tolist(),
            "counts": h.counts.tolist(),
        }
        for name, h in histograms.entries
    ]


def latency_record(latency) -> dict | None:
    if latency is None:
        return None
    return {
        "batch_size": latency.batch_size,
        "repeats": latency.repeats,
        "intra_op_threads": 1,
        "fp32_ms_per_sample": latency.fp32_seconds_per_sample * 1e3,
        "int8_ms_per_sample": latency.int8_seconds_per_sample * 1e3,
        "speedup": latency.speedup,
    }


def chunk_record(calibration) -> dict:
    """How many chunk statistics each pass computed, and how many it read back from checkpoints (--resume)."""
    passes = {"range_stats": calibration.stats}
    if calibration.histograms is not None:
        passes["histograms"] = calibration.histograms
    return {name: {"computed": value.chunks[0], "reused": value.chunks[1]} for name, value in passes.items()}
