"""One quantization job: check inputs, calibrate, quantize, validate, publish."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

from pipeline import results
from pipeline.config import RunConfig, config_dict
from pipeline.graph import calibration_graph, validation_graph
from pipeline.inputs import DatasetSpec, describe_dataset, load_model, model_inputs
from pipeline.qparams import QParam, qparam_rows, read_qparams
from pipeline.quantize import write_quantized_model
from pipeline.selection import tensors_to_calibrate
from pipeline.versions import package_versions
from tasks.chunks import ChunkRef, chunk_refs
from tasks.digest import sha256_file
from tasks.errors import InputError
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
class Prepared:
    """Everything checked on the client before any work is submitted."""

    proto: object
    model: ModelRef
    tensors: tuple[tuple[str, int], ...]
    calib: DatasetSpec
    val: DatasetSpec | None


def prepare(config: RunConfig) -> Prepared:
    """Check model and data (headers only); raise InputError on the first problem."""
    proto = load_model(config.model)
    if any(init.data_location == 1 for init in proto.graph.initializer):  # TensorProto.EXTERNAL
        msg = (
            f"{config.model}: weights are stored as external data, which dask-quant does not read yet; "
            "save the model as one file"
        )
        raise InputError(msg)
    inputs = model_inputs(proto)
    for spec in inputs:
        if spec.batch is not None and config.chunk_size % spec.batch:
            msg = (
                f"--chunk-size {config.chunk_size} is not a multiple of the batch size {spec.batch} that "
                f"model input {spec.name!r} fixes; pass a multiple of it"
            )
            raise InputError(msg)
    calib = describe_dataset(config.calib, "--calib", inputs, labels_allowed=False)
    val = None if config.val is None else describe_dataset(config.val, "--val", inputs, labels_allowed=True)
    _check_names(proto, config)
    tensors = tensors_to_calibrate(proto, config.quant.op_types)
    if not tensors:
        op_types = ", ".join(config.quant.op_types) or "ORT's default list"
        msg = f"{config.model}: no operator that ONNX Runtime can quantize (op types: {op_types})"
        raise InputError(msg)
    return Prepared(proto, ModelRef(str(config.model.resolve()), sha256_file(config.model)), tensors, calib, val)


def _check_names(proto, config: RunConfig) -> None:
    """--exclude-nodes and --op-types must name things that exist: ORT would ignore a typo silently."""
    from pipeline.selection import default_op_types

    nodes = {node.name for node in proto.graph.node}
    missing = [name for name in config.quant.exclude_nodes if name not in nodes]
    if missing:
        example = ", ".join(sorted(nodes)[:3])
        names = ", ".join(map(repr, missing))
        msg = f"--exclude-nodes: no node named {names} in {config.model} (node names look like: {example})"
        raise InputError(msg)
    known = default_op_types()
    unknown = [op for op in config.quant.op_types if op not in known]
    if unknown:
        msg = (
            f"--op-types: ONNX Runtime cannot quantize {', '.join(map(repr, unknown))}; choose from: {', '.join(known)}"
        )
        raise InputError(msg)


def dataset_chunks(spec: DatasetSpec, chunk_size: int) -> list[ChunkRef]:
    return chunk_refs(spec.path, spec.members, spec.rows, chunk_size, spec.labels)


@contextmanager
def _client_scope(config: RunConfig, client) -> Iterator:
    from cluster.connect import cluster_client, require_workers

    if client is not None:
        require_workers(client, config.cluster.connect_timeout)
        yield client  # the caller's client: never closed here
        return
    with cluster_client(config.cluster) as own:
        yield own


def _worker_count(client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])


def _data_record(spec: DatasetSpec | None, chunk_size: int) -> dict | None:
    if spec is None:
        return None
    chunks = -(-spec.rows // chunk_size)
    return {"path": spec.path, "sha256": spec.sha256, "rows": spec.rows, "chunks": chunks, "labels": spec.labels}


def _summary_record(stats: ValidationStats | None) -> dict | None:
    if stats is None:
        return None
    return {
        "samples": stats.samples,
        "fp32_accuracy": stats.fp32_accuracy,
        "int8_accuracy": stats.int8_accuracy,
        "top1_agreement": stats.agreement,
        "mean_cosine": stats.mean_cosine,
        "max_abs_error": stats.max_abs_error,
    }


def _validation_rows(chunks: list[ChunkValidation]) -> list[dict]:
    return [
        {
            "chunk_index": c.index,
            "row_start": c.start,
            "row_stop": c.stop,
            "samples": c.stats.samples,
            "labelled": c.stats.labelled,
            "fp32_correct": c.stats.fp32_correct,
            "int8_correct": c.stats.int8_correct,
            "top1_agree": c.stats.top1_agree,
            "max_abs_error": c.stats.max_abs_error,
            "mean_cosine": c.stats.mean_cosine,
        }
        for c in chunks
    ]


def _compute(client, graph, progress: bool):
    future = client.compute(graph)
    if progress:
        from distributed import progress as progress_bar

        progress_bar(future, multi=False)  # a console bar, erased when done
    return future.result()


class _Laps:
    """Seconds spent per stage, for run.json."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._clock, 4)
        self._clock = now


