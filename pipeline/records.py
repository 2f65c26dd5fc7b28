"""What a run writes: the rows of its Parquet files and its run.json record."""

from __future__ import annotations

import math
import time

from dask_quant.cluster.environment import package_versions
from dask_quant.pipeline.config import RunConfig, config_dict
from dask_quant.pipeline.inputs import DatasetSpec
from dask_quant.pipeline.stages.prepare import dataset_chunks
from dask_quant.tasks.validate import ValidationStats


def data_record(spec: DatasetSpec | None, chunk_size: int) -> dict | None:
    if spec is None:
        return None
    chunks = len(dataset_chunks(spec, chunk_size))  # the one rule that splits rows into chunks
    return {"path": spec.path, "sha256": spec.sha256, "rows": spec.rows, "chunks": chunks, "labels": spec.labels}


def summary_record(stats: ValidationStats | None, metric=None, output: str | None = None) -> dict | None:
    if stats is None:
        return None
    return {
        "metric": metric.value if metric is not None else None,
        "output": output,
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
        "zero_pairs": stats.zero_pairs,
        "collapsed": stats.collapsed,
        "int8_non_finite": stats.int8_non_finite,
    }


def run_record(config: RunConfig, run_id: str, sections: dict) -> dict:
    """run.json: the config, package versions and creation time around the run's own sections."""
    return {
        "run_id": run_id,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config_dict(config),
        "versions": package_versions(),
        **sections,
    }


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
