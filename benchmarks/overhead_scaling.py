"""Calibration overhead, scaling and scheduler cost per chunk, against a bare ONNX Runtime loop.

    python benchmarks/overhead_scaling.py [--rows 96000] [--chunk-size 4000] [--repeats 3]

Three measurements, each side by side in one run, alternated, medians:
  overhead  dask-quant's pass 1 on one worker with one thread, against a bare
            loop in this process running the same augmented model (ReduceMin,
            ReduceMax, Size per tensor; one thread) over the same chunks and
            merging the same statistics. Goal: within 10%.
  scaling   the same pass on 1 and on 2 single-threaded workers. Goal: 1.7x.
            Beside it, the machine's own ceiling: two bare loops in two
            processes at once, each over half the chunks.
  chunks    5,000 one-row chunks through the statistics tree on 2 workers:
            (wall time - the bare loop's time for the same rows) per chunk,
            and the client's resident memory. Goal: under 5 ms per chunk.
The data is the built-in digits calibration split, tiled to --rows.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, peak_rss_kib, proc_status_kib  # noqa: E402


def prepared_for(data: Path):
    from dask_quant.pipeline.builtin import MODEL, builtin_path
    from dask_quant.pipeline.config import RunConfig
    from dask_quant.pipeline.stages.prepare import prepare

    return prepare(RunConfig(model=builtin_path(MODEL), calib=data, prepare=False))  # the model ORT's loop runs


def tiled_calib(folder: Path, name: str, rows: int) -> Path:
    """The built-in digits calibration split tiled to `rows` rows, saved as folder/name."""
    from dask_quant.pipeline.builtin import CALIB, builtin_path

    calib = np.load(builtin_path(CALIB))
    path = folder / name
    np.save(path, np.resize(calib, (rows, *calib.shape[1:])))
    return path


def bare_loop(prepared, chunk_size: int, part: int = 0, parts: int = 1, ready=None) -> float:
    """Seconds for one thread in this process to compute the same per-chunk statistics and merge them
    (every `parts`-th chunk from `part`; `ready`, a barrier, is waited on once the session is built)."""
    from dask_quant.pipeline.stages.prepare import dataset_chunks
    from dask_quant.tasks.calibrate import chunk_range_stats
    from dask_quant.tasks.merging import merge_all

    chunks = dataset_chunks(prepared.calib, chunk_size)[part::parts]
    chunk_range_stats(chunks[0], prepared.model, prepared.tensors)  # build the session first, as workers cache it
    if ready is not None:
        ready.wait()
    start = time.perf_counter()
    merge_all(chunk_range_stats(c, prepared.model, prepared.tensors) for c in chunks)
    return time.perf_counter() - start


def _half_loop(data: str, chunk_size: int, part: int, ready, results) -> None:
    results.put(bare_loop(prepared_for(Path(data)), chunk_size, part, 2, ready))


def two_bare_loops(data: Path, chunk_size: int) -> float:
    """Wall seconds of two bare loops in two processes at once, each over half the chunks: what
    this machine gives two workers with no Dask at all (they share caches and memory bandwidth)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(3), context.Queue()
    loops = [context.Process(target=_half_loop, args=(str(data), chunk_size, i, ready, results)) for i in (0, 1)]
    for loop in loops:
        loop.start()
    ready.wait()
    start = time.perf_counter()
    for _ in loops:
        results.get()
    wall = time.perf_counter() - start
    for loop in loops:
        loop.join()
    return wall


def cluster_pass(client, prepared, chunk_size: int) -> float:
    from dask_quant.pipeline.graph import calibration_graph
    from dask_quant.pipeline.stages.prepare import dataset_chunks

    chunks = dataset_chunks(prepared.calib, chunk_size)
    client.compute(calibration_graph(chunks[:2], prepared.model, prepared.tensors)).result()  # warm sessions
    start = time.perf_counter()
    client.compute(calibration_graph(chunks, prepared.model, prepared.tensors)).result()
    return time.perf_counter() - start


def cluster(workers: int):
    from distributed import Client

    from dask_quant.cluster.connect import local_cluster

    local = local_cluster(workers, dashboard_address=":0", silence_logs=logging.ERROR)
    return local, Client(local)


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96000)
    parser.add_argument("--chunk-size", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        data = tiled_calib(Path(tmp), "calib.npy", args.rows)
        prepared = prepared_for(data)
        one, two = cluster(1), cluster(2)
        try:
            bare, single, double, pair = [], [], [], []
            for _ in range(args.repeats):
                bare.append(bare_loop(prepared, args.chunk_size))
                single.append(cluster_pass(one[1], prepared, args.chunk_size))
                double.append(cluster_pass(two[1], prepared, args.chunk_size))
                pair.append(two_bare_loops(data, args.chunk_size))
            b, s, d, p = (statistics.median(x) for x in (bare, single, double, pair))
            print(
                f"overhead: {args.rows} rows in chunks of {args.chunk_size}: bare loop {b:.3f} s, "
                f"dask-quant 1 worker {s:.3f} s -> {100 * (s / b - 1):+.1f}% (goal: within 10%)"
            )
            print(f"scaling:  1 worker {s:.3f} s, 2 workers {d:.3f} s -> {s / d:.2f}x (goal: 1.7x)")
            print(
                f"ceiling:  two bare loops in two processes at once, half the chunks each: {p:.3f} s "
                f"-> {b / p:.2f}x over one bare loop: what this machine allows two workers without Dask"
            )
            many = 5000
            tiny = prepared_for(tiled_calib(Path(tmp), "small.npy", many))
            rss_before = proc_status_kib("VmRSS")
            loop = statistics.median(bare_loop(tiny, 1) for _ in range(args.repeats))
            wall = statistics.median(cluster_pass(two[1], tiny, 1) for _ in range(args.repeats))
            per_chunk = (wall - loop / 2) / many  # two workers share the compute
            print(
                f"chunks:   {many} one-row chunks on 2 workers: {wall:.2f} s, bare loop {loop:.2f} s on one core "
                f"-> scheduler overhead {1e3 * per_chunk:.2f} ms per chunk (goal: under 5 ms); "
                f"client RSS {rss_before / 1024:.0f} -> {proc_status_kib('VmRSS') / 1024:.0f} MiB, "
                f"peak {peak_rss_kib() / 1024:.0f} MiB"
            )
        finally:
            for local, client in (one, two):
                client.close()
                local.close()


if __name__ == "__main__":
    main()