def _validate(client, prepared: Prepared, config: RunConfig, int8_path: Path, log, progress: bool):
    if prepared.val is None:
        return None, []
    chunks = dataset_chunks(prepared.val, config.chunk_size)
    log(f"validating FP32 against INT8 over {len(chunks)} chunks")
    graph = validation_graph(chunks, prepared.model, ModelRef(str(int8_path), sha256_file(int8_path)))
    per_chunk = sorted(_compute(client, graph, progress), key=lambda c: c.index)
    return reduce(ValidationStats.merge, (c.stats for c in per_chunk), ValidationStats()), per_chunk


def run(
    config: RunConfig, client=None, log: Callable[[str], None] = lambda _: None, progress: bool = False
) -> RunResult:
    """Quantize `config.model` on a Dask cluster and publish a run directory.

    Pass a distributed `Client` to use an existing cluster (it is never
    closed); otherwise a cluster is started from `config.cluster` and shut
    down at the end. `log` receives one line per stage; `progress` draws
    distributed's console progress bar while each graph runs.
    """
    import onnx

    lap = _Laps()
    prepared = prepare(config)
    lap("prepare")
    run_dir = results.RunDirectory(config.out, results.new_run_id(config.model))
    for spec in (prepared.calib, prepared.val):
        if spec is not None and spec.compressed:
            log(
                f"note: {spec.path} is compressed: each chunk decompresses from the start of its array; "
                "numpy.savez (uncompressed) or .npy files are read directly"
            )
    with run_dir:
        with _client_scope(config, client) as dask_client:
            lap("cluster_start")
            workers = _worker_count(dask_client)
            scheduler = dask_client.scheduler.address
            dashboard = dask_client.dashboard_link if _has_dashboard(dask_client) else None
            if dashboard:
                log(f"dashboard: {dashboard}")
            chunks = dataset_chunks(prepared.calib, config.chunk_size)
            log(f"calibrating {len(prepared.tensors)} tensors over {len(chunks)} chunks on {workers} workers")
            graph = calibration_graph(chunks, prepared.model, prepared.tensors, config.split_every)
            stats: RangeStats = _compute(dask_client, graph, progress)
            lap("calibrate")

            int8_path = run_dir.tmp / results.MODEL_FILE
            warnings = write_quantized_model(prepared.proto, stats, config.quant, int8_path)
            qparams = read_qparams(onnx.load(str(int8_path)))
            lap("quantize")

            validation, per_chunk = _validate(dask_client, prepared, config, int8_path, log, progress)
            lap("validate")
        lap("cluster_stop")

        results.write_parquet(
            qparam_rows(qparams, stats, config.quant.method.value),
            results.qparams_schema(),
            run_dir.tmp / results.QPARAMS_FILE,
            run_dir.run_id,
        )
        if prepared.val is not None:
            results.write_parquet(
                _validation_rows(per_chunk),
                results.validation_schema(),
                run_dir.tmp / results.VALIDATION_FILE,
                run_dir.run_id,
            )
        fp32_bytes, int8_bytes = config.model.stat().st_size, int8_path.stat().st_size
        lap("write")
        results.write_json(
            {
                "run_id": run_dir.run_id,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "config": config_dict(config),
                "versions": package_versions(),
                "model": {"path": prepared.model.path, "sha256": prepared.model.sha256, "bytes": fp32_bytes},
                "int8_model": {"file": results.MODEL_FILE, "sha256": sha256_file(int8_path), "bytes": int8_bytes},
                "data": {
                    "calib": _data_record(prepared.calib, config.chunk_size),
                    "val": _data_record(prepared.val, config.chunk_size),
                },
                "cluster": {"scheduler": scheduler, "workers": workers},
                "tensors_calibrated": len(prepared.tensors),
                "summary": _summary_record(validation),
                "timings_s": lap.timings,
                "quantizer_warnings": warnings,
            },
            run_dir.tmp / results.RUN_FILE,
        )
        final = run_dir.publish()  # only after the cluster is down: an interrupt before this writes nothing
    return RunResult(
        run_dir.run_id, final, stats, qparams, validation, fp32_bytes, int8_bytes, dashboard, workers, lap.timings
    )


def _has_dashboard(client) -> bool:
    try:
        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except (OSError, AttributeError):
        return False
