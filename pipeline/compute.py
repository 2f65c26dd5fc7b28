"""Run lazy graphs on a cluster: once, with retries, and with progress counted in chunks."""

from __future__ import annotations

from dask_quant.pipeline.graph import ChunkGraph
from dask_quant.pipeline.progress import Progress
from dask_quant.tasks.errors import DaskQuantError, Refused

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


WORKER_DEATHS_PER_WORKER = 4  # as distributed's allowed-failures (3) + 1: what names a chunk that kills workers
NO_WORKERS_S = 60.0  # pending work and not one worker for this long: they die before they can even register


class _Watchdog:
    """Stops a computation whose workers keep dying before any task finishes.

    distributed stops a task that was running on N dying workers (KilledWorker), but a worker that
    dies before it runs anything (a memory limit below what it needs to start) is restarted by its
    nanny forever, and the job would wait forever. Worker addresses change on every restart.
    """

    def __init__(self, client, futures: list) -> None:
        import threading

        self._client, self._futures = client, futures
        self._stop = threading.Event()
        self.deaths = 0
        self.reason: str | None = None
        self._thread = threading.Thread(target=self._watch, name="dask-quant-watchdog", daemon=True)

    def _addresses(self) -> set[str]:
        return set(self._client.scheduler_info(n_workers=-1)["workers"])

    def _watch(self) -> None:
        import time

        try:
            seen = self._addresses()
            limit = WORKER_DEATHS_PER_WORKER * max(1, len(seen))
            empty_since = None
            # scheduler_info lists every worker: every 2 s is cheap on a large cluster, and soon enough
            # for a job that would otherwise wait forever.
            while not self._stop.wait(2.0):
                now = self._addresses()
                self.deaths += len(now - seen)
                seen |= now
                empty_since = None if now else (empty_since or time.monotonic())
                if any(future.status == "finished" for future in self._futures):
                    return  # work gets done: deaths are distributed's to handle (KilledWorker)
                if self.deaths >= limit:
                    self.reason = f"workers died {self.deaths} times before any chunk was done"
                elif empty_since is not None and time.monotonic() - empty_since >= NO_WORKERS_S:
                    self.reason = f"no worker stayed alive for {NO_WORKERS_S:g} s before any chunk was done"
                if self.reason:
                    self._client.cancel(self._futures)
                    return
        except Exception:  # noqa: BLE001  (the client closing under us: nothing left to watch)
            return

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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
    with _Watchdog(client, list(futures)) as watchdog:
        try:
            if progress is not None:
                tracked = futures[len(roots) :] + [
                    f for f, g in zip(results, graphs, strict=True) if g.key in g.chunk_keys
                ]
                del futures
                progress.track(_finished(tracked, set(roots)), len(tracked), label)
                del tracked
            values = client.gather(results)
        except Exception:
            if watchdog.reason is None:
                raise
            msg = (
                f"{label}: {watchdog.reason}; the workers cannot even start (a --memory-limit below what they "
                "need?): raise --memory-limit, or check the workers' logs"
            )
            raise DaskQuantError(msg) from None
    for value in values:  # a chunk's bad data, reported once (its task was not retried)
        for part in value if isinstance(value, list) else [value]:
            if isinstance(part, Refused):
                part.raise_it()
    return values
