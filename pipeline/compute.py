"""Run lazy graphs on a cluster: once, with retries, and with progress counted in chunks."""

from __future__ import annotations

from dask_quant.pipeline.graph import ChunkGraph
from dask_quant.pipeline.progress import Progress
from dask_quant.tasks.errors import Refused

# Tasks are pure and idempotent, so a transient failure (a flaky network filesystem) is retried.
TASK_RETRIES = 2


def _finished(futures, keep: set) -> object:
    """Yield once per finished future; stop at the first failure (gathering the results raises it)."""
    from distributed import as_completed

    for future in as_completed(futures):
        if future.status != "finished":
            return
        yield
        if future.key not in keep:
            future.release()  # the merge tree holds what it still needs; the client need not


def compute(client, graphs: list[ChunkGraph], label: str, progress: Progress | None = None) -> list:
    """The values of `graphs`, computed together on `client` in one submission.

    With `progress`, the stage reports its chunk tasks done of total.
    """
    dsk: dict = {}
    for graph in graphs:
        dsk.update(graph.dask)
    roots = [graph.key for graph in graphs]
    # A one-chunk graph's root is its chunk task: it is counted, and kept for its result.
    chunk_keys = [key for graph in graphs for key in graph.chunk_keys if key not in roots] if progress else []
    futures = client.get(dsk, [*roots, *chunk_keys], sync=False, retries=TASK_RETRIES)
    results = futures[: len(roots)]
    if progress is not None:
        tracked = futures[len(roots) :] + [f for f, g in zip(results, graphs, strict=True) if g.key in g.chunk_keys]
        del futures
        progress.track(_finished(tracked, set(roots)), len(tracked), label)
        del tracked
    values = client.gather(results)
    for value in values:  # a chunk's bad data, reported once (its task was not retried)
        for part in value if isinstance(value, list) else [value]:
            if isinstance(part, Refused):
                part.raise_it()
    return values
