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
from pipeline.config import Metric, RunConfig
from pipeline.failures import killed_worker_message
from pipeline.graph import layer_graph, validation_graph
from pipeline.layers import layer_rows, quantized_layers, report_specs
from pipeline.metrics import ANCHORS, resolve_metric
from pipeline.prepare import Prepared, dataset_chunks, prepare
from pipeline.qparams import QParam, qparam_rows, read_qparams
from pipeline.quantize import tensors_data, write_quantized_model, write_tensorrt_table
from pipeline.report import write_report
from pipeline.workarea import WorkArea
from tasks.digest import sha256_file
from tasks.errors import DaskQuantError
from tasks.latency import Latency, measure_latency
from tasks.range_stats import RangeStats
from tasks.sessions import ModelRef
from tasks.validate import ChunkValidation, ValidationStats

LATENCY_REPEATS = 20
TASK_RETRIES = 2


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
    layers: list[dict] = field(default_factory=list)  # per-layer error rows, worst SQNR first
    latency: Latency | None = None
    metric: Metric | None = None  # which validation metrics lead


@dataclass(frozen=True)
class _Computed:
    """What the cluster part of a run produced, before anything is written."""

    calibration: Calibration
    ranges: object  # the TensorsData handed to the quantizer
    qparams: list[QParam]
    warnings: list[str]
    validation: _Validation
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
    from cluster.environment import check_workers

    if client is not None:
        require_workers(client, config.cluster.connect_timeout)
        check_workers(client)
        yield client  # the caller's client: never closed here
        return
    with cluster_client(config.cluster) as own:
        check_workers(own)
        yield own


def _compute(client, graph, progress: bool):
    """Run one graph, or a list of graphs together, on the cluster."""
    # Tasks are pure and idempotent, so a transient failure (a flaky network filesystem) is retried.
    futures = client.compute(graph if isinstance(graph, list) else [graph], retries=TASK_RETRIES)
    if progress:
        from distributed import progress as progress_bar

        progress_bar(futures, multi=False)  # a console bar, erased when done
    results = client.gather(futures)
    return results if isinstance(graph, list) else results[0]


def _has_dashboard(client) -> bool:
    try:
        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class _Validation:
    summary: ValidationStats | None = None
    per_chunk: list[ChunkValidation] = field(default_factory=list)
    layers: list = field(default_factory=list)  # layers.parquet rows, worst SQNR first
    latency: Latency | None = None
    metric: Metric | None = None


