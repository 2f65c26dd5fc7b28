"""Calibration on the cluster: pass 1 (exact ranges), and for histogram methods
pass 2 (histograms on fixed edges) and the per-tensor range search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import RunConfig
from pipeline.graph import calibration_graph, histogram_graph, threshold_graph
from pipeline.prepare import Prepared, dataset_chunks
from pipeline.ranges import histogram_specs, minmax_ranges, threshold_settings
from tasks.checkpoint import Checkpoints
from tasks.histogram import Histograms
from tasks.range_stats import RangeStats


@dataclass(frozen=True)
class Calibration:
    """Exact observed ranges, the histograms (histogram methods only) and the chosen ranges."""

    stats: RangeStats
    histograms: Histograms | None
    ranges: dict[str, tuple[float, float]]


def calibrate(
    client,
    prepared: Prepared,
    config: RunConfig,
    compute: Callable,
    log: Callable[[str], None],
    checkpoints: Checkpoints | None = None,
):
    """Run the passes `config.quant.method` needs; `compute(graph)` runs a graph on `client`.

    With `checkpoints`, every chunk's statistics are also kept on disk (and
    reused with resume), so an interrupted run can pick up where it stopped.
    """
    chunks = dataset_chunks(prepared.calib, config.chunk_size)
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    log(f"calibrating {len(prepared.tensors)} tensors over {len(chunks)} chunks on {workers} workers")
    graph = calibration_graph(chunks, prepared.model, prepared.tensors, config.split_every, checkpoints)
    stats: RangeStats = compute(graph)
    quant = config.quant
    if not quant.uses_histograms:
        return Calibration(stats, None, minmax_ranges(stats))
    specs = histogram_specs(stats, quant)
    log(f"pass 2: {quant.num_bins}-bin histograms of {len(specs)} tensors")
    graph = histogram_graph(chunks, prepared.model, prepared.tensors, specs, config.split_every, checkpoints)
    histograms: Histograms = compute(graph)
    log(f"{quant.method.value} range search for {len(specs)} tensors")
    searches = threshold_graph(histograms, stats, threshold_settings(quant))
    ranges = {name: (low, high) for name, low, high in compute(searches)}
    return Calibration(stats, histograms, ranges)
