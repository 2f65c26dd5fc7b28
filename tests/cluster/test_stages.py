"""The staged API: one calibration shared by several methods, each run identical to its method alone."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from processes import dask_quant

from dask_quant import pipeline as dq
from dask_quant.pipeline import outputs, results
from dask_quant.pipeline.builtin import CALIB, MODEL, VAL, builtin_path
from dask_quant.pipeline.stages.prepare import dataset_chunks
from dask_quant.tasks.errors import InputError

METHODS = ("minmax", "entropy", "percentile", "mse")


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as c:
        yield c


def _table(run_dir, file=outputs.QPARAMS):
    return pq.read_table(run_dir / file.name).drop(["run_id"])


def _run_dirs(out):
    return {json.loads((d / results.RUN_FILE).read_text())["config"]["quant"]["method"]: d for d in out.iterdir()}


def test_methods_share_one_calibration_and_match_single_method_runs(tmp_path, client):
    shared = dask_quant("run", "--method", ",".join(METHODS), "--out", tmp_path / "shared", "--workers", "2")
    assert shared.returncode == 0, shared.stderr
    assert shared.stderr.count("calibrating") == 1 and shared.stderr.count("pass 2:") == 1
    runs = _run_dirs(tmp_path / "shared")
    assert sorted(runs) == sorted(METHODS)
    config = dq.RunConfig(model=builtin_path(MODEL), calib=builtin_path(CALIB), val=builtin_path(VAL))
    prepared = dq.prepare(replace(config, prepare=False))  # only to count the chunks
    chunks = len(dataset_chunks(prepared.calib, prepared.chunk_size))
    for method, run_dir in runs.items():
        record = json.loads((run_dir / results.RUN_FILE).read_text())["calibration"]
        assert record["methods"] == list(METHODS)
        # Each pass ran once over the chunks, for all four runs together.
        assert record["passes"]["range_stats"] == {"computed": chunks, "reused": 0, "discarded": 0}
        assert record["passes"]["histograms"] == {"computed": chunks, "reused": 0, "discarded": 0}
        alone = dq.run(replace(config, out=tmp_path / method, quant=dq.QuantConfig(method=method)), client=client)
        assert (alone.run_dir / results.MODEL_FILE).read_bytes() == (run_dir / results.MODEL_FILE).read_bytes()
        assert _table(alone.run_dir).equals(_table(run_dir))  # every column but run_id
        # Validated in the same tasks as the other methods (the FP32 model run once for all): the same values.
        for file in (outputs.VALIDATION, outputs.LAYERS):
            assert _table(alone.run_dir, file).equals(_table(run_dir, file)), file.name
        has_histograms = (run_dir / outputs.HISTOGRAMS.name).exists()
        assert has_histograms == (alone.run_dir / outputs.HISTOGRAMS.name).exists() == (method != "minmax")


def test_calibration_saved_in_a_run_quantizes_again_without_a_cluster(tmp_path, client):
    config = dq.RunConfig(
        model=builtin_path(MODEL), calib=builtin_path(CALIB), out=tmp_path, quant=dq.QuantConfig(method="entropy")
    )
    result = dq.run(config, client=client)
    loaded = dq.Calibration.load(result.run_dir)
    assert loaded.stats == result.stats
    again = dq.quantize(loaded, config.quant, tmp_path / "again.onnx")
    assert again.path.read_bytes() == (result.run_dir / results.MODEL_FILE).read_bytes()
    dq.quantize(loaded, dq.QuantConfig(method="mse"), tmp_path / "mse.onnx")  # mse reads the same histograms
    with pytest.raises(InputError, match="no 1024-bin histogram"):
        dq.quantize(loaded, dq.QuantConfig(method="mse", num_bins=1024), tmp_path / "mse.onnx")


def test_a_method_checks_only_the_settings_it_reads():
    assert dq.QuantConfig(method="minmax", num_bins=64).num_bins == 64  # unused: not refused
    with pytest.raises(InputError, match="--num-bins"):
        dq.QuantConfig(method="entropy", num_bins=64)
    with pytest.raises(InputError, match="unknown method 'kl'; choose one of: minmax, entropy, percentile, mse"):
        dq.QuantConfig(method="kl")


def test_the_staged_api_cannot_publish_what_the_command_line_refuses(tmp_path, client):
    from exported import with_constant_weights, with_opset

    old = with_opset(builtin_path(MODEL), tmp_path / "opset12.onnx", 12)
    config = dq.RunConfig(model=old, calib=builtin_path(CALIB), out=tmp_path / "runs", prepare=False)
    with dq.prepare(config) as prepared:
        calibration = dq.calibrate(prepared, client)
        with pytest.raises(InputError, match="opset 12, but per-channel weights need opset 13"):
            dq.quantize(calibration, dq.QuantConfig(), tmp_path / "int8.onnx")
    constant = with_constant_weights(builtin_path(MODEL), tmp_path / "constant.onnx", opset=13)
    config = replace(config, model=constant)
    with dq.prepare(config) as prepared:
        quantized = dq.quantize(dq.calibrate(prepared, client), dq.QuantConfig(), tmp_path / "int8.onnx")
        with pytest.raises(InputError, match="none of the weights of 4"):
            dq.publish(config.out, config, prepared, quantized, dq.Validation())
    assert not (tmp_path / "runs").exists()
