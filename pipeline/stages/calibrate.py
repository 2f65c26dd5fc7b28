"""The calibrate stage: pass 1 (exact ranges) and, when a method asks, pass 2
(histograms on fixed global edges), over the cluster, as one immutable value.

A Calibration holds statistics only; the range each method picks is a pure
function of it and a QuantConfig (`pipeline.ranges.activation_ranges`), so
one calibration serves every method and option it has the histograms for.
It is saved into a run directory as Parquet and loaded back without any
cluster pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dask_quant.pipeline.compute import compute
from dask_quant.pipeline.config import QuantConfig
from dask_quant.pipeline.gptq import GptqWeights, gptq_weights
from dask_quant.pipeline.graph import calibration_graph, histogram_graph
from dask_quant.pipeline.outputs import CALIBRATION, HISTOGRAMS
from dask_quant.pipeline.progress import Progress
from dask_quant.pipeline.ranges import activation_ranges, histogram_specs
from dask_quant.pipeline.results import FP32_FILE
from dask_quant.pipeline.stages.prepare import Prepared, dataset_chunks
from dask_quant.tasks.checkpoint import Checkpoints
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.histogram import Histogram, Histograms, HistogramSpec
from dask_quant.tasks.range_stats import RangeStats, TensorRange
from dask_quant.tasks.sessions import ModelRef


@dataclass(frozen=True)
class Calibration:
    """Merged statistics of one model over one calibration set.

    `stats`: the exact observed range of every calibrated tensor;
    `histograms`: integer histograms on global edges (None: no histogram method asked);
    `model`: the FP32 model they describe (path and sha256);
    `gptq`: weight-only GPTQ's solved nodes per (bits, block size) asked (pipeline.gptq). They are
    parameters, not statistics, but solved where the Gram matrices they come from were merged, which are
    too large to bring to the client; they are not saved with the rest.
    """

    model: ModelRef
    stats: RangeStats
    histograms: Histograms | None = None
    gptq: tuple[GptqWeights, ...] = ()

    def gptq_weights(self, quant: QuantConfig) -> GptqWeights:
        """The solved nodes for `quant` (InputError when this calibration has none for it)."""
        found = [w for w in self.gptq if (w.bits, w.block_size) == (quant.bits, quant.block_size)]
        if not found:
            msg = (
                f"this calibration has no GPTQ solve for --bits {quant.bits} --block-size {quant.block_size}; "
                "calibrate with that configuration"
            )
            raise InputError(msg)
        return found[0]

    def ranges(self, quant: QuantConfig) -> dict[str, tuple[float, float]]:
        """The (low, high) range `quant`'s method picks for every calibrated activation."""
        return activation_ranges(self.stats, self.histograms, quant)

    def for_method(self, quant: QuantConfig) -> Calibration:
        """Only the histograms `quant`'s method reads (what a run of that method saves)."""
        if self.histograms is None:
            return self
        wanted = [self.histograms.find(spec) for spec in histogram_specs(self.stats, quant)]
        kept = [h for h in wanted if h is not None]
        return replace(self, histograms=Histograms.of(kept) if kept else None)

    def save(self, folder: Path, run_id: str = "") -> None:
        """calibration.parquet (and histograms.parquet when there are histograms) in `folder`."""
        metadata = {"model_path": self.model.path, "model_sha256": self.model.sha256}
        CALIBRATION.write(folder, run_id, self.stats, metadata=metadata)
        if self.histograms is not None:
            HISTOGRAMS.write(folder, run_id, self.histograms)

    @classmethod
    def load(cls, folder: Path) -> Calibration:
        """The Calibration a run saved in `folder`; InputError if the files are missing or malformed."""
        folder = Path(folder)
        table, metadata = CALIBRATION.read(folder)
        try:
            model = ModelRef(metadata["model_path"], metadata["model_sha256"])
            if (folder / FP32_FILE).is_file():  # a run keeps the prepared model it was calibrated on
                model = ModelRef(str((folder / FP32_FILE).absolute()), model.sha256)
            stats = RangeStats(
                tuple(
                    sorted(
                        (r["tensor"], TensorRange(r["observed_min"], r["observed_max"], r["elements"], r["dtype"]))
                        for r in table.to_pylist()
                    )
                )
            )
        except (KeyError, TypeError) as exc:
            msg = f"{folder / CALIBRATION.name}: not a calibration dask-quant wrote ({exc!r} missing or wrong)"
            raise InputError(msg) from None
        histograms = None
        if (folder / HISTOGRAMS.name).exists():
            rows, _ = HISTOGRAMS.read(folder)
            histograms = Histograms.of(_histogram(row, folder) for row in rows.to_pylist())
        return cls(model, stats, histograms)


