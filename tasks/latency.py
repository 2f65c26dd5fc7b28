"""Per-sample latency of the FP32 and INT8 models, measured on a worker."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

from dask_quant.tasks.chunks import ChunkRef, read_feeds
from dask_quant.tasks.sessions import ModelRef, fixed_batch, run_in_batches, session_for

_WARMUP = 3
# Rows timed per run: a serving batch, not a whole chunk. A 64-row chunk of a transformer takes
# about a second per model, so the three repeats a fair median needs would take most of a minute.
BATCH = 8


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


def measure_latency(
    chunk: ChunkRef,
    fp32: ModelRef,
    int8s: tuple[ModelRef, ...],
    repeats: int,
    budget_s: float = 2.0,
    batch: int = BATCH,
) -> tuple[Latency, ...]:
    """Time the FP32 model and each of `int8s` on the first `batch` rows of a chunk (default graph
    optimisations, as deployed); a model that fixes its batch size runs whole batches of it. One Latency
    per INT8 model, all with the same FP32 time.

    Runs take turns (FP32, then each INT8 model) so all see the same machine load;
    the first few rounds only warm up. A large model gets fewer repeats (at least
    3), so timing takes about `budget_s` seconds, not minutes.
    """
    sessions = (session_for(fp32), *(session_for(model) for model in int8s))
    fixed = fixed_batch(sessions[0], chunk.feeding) or 1
    rows = min(chunk.rows, max(fixed, batch - batch % fixed))
    chunk = replace(chunk, stop=chunk.start + rows)
    feeds = read_feeds(chunk)

    def timed_round() -> list[float]:
        durations = []
        for session in sessions:
            start = time.perf_counter()
            run_in_batches(session, None, feeds, chunk.feeding)
            durations.append(time.perf_counter() - start)
        return durations

    round_s = sum(timed_round())  # the first warm-up round also sizes the rest
    for _ in range(min(_WARMUP, max(1, int(budget_s / 4 / round_s))) - 1):
        timed_round()
    times = [timed_round() for _ in range(min(repeats, max(3, int(budget_s / round_s))))]
    fp32_s, *int8_s = (statistics.median(t[i] for t in times) / chunk.rows for i in range(len(sessions)))
    return tuple(Latency(chunk.rows, len(times), fp32_s, seconds) for seconds in int8_s)
