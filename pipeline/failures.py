"""Cluster failures said in the user's terms: which chunk, which rows, what to do."""

from __future__ import annotations

from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.stages.prepare import Prepared, dataset_chunks
from dask_quant.pipeline.stages.validate import layer_chunks

_VALIDATION_TASKS = ("validate_against", "chunk_outputs", "compare_chunk", "chunk_layer_errors")


def killed_worker_message(error, config: RunConfig, prepared: Prepared) -> str:
    """For distributed's KilledWorker: the chunk whose task took the workers down with it."""
    key = error.task
    name, index = (key[0], key[-1]) if isinstance(key, tuple) else (str(key), None)
    dataset = prepared.val if any(task in name for task in _VALIDATION_TASKS) and prepared.val else prepared.calib
    attempts = error.allowed_failures + 1
    if not isinstance(index, int) and dataset.rows <= config.chunk_size:
        index = 0  # a single chunk: dask fused its tasks, and the key lost the index
    if not isinstance(index, int):
        where = f"task {name}"
    else:
        if "chunk_layer_errors" in name:
            chunk = layer_chunks(dataset, config.chunk_size, prepared.fixed_batch)[index]
        else:
            chunk = dataset_chunks(dataset, config.chunk_size)[index]
        where = f"chunk {index} (rows {chunk.start}..{chunk.stop} of {dataset.path})"
    return (
        f"{where} killed {attempts} workers in a row; a chunk that takes its worker down usually needs more "
        "memory than the worker has: lower --chunk-size or raise --memory-limit"
    )
