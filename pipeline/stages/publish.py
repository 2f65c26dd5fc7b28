"""The publish stage: one run directory, complete or not at all.

Everything is written under OUT/.staging/RUN_ID and renamed to OUT/RUN_ID in
one step (pipeline.results.RunDirectory), so readers never see half a run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from dask_quant.pipeline import outputs, records, results
from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.model_files import files_of
from dask_quant.pipeline.report import write_report
from dask_quant.pipeline.selection import left_in_control_flow
from dask_quant.pipeline.stages.prepare import Prepared
from dask_quant.pipeline.stages.quantize import QuantizedModel, tensors_data, write_tensorrt_table
from dask_quant.pipeline.stages.validate import Validation
from dask_quant.tasks.checkpoint import Source
from dask_quant.tasks.digest import model_bytes, model_sha256


def write_run(
    run_dir: results.RunDirectory,
    config: RunConfig,
    prepared: Prepared,
    quantized: QuantizedModel,
    validation: Validation,
    sections: dict,
) -> None:
    """Write every file of the run into its staging folder (`sections`: more of run.json, e.g. cluster, timings)."""
    tmp, run_id = run_dir.tmp, run_dir.run_id
    model = tmp / results.MODEL_FILE
    if not (model.exists() and model.samefile(quantized.path)):
        _copy_model(quantized.path, model, shutil.copyfile)
    calibration = quantized.calibration
    if prepared.prepared:  # a hard link when it can: several methods' runs share one prepared model
        _copy_model(Path(prepared.model.path), tmp / results.FP32_FILE, _link_or_copy)
    outputs.QPARAMS.write(tmp, run_id, quantized.qparams, calibration.stats, quantized.ranges, quantized.quant)
    calibration.save(tmp, run_id)
    if validation.ran:
        names = tuple(name for name, _, _ in validation.by_output())
        outputs.VALIDATION.write(tmp, run_id, validation.per_chunk, names)
        outputs.LAYERS.write(tmp, run_id, validation.layers)
    if config.writes_tensorrt_table:
        write_tensorrt_table(tensors_data(quantized.ranges, calibration.stats), tmp / results.TENSORRT_DIR)
    config = replace(config, quant=quantized.quant, chunk_size=prepared.chunk_size)
    source = prepared.source or prepared.model
    record = {
        "model": {"path": source.path, "sha256": source.sha256, "bytes": model_bytes(config.model)},
        "preparation": {
            "steps": list(prepared.steps),
            "file": results.FP32_FILE if prepared.prepared else None,
            "sha256": prepared.model.sha256 if prepared.prepared else None,
            # Control-flow nodes whose MatMul/Conv/Gemm this run's quantization left FP32.
            "control_flow": list(left_in_control_flow(prepared.proto, quantized.quant)),
        },
        "int8_model": {"file": results.MODEL_FILE, "sha256": model_sha256(model), "bytes": model_bytes(model)},
        "data": {
            "calib": records.data_record(prepared.calib, prepared.chunk_size),
            "val": records.data_record(prepared.val, prepared.chunk_size),
        },
        "tensors_calibrated": len(prepared.tensors),
        "summary": records.summary_record(validation.summary, validation.metric, validation.output),
        "other_outputs": [records.summary_record(stats, metric, name) for name, metric, stats in validation.others],
        "validation_chunks": {
            name: dict(zip(Source.names(), counts, strict=True)) for name, counts in validation.chunks
        },
        "latency": records.latency_record(validation.latency),
        "quantizer_warnings": list(quantized.warnings),
        **sections,
    }
    results.write_json(records.run_record(config, run_id, record), tmp / results.RUN_FILE)
    write_report(tmp)


def _copy_model(source: Path, target: Path, copy) -> None:
    """`source` as `target`, with its external data files beside it under the names the model records."""
    model, *data = files_of(source)
    copy(model, target)
    for file in data:
        copy(file, target.parent / file.name)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(source, target)


def publish(
    out: Path,
    config: RunConfig,
    prepared: Prepared,
    quantized: QuantizedModel,
    validation: Validation,
    sections: dict | None = None,
) -> Path:
    """Publish one run directory under `out` from the stages' results; returns its path.

    The INT8 model is copied from `quantized.path`; nothing is visible under
    `out` until every file is written. It must pass the gate first
    (pipeline.gate, run here in this process): InputError otherwise.
    """
    from dask_quant.pipeline.gate import check_quantized

    check_quantized(config, prepared, quantized)
    run_dir = results.RunDirectory(Path(out), results.new_run_id(config.model, quantized.quant.label))
    with run_dir:
        write_run(run_dir, config, prepared, quantized, validation, sections or {})
        return run_dir.publish()
