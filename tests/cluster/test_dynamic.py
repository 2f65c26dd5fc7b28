"""--scheme dynamic: the model ONNX Runtime's quantize_dynamic writes, byte for byte, validated like a static run."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from exported import token_model, with_constant_weights
from models import build_outlier_mlp, outlier_mlp_data
from processes import dask_quant

from dask_quant import pipeline as dq
from dask_quant.pipeline import outputs, results
from dask_quant.pipeline.builtin import CALIB, MODEL, VAL, builtin_path
from dask_quant.tasks.errors import InputError


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as c:
        yield c


def _ort_dynamic(source, path, per_channel: bool, op_types=None):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source), str(path), op_types_to_quantize=op_types, per_channel=per_channel, reduce_range=False,
        weight_type=QuantType.QInt8,
    )  # fmt: skip
    return path.read_bytes()


@pytest.mark.parametrize("prepare", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_the_builtin_model_is_what_quantize_dynamic_writes(tmp_path, client, prepare, per_channel):
    config = dq.RunConfig(
        model=builtin_path(MODEL), calib=builtin_path(CALIB), val=builtin_path(VAL), out=tmp_path / "runs",
        prepare=prepare, quant=dq.QuantConfig(scheme="dynamic", per_channel=per_channel),
    )  # fmt: skip
    result = dq.run(config, client=client)
    # Against the FP32 model the run quantized: the prepared one it keeps, or the user's own file.
    fp32 = result.run_dir / results.FP32_FILE if prepare else builtin_path(MODEL)
    expected = _ort_dynamic(fp32, tmp_path / "ort.onnx", per_channel)
    assert (result.run_dir / results.MODEL_FILE).read_bytes() == expected
    assert "-dynamic-" in result.run_id
    record = json.loads((result.run_dir / results.RUN_FILE).read_text())
    assert record["config"]["quant"]["scheme"] == "dynamic"
    assert record["calibration"]["passes"]["range_stats"]["computed"] == 0  # no calibration pass
    # Its weights, with their scales, are in qparams.parquet; activations have none ahead of time.
    qparams = pq.read_table(result.run_dir / outputs.QPARAMS.name).to_pylist()
    assert {row["kind"] for row in qparams} == {"weight"} and len(qparams) == 4
    assert any(row["channel_scales"] for row in qparams) == per_channel
    # Validated as a static run is, without a per-layer pass (no activation is quantized ahead of time).
    assert result.validation.samples == 300 and result.validation.int8_accuracy > 0.98
    assert result.layers == [] and result.latency is not None
    assert "no per-layer error to compare" in (result.run_dir / "report.html").read_text()


def test_matmul_and_token_models_are_what_quantize_dynamic_writes(tmp_path, client):
    """A MatMul chain and an int64-token model whose embedding table (Gather) is quantized too."""
    mlp = build_outlier_mlp(tmp_path / "mlp.onnx", hidden_layers=2)
    rows = outlier_mlp_data(tmp_path / "mlp.npz", 96, seed=1, outlier=False)
    tokens = token_model(tmp_path / "tokens.onnx")
    ids = tmp_path / "ids.npz"
    np.savez(ids, ids=np.random.default_rng(3).integers(0, 10, size=(40, 5)).astype(np.int64))
    for model, data in ((mlp, rows), (tokens, ids)):
        config = dq.RunConfig(
            model=model, calib=data, val=data, out=tmp_path / model.stem, prepare=False,
            quant=dq.QuantConfig(scheme="dynamic"),
        )  # fmt: skip
        result = dq.run(config, client=client)
        expected = _ort_dynamic(model, tmp_path / f"{model.stem}.ort.onnx", per_channel=True)
        assert (result.run_dir / results.MODEL_FILE).read_bytes() == expected, model.name
        assert result.validation.mean_cosine > 0.99, model.name
    assert {p.tensor for p in result.qparams} == {"table", "w"}  # the Gather's table and the MatMul's weight


def test_options_that_set_static_ranges_are_refused_with_the_dynamic_scheme(tmp_path):
    with pytest.raises(InputError, match="--scheme dynamic quantizes activations at run time.*--method entropy"):
        dq.QuantConfig(scheme="dynamic", method="entropy")
    with pytest.raises(InputError, match="unknown scheme 'static-ish'; choose one of: static, dynamic"):
        dq.QuantConfig(scheme="static-ish")
    done = dask_quant("run", "--scheme", "dynamic", "--symmetric", "--out", tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--symmetric does not apply: drop it, or use --scheme static" in done.stderr
    assert not any(tmp_path.iterdir())
    model, calib, val = (builtin_path(name) for name in (MODEL, CALIB, VAL))
    tuned = dask_quant(
        "tune", model, "--calib", calib, "--val", val, "--scheme", "dynamic", "--target", "cosine>=0.99", "--out",
        tmp_path,
    )  # fmt: skip
    assert tuned.returncode == 2 and "Traceback" not in tuned.stderr
    assert "--scheme dynamic is not searched yet: quantize with `dask-quant run --scheme dynamic`" in tuned.stderr
    assert not any(tmp_path.iterdir())


def test_weights_in_constant_nodes_are_folded_first_or_refused_in_one_line(tmp_path, client):
    """An exporter's opset-12 model with its weights in Constant nodes: prepared, it quantizes; with
    --no-prepare, quantize_dynamic's ValueError becomes one line, exit 2, nothing written."""
    model = with_constant_weights(builtin_path(MODEL), tmp_path / "constant12.onnx", 12)
    config = dq.RunConfig(
        model=model, calib=builtin_path(CALIB), val=builtin_path(VAL), out=tmp_path / "prepared",
        quant=dq.QuantConfig(scheme="dynamic"),
    )  # fmt: skip
    result = dq.run(config, client=client)
    assert len(result.qparams) == 4 and result.validation.int8_accuracy > 0.98
    done = dask_quant(
        "run", model, "--calib", builtin_path(CALIB), "--scheme", "dynamic", "--no-prepare", "--per-tensor",
        "--out", tmp_path / "raw",
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "quantize_dynamic cannot quantize this model (Expected 0.weight to be an initializer)" in done.stderr
    assert "drop --no-prepare: preparation folds Constant nodes into initializers" in done.stderr
    assert not (tmp_path / "raw").exists()
