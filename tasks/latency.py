"""Per-sample latency of the FP32 and INT8 models, measured on a worker."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from tasks.chunks import ChunkRef, read_feeds
from tasks.sessions import ModelRef, run_in_batches, session_for

_WARMUP = 3


@dataclass(frozen=True)
class Latency:
    """Median seconds per sample of each model on the same batch, one intra-op thread each."""

    batch_size: int
    repeats: int
    fp32_seconds_per_sample: float
    int8_seconds_per_sample: float

    @property
    def speedup(self) -> float:
        return self.fp32_seconds_per_sample / self.int8_seconds_per_sample


def measure_latency(chunk: ChunkRef, fp32: ModelRef, int8: ModelRef, repeats: int) -> Latency:
    """Time both models on one chunk's rows (default graph optimisations, as deployed).

    Runs alternate FP32 and INT8 so both see the same machine load; the first
    few runs of each only warm up.
    """
    feeds = read_feeds(chunk)
    sessions = (session_for(fp32), session_for(int8))
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(_WARMUP + repeats):
        for session, record in zip(sessions, times, strict=True):
            start = time.perf_counter()
            run_in_batches(session, None, feeds)
            if i >= _WARMUP:
                record.append(time.perf_counter() - start)
    per_sample = [statistics.median(t) / chunk.rows for t in times]
    return Latency(chunk.rows, repeats, per_sample[0], per_sample[1])