def _validate(
    client, prepared: Prepared, config: RunConfig, calibration: Calibration, int8_path: Path, int8_proto, log, progress
):
    """Model outputs and per-layer errors, FP32 against INT8, over the validation chunks."""
    if prepared.val is None:
        return _Validation()
    chunks = dataset_chunks(prepared.val, config.chunk_size)
    int8 = ModelRef(str(int8_path), sha256_file(int8_path))
    metric = resolve_metric(config.metric, prepared.proto, prepared.val.labels is not None)
    anchors = None
    if metric is Metric.EMBEDDING:  # whole chunks, so a fixed batch size still divides them
        anchor_rows = min(prepared.val.rows, config.chunk_size * max(1, ANCHORS // config.chunk_size))
        anchors = dataset_chunks(prepared.val, anchor_rows)[0]
    layers = quantized_layers(prepared.proto, int8_proto, dict(prepared.tensors))
    pairs = tuple((layer.tensor, layer.dequantized, layer.elem_type) for layer in layers)
    log(f"validating FP32 against INT8 over {len(chunks)} chunks, {len(layers)} activations ({metric.value} metrics)")
    graphs = [
        validation_graph(chunks, prepared.model, int8, anchors),
        layer_graph(chunks, prepared.model, int8, pairs, config.split_every, report_specs(calibration.stats, layers)),
    ]
    outputs, errors = _compute(client, graphs, progress)
    # Alone on the cluster once validation is done, so nothing else competes for the core.
    latency = client.submit(measure_latency, chunks[0], prepared.model, int8, LATENCY_REPEATS, pure=False).result()
    per_chunk = sorted(outputs, key=lambda c: c.index)
    summary = reduce(ValidationStats.merge, (c.stats for c in per_chunk), ValidationStats())
    return _Validation(summary, per_chunk, layer_rows(layers, errors), latency, metric)


def _on_cluster(
    client, prepared: Prepared, config: RunConfig, int8_path: Path, log, progress, lap, checkpoints=None
) -> _Computed:
    """Calibrate on the workers, quantize here, validate on the workers."""
    import onnx

    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    dashboard = client.dashboard_link if _has_dashboard(client) else None
    if dashboard:
        log(f"dashboard: {dashboard}")
    calibration = calibrate(client, prepared, config, lambda graph: _compute(client, graph, progress), log, checkpoints)
    lap("calibrate")
    ranges = tensors_data(calibration.ranges, calibration.stats)
    warnings = write_quantized_model(prepared.proto, ranges, config.quant, int8_path)
    int8_proto = onnx.load(str(int8_path))
    qparams = read_qparams(int8_proto)
    lap("quantize")
    validation = _validate(client, prepared, config, calibration, int8_path, int8_proto, log, progress)
    lap("validate")
    return _Computed(calibration, ranges, qparams, warnings, validation, workers, client.scheduler.address, dashboard)


def _write(run_dir: results.RunDirectory, config: RunConfig, prepared: Prepared, done: _Computed, lap) -> None:
    tmp, run_id = run_dir.tmp, run_dir.run_id
    rows = qparam_rows(done.qparams, done.calibration, config.quant)
    results.write_parquet(rows, results.qparams_schema(), tmp / results.QPARAMS_FILE, run_id)
    if prepared.val is not None:
        rows = records.validation_rows(done.validation.per_chunk)
        results.write_parquet(rows, results.validation_schema(), tmp / results.VALIDATION_FILE, run_id)
        results.write_parquet(done.validation.layers, results.layers_schema(), tmp / results.LAYERS_FILE, run_id)
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
        "chunks": records.chunk_record(done.calibration),
        "summary": records.summary_record(done.validation.summary, done.validation.metric),
        "latency": records.latency_record(done.validation.latency),
        "timings_s": lap.timings,
        "quantizer_warnings": done.warnings,
    }
    results.write_json(records.run_record(config, run_id, sections), tmp / results.RUN_FILE)
    write_report(tmp)


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
    from distributed import KilledWorker

    lap = _Laps()
    prepared = prepare(config)
    lap("prepare")
    for spec in (prepared.calib, prepared.val):
        if spec is not None and spec.compressed:
            log(
                f"note: {spec.path} is compressed: each chunk decompresses from the start of its array; "
                "numpy.savez (uncompressed) or .npy files are read directly"
            )
    work = WorkArea(config, prepared)
    if config.resume:
        log(f"resuming: {work.count()} chunk checkpoints found in {work.folder}")
    run_dir = results.RunDirectory(config.out, results.new_run_id(config.model))
    with run_dir:
        int8_path = run_dir.tmp / results.MODEL_FILE
        try:
            with _client_scope(config, client) as dask_client:
                lap("cluster_start")
                checkpoints = work.checkpoints(config.resume)
                done = _on_cluster(dask_client, prepared, config, int8_path, log, progress, lap, checkpoints)
            lap("cluster_stop")
            _write(run_dir, config, prepared, done, lap)
            if interrupted():
                raise KeyboardInterrupt
        except KilledWorker as error:
            work.discard()
            raise DaskQuantError(killed_worker_message(error, config, prepared)) from None
        except DaskQuantError:  # bad input found on a worker: its checkpoints are no use once it is fixed
            work.discard()
            raise
        except BaseException:  # interrupted, the cluster went away, a write failed: keep the work for --resume
            kept = work.count()
            if kept:
                log(f"kept {kept} chunk checkpoints in {work.folder}: run again with --resume to reuse them")
            else:
                work.discard()
            raise
        final = run_dir.publish()  # only after the cluster is down: an interrupt before this publishes nothing
    work.discard()
    sizes = config.model.stat().st_size, (final / results.MODEL_FILE).stat().st_size
    return RunResult(
        run_dir.run_id,
        final,
        done.calibration.stats,
        done.qparams,
        done.validation.summary,
        *sizes,
        done.dashboard,
        done.workers,
        lap.timings,
        done.validation.layers,
        done.validation.latency,
        done.validation.metric,
    )