def _histogram(row: dict, folder: Path) -> Histogram:
    import numpy as np

    spec = HistogramSpec(row["tensor"], row["low"], row["high"], row["bins"], row["absolute"])
    counts = np.asarray(row["counts"], dtype=np.int64)
    if counts.shape != (spec.bins,) or (counts < 0).any():
        msg = f"{folder / HISTOGRAMS.name}: the histogram of {spec.tensor!r} does not have {spec.bins} counts"
        raise InputError(msg)
    return Histogram.of(spec, counts)


def calibrate(
    prepared: Prepared,
    client,
    quants: Sequence[QuantConfig] = (QuantConfig(),),
    *,
    chunk_size: int = 64,
    split_every: int = 8,
    checkpoints: Checkpoints | None = None,
    log: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
) -> Calibration:
    """Calibrate `prepared`'s model on its calibration data over `client`'s workers.

    Pass 1 runs once (none when no scheme of `quants` reads statistics: an
    empty Calibration); weight-only GPTQ's own two passes and solve run once
    for all of its entries (pipeline.gptq); pass 2 runs once if any of `quants` uses histograms,
    with every histogram they read (a method's range search then needs no
    data). `client` is the caller's and is never closed here. With
    `checkpoints`, every chunk's statistics are kept on disk (and reused with
    resume), so an interrupted run can pick up where it stopped.
    """
    gptq = _gptq(prepared, client, quants, chunk_size, split_every, log, progress)
    if not any(quant.calibrated for quant in quants):
        if not gptq:
            log(f"no calibration pass: --scheme {quants[0].scheme.value} reads no activation statistics")
        return Calibration(prepared.model, RangeStats(), gptq=gptq)
    chunks = dataset_chunks(prepared.calib, chunk_size)
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    log(f"calibrating {len(prepared.tensors)} tensors over {len(chunks)} chunks on {workers} workers")
    graph = calibration_graph(chunks, prepared.model, prepared.tensors, split_every, checkpoints)
    (stats,) = compute(client, [graph], "pass 1 (ranges)", progress)
    specs = {spec.key: spec for quant in quants for spec in histogram_specs(stats, quant)}
    if not specs:
        return Calibration(prepared.model, stats, gptq=gptq)
    ordered = tuple(specs[key] for key in sorted(specs))
    tensors = len({spec.tensor for spec in ordered})
    log(f"pass 2: {len(ordered)} histograms of {tensors} tensors")
    graph = histogram_graph(chunks, prepared.model, prepared.tensors, ordered, split_every, checkpoints)
    (histograms,) = compute(client, [graph], "pass 2 (histograms)", progress)
    return Calibration(prepared.model, stats, histograms, gptq)


def _gptq(prepared, client, quants, chunk_size, split_every, log, progress) -> tuple[GptqWeights, ...]:
    """GPTQ's solved nodes for every (bits, block size) the GPTQ entries of `quants` ask, in one pair of passes;
    the nodes every one of them excludes are not solved (each skips its own when its model is written)."""
    asking = [quant for quant in quants if quant.uses_grams]
    if not asking:
        return ()
    shapes = tuple(dict.fromkeys((quant.bits, quant.block_size) for quant in asking))
    excluded = set.intersection(*(set(quant.exclude_nodes) for quant in asking))
    op_types = () if any(not quant.op_types for quant in asking) else {t for q in asking for t in q.op_types}
    return gptq_weights(
        prepared, client, shapes, tuple(sorted(excluded)), tuple(sorted(op_types)), chunk_size, split_every, log,
        progress,
    )  # fmt: skip
