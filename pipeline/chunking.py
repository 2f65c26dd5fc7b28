"""--chunk-size auto: rows per task from the model's activations and the workers' memory.

A task holds its chunk's activations at once (the range pass runs the whole
chunk through ONNX Runtime), so rows per chunk follow the memory a worker
thread has. The estimate is the sum of every activation of one row, from the
shapes preparation infers: an upper bound (ONNX Runtime reuses buffers), set
against a quarter of a thread's memory, as sessions, the data and Dask itself
need the rest. Results do not depend on it: parameters are bit-identical for
any chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The most rows auto chooses, and the size without activation shapes or a memory limit: enough rows
# that a task's fixed cost is small, few enough that a small set still makes tasks for every worker.
MAX_ROWS = 64
MEMORY_SHARE = 0.25
# The share of a worker's memory its cached ONNX Runtime sessions may hold (tasks.sessions): at least the
# FP32 and INT8 sessions one validation pass runs together; the last pass's go first.
SESSION_SHARE = 0.3


def activation_bytes_per_row(proto) -> int | None:
    """The bytes of every activation (value_info and outputs) for one sample, symbolic dims taken as 1
    (the batch); None when the graph carries no shapes (preparation did not run or failed)."""
    from onnx import helper

    values = [*proto.graph.value_info, *proto.graph.output]
    shaped = [v for v in values if v.type.tensor_type.HasField("shape")]
    if not proto.graph.value_info or not shaped:
        return None
    total = 0
    for value in shaped:
        tensor = value.type.tensor_type
        try:
            item = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        except (KeyError, TypeError, ValueError):
            continue  # a type numpy has no name for: not a float activation we would hold
        total += int(np.prod([d.dim_value for d in tensor.shape.dim if d.HasField("dim_value")], dtype=np.int64)) * item
    return total


def thread_memory(client) -> int | None:
    """The least memory limit per worker thread over the cluster's workers (None: no worker has one)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    limits = [w["memory_limit"] / max(1, w.get("nthreads", 1)) for w in workers if w.get("memory_limit")]
    return int(min(limits)) if limits else None


@dataclass(frozen=True)
class AutoChunk:
    """The rows auto chose, and what from (run.json's `chunking`)."""

    rows: int
    row_bytes: int | None
    thread_memory: int | None

    def describe(self) -> str:
        if self.row_bytes is None:
            return f"chunk size {self.rows} rows (auto: the model's activation shapes are not known)"
        if self.thread_memory is None:
            return f"chunk size {self.rows} rows (auto: the workers have no memory limit)"
        per_row = f"{self.row_bytes / 2**20:.1f} MiB" if self.row_bytes >= 2**20 else f"{self.row_bytes >> 10} KiB"
        return (
            f"chunk size {self.rows} rows (auto: ~{per_row} of activations per row, "
            f"{self.thread_memory / 2**20:.0f} MiB per worker thread)"
        )

    def record(self) -> dict:
        return {"auto": True, "rows": self.rows, "row_bytes": self.row_bytes, "thread_memory": self.thread_memory}


def auto_chunk(row_bytes: int | None, memory: int | None, fixed_batch: int | None = None) -> AutoChunk:
    """Rows per chunk for `row_bytes` of activations per row and `memory` bytes per worker thread: at most
    MAX_ROWS (rounded up to a multiple of a batch the model fixes, as the fixed default was), else as many
    whole batches as fit, at least one."""
    unit = fixed_batch or 1
    fitting = int(memory * MEMORY_SHARE // row_bytes) if row_bytes and memory else MAX_ROWS
    if fitting >= MAX_ROWS:
        return AutoChunk(-(-MAX_ROWS // unit) * unit, row_bytes, memory)
    return AutoChunk(max(unit, fitting // unit * unit), row_bytes, memory)


def budget_sessions(client) -> None:
    """Bound the sessions each worker caches to SESSION_SHARE of its memory limit (a worker that joins
    later keeps tasks.sessions' bound on their count only)."""
    client.run(_set_budget)


def _set_budget(dask_worker) -> None:
    from dask_quant.tasks.sessions import set_session_budget

    limit = dask_worker.memory_manager.memory_limit
    set_session_budget(int(limit * SESSION_SHARE) if limit else None)
