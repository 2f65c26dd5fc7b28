"""One quantization job: check inputs, calibrate, quantize, validate, publish."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

from pipeline import records, results
from pipeline.calibration import Calibration, calibrate
from pipeline.config import RunConfig
from pipeline.graph import validation_graph
from pipeline.prepare import Prepared, dataset_chunks, prepare
from pipeline.qparams import QParam, qparam_rows, read_qparams
from pipeline.quantize import tensors_data, write_quantized_model, write_tensorrt_table
from tasks.digest import sha256_file
from tasks.range_stats import RangeStats
from tasks.sessions import ModelRef
from tasks.validate import ChunkValidation, ValidationStats


@dataclass(frozen=True)
class RunResult:
    """What a run produced; `run_dir` holds the files."""

    run_id: str
    run_dir: Path
    stats: RangeStats
    qparams: list[QParam]
    validation: ValidationStats | None
    fp32_bytes: int
    int8_bytes: int
    dashboard: str | None
    workers: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Computed:
    """What the cluster part of a run produced, before anything is written."""

    calibration: Calibration
    ranges: object  # the TensorsData handed to the quantizer
    qparams: list[QParam]
    warnings: list[str]
    validation: ValidationStats | None
    per_chunk: list[ChunkValidation]
    workers: int
    scheduler: str
    dashboard: str | None


class _Laps:
    """Seconds spent per stage, for run.json."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._clock, 4)
        self._clock = now


@contextmanager
def _client_scope(config: RunConfig, client) -> Iterator:
    from cluster.connect import cluster_client, require_workers

    if client is not None:
        require_workers(client, config.cluster.connect_timeout)
        yield client  # the caller's client: never closed here
        return
    with cluster_client(config.cluster) as own:
        yield own


def _compute(client, graph, progress: bool):
    future = client.compute(graph)
    if progress:
        from distributed import progress as progress_bar

        progress_bar(future, multi=False)  # a console bar, erased when done
    return future.result()


def _has_dashboard(client) -> bool:
    try:
        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except (OSError, AttributeError):
        return False


def _validate(client, prepared: Prepared, config: RunConfig, int8_path: Path, log, progress: bool):
    if prepared.val is None:
        return None, []
    chunks = dataset_chunks(prepared.val, config.chunk_size)
    log(f"validating FP32 against INT8 over {len(chunks)} chunks")
    graph = validation_graph(chunks, prepared.model, ModelRef(str(int8_path), sha256_file(int8_path)))
    per_chunk = sorted(_compute(client, graph, progress), key=lambda c: c.index)
    return reduce(ValidationStats.merge, (c.stats for c in per_chunk), ValidationStats()), per_chunk


def _on_cluster(client, prepared: Prepared, config: RunConfig, int8_path: Path, log, progress, lap) -> _Computed:
    """Calibrate on the workers, quantize here, validate on the workers."""
    import onnx

    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    dashboard = client.dashboard_link if _has_dashboard(client) else None
    if dashboard:
        log(f"dashboard: {dashboard}")
    calibration = calibrate(client, prepared, config, lambda graph: _compute(client, graph, progress), log)
    lap("calibrate")
    ranges = tensors_data(calibration.ranges, calibration.stats)
    warnings = write_quantized_model(prepared.proto, ranges, config.quant, int8_path)
    qparams = read_qparams(onnx.load(str(int8_path)))
    lap("quantize")
    validation, per_chunk = _validate(client, prepared, config, int8_path, log, progress)
    lap("validate")
    return _Computed(
        calibration, ranges, qparams, warnings, validation, per_chunk, workers, client.scheduler.address, dashboard
    )


def _write(run_dir: results.RunDirectory, config: RunConfig, prepared: Prepared, done: _Computed, lap) -> None:
    tmp, run_id = run_dir.tmp, run_dir.run_id
    rows = qparam_rows(done.qparams, done.calibration, config.quant)
    results.write_parquet(rows, results.qparams_schema(), tmp / results.QPARAMS_FILE, run_id)
    if prepared.val is not None:
        rows = records.validation_rows(done.per_chunk)
        results.write_parquet(rows, results.validation_schema(), tmp / results.VALIDATION_FILE, run_id)
    if done.calibration.histograms is not None:
        rows = records.histogram_rows(done.calibration.histograms)
        results.write_parquet(rows, results.histograms_schema(), tmp / results.HISTOGRAMS_FILE, run_id)
    if config.tensorrt_table:
        write_tensorrt_table(done.ranges, tmp / results.TENSORRT_DIR)
    int8_path = tmp / results.MODEL_FILE
    lap("write")
    sections = {
        "model": {"path": prepared.model.path, "sha256": prepared.model.sha256, "bytes": config.model.stat().st_size},
        "int8_model": {
            "file": results.MODEL_FILE,
            "sha256": sha256_file(int8_path),
            "bytes": int8_path.stat().st_size,
        },
        "data": {
            "calib": records.data_record(prepared.calib, config.chunk_size),
            "val": records.data_record(prepared.val, config.chunk_size),
        },
        "cluster": {"scheduler": done.scheduler, "workers": done.workers},
        "tensors_calibrated": len(prepared.tensors),
        "summary": records.summary_record(done.validation),
        "timings_s": lap.timings,
        "quantizer_warnings": done.warnings,
    }
    results.write_json(records.run_record(config, run_id, sections), tmp / results.RUN_FILE)


def run(
    config: RunConfig,
    client=None,
    log: Callable[[str], None] = lambda _: None,
    progress: bool = False,
    interrupted: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Quantize `config.model` on a Dask cluster and publish a run directory.

    Pass a distributed `Client` to use an existing cluster (it is never
    closed); otherwise a cluster is started from `config.cluster` and shut
    down at the end. `log` receives one line per stage; `progress` draws
    distributed's console progress bar while each graph runs; if
    `interrupted()` is true just before publishing, nothing is published and
    KeyboardInterrupt is raised.
    """
    lap = _Laps()
    prepared = prepare(config)
    lap("prepare")
    for spec in (prepared.calib, prepared.val):
        if spec is not None and spec.compressed:
            log(
                f"note: {spec.path} is compressed: each chunk decompresses from the start of its array; "
                "numpy.savez (uncompressed) or .npy files are read directly"
            )
    run_dir = results.RunDirectory(config.out, results.new_run_id(config.model))
    with run_dir:
        int8_path = run_dir.tmp / results.MODEL_FILE
        with _client_scope(config, client) as dask_client:
            lap("cluster_start")
            done = _on_cluster(dask_client, prepared, config, int8_path, log, progress, lap)
        lap("cluster_stop")
        _write(run_dir, config, prepared, done, lap)
        if interrupted():
            raise KeyboardInterrupt
        final = run_dir.publish()  # only after the cluster is down: an interrupt before this writes nothing
    sizes = config.model.stat().st_size, (final / results.MODEL_FILE).stat().st_size
    return RunResult(
        run_dir.run_id,
        final,
        done.calibration.stats,
        done.qparams,
        done.validation,
        *sizes,
        done.dashboard,
        done.workers,
        lap.timings,
    )
