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


def _matmul_chain(path, width: int = 64):
    """x [n, width] -> MatMul -> Relu -> MatMul -> [n, 10]: weights of a few blocks each."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["h"], name="first"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w1"], ["out"], name="last"),
        ],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 10])],
        [
            numpy_helper.from_array((rng.normal(size=(width, width)) / 8).astype(np.float32), "w0"),
            numpy_helper.from_array((rng.normal(size=(width, 10)) / 8).astype(np.float32), "w1"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    data = path.with_suffix(".npz")
    np.savez(data, x=rng.normal(size=(80, width)).astype(np.float32))
    return path, data


def _ort_weight_only(source, path, algorithm: str, bits: int, block_size: int) -> bytes:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if algorithm == "hqq":
        algo = nbits.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits)
    else:  # MatMulNBitsQuantizer's default algorithm: round to nearest per block, asymmetric
        algo = nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, bits=bits)
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=algo)
    quantizer.process()
    quantizer.model.save_model_to_file(str(path))
    return path.read_bytes()


@pytest.mark.parametrize(("algorithm", "bits", "block_size", "prepare"), [
    ("rtn", 4, 32, True), ("rtn", 8, 16, False), ("rtn", 4, 64, False), ("hqq", 4, 32, True),
])  # fmt: skip
def test_weight_only_is_what_matmul_nbits_quantizer_writes(tmp_path, client, algorithm, bits, block_size, prepare):
    model, data = _matmul_chain(tmp_path / "chain.onnx")
    quant = dq.QuantConfig(scheme="weight-only", algorithm=algorithm, bits=bits, block_size=block_size)
    config = dq.RunConfig(model=model, calib=data, val=data, out=tmp_path / "runs", prepare=prepare, quant=quant)
    result = dq.run(config, client=client)
    fp32 = result.run_dir / results.FP32_FILE if prepare else model
    expected = _ort_weight_only(fp32, tmp_path / "ort.onnx", algorithm, bits, block_size)
    assert (result.run_dir / results.MODEL_FILE).read_bytes() == expected
    assert f"-{algorithm}-int{bits}-" in result.run_id
    # Each MatMul weight's block scales ([N, K / block] row by row) and, for round to nearest, integer zero
    # points in [0, 2**bits).
    params = {p.tensor: p for p in result.qparams}
    assert sorted(params) == ["w0", "w1"]
    assert [len(params[w].scale) for w in ("w0", "w1")] == [64 * (64 // block_size), 10 * (64 // block_size)]
    if algorithm == "rtn":
        assert len(params["w0"].zero_point) == len(params["w0"].scale)
        assert 0 <= min(params["w0"].zero_point) and max(params["w0"].zero_point) < 2**bits
    assert result.validation.mean_cosine > 0.98 and result.layers == []  # 4-bit blocks of 64 of random weights: 0.990
    report = (result.run_dir / "report.html").read_text()
    assert "Weight-only quantization keeps every activation in FP32" in report


def test_weight_only_refuses_what_it_cannot_do_in_one_line(tmp_path):
    for args, says in (
        (("--bits", "3"), "--bits 3: MatMulNBits takes 4 or 8 bits per weight"),
        (("--block-size", "24"), "--block-size 24: MatMulNBits takes a power of 2, at least 16"),
        (("--per-tensor",), "--per-tensor does not apply"),
        (("--algorithm", "hqq", "--bits", "8"), "ONNX Runtime's HQQ writes 4-bit weights only"),
        ((), "ONNX Runtime's quantizer inserted no quantization at all"),  # the built-in CNN has no MatMul
    ):
        done = dask_quant("run", "--scheme", "weight-only", *args, "--out", tmp_path / "runs")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert says in done.stderr, done.stderr
        assert not (tmp_path / "runs").exists() or not any(p.name != ".work" for p in (tmp_path / "runs").iterdir())
    done = dask_quant("run", "--bits", "8", "--out", tmp_path / "runs")
    assert done.returncode == 2 and "--bits 8 does not apply: drop it, or use --scheme weight-only" in done.stderr


def test_one_run_sweeps_a_method_and_the_schemes_each_as_it_runs_alone(tmp_path, client):
    """--method minmax,dynamic,weight-only: one calibration (minmax's), three runs, each the model its
    configuration writes alone; --bits goes to weight-only, --symmetric to minmax."""
    model, data = _matmul_chain(tmp_path / "chain.onnx")
    done = dask_quant(
        "run", model, "--calib", data, "--val", data, "--method", "minmax,dynamic,weight-only", "--bits", "8",
        "--symmetric", "--out", tmp_path / "sweep", "--workers", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("calibrating") == 1
    runs = {d.name.split("-")[1]: d for d in (tmp_path / "sweep").iterdir() if not d.name.startswith(".")}
    assert sorted(runs) == ["dynamic", "minmax", "rtn"]
    for entry, quant in (
        ("minmax", dq.QuantConfig(symmetric=True)),
        ("dynamic", dq.QuantConfig(scheme="dynamic")),
        ("rtn", dq.QuantConfig(scheme="weight-only", bits=8)),
    ):
        alone = dq.run(
            dq.RunConfig(model=model, calib=data, val=data, out=tmp_path / entry, quant=quant), client=client
        )
        published = (runs[entry] / results.MODEL_FILE).read_bytes()
        assert published == (alone.run_dir / results.MODEL_FILE).read_bytes(), entry
        record = json.loads((runs[entry] / results.RUN_FILE).read_text())
        assert record["summary"]["mean_cosine"] == pytest.approx(alone.validation.mean_cosine, abs=0), entry


def _three_matmuls(path):
    """x -> MatMul -> Relu -> MatMul (one huge weight per block of each column) -> Relu -> MatMul: 4-bit
    blocks of 32 scaled to the outlier round the middle weight's other values to zero."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    weights = [(rng.normal(size=(64, 64)) / 8).astype(np.float32) for _ in range(3)]
    weights[1][::32] = 40.0
    nodes, names = [], ["x", "a", "a_relu", "b", "b_relu", "y"]
    for i, (source, made) in enumerate(((0, 1), (2, 3), (4, 5))):
        nodes.append(helper.make_node("MatMul", [names[source], f"w{i}"], [names[made]], name=f"mm{i}"))
        if i < 2:
            nodes.append(helper.make_node("Relu", [names[made]], [names[made + 1]], name=f"relu{i}"))
    graph = helper.make_graph(
        nodes, "three", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.savez(path.with_suffix(".npz"), x=rng.normal(size=(96, 64)).astype(np.float32))
    return path, path.with_suffix(".npz")


@pytest.mark.parametrize("scheme", ["weight-only", "dynamic"])
def test_tune_searches_the_schemes_that_calibrate_nothing(tmp_path, client, scheme):
    """The MatMul whose blocks an outlier ruins is the one tune keeps in FP32, under either scheme."""
    from dask_quant.pipeline.target import Target
    from dask_quant.pipeline.tune import TuneConfig, tune

    model, data = _three_matmuls(tmp_path / "three.onnx")
    config = dq.RunConfig(
        model=model, calib=data, val=data, out=tmp_path / "runs", layers="none", quant=dq.QuantConfig(scheme=scheme)
    )
    tuned = tune(config, TuneConfig(Target("cosine", 0.99), ranking_samples=16), client=client)
    assert [g.name for g in tuned.groups] == ["mm0", "mm1", "mm2"]
    assert tuned.search.met and tuned.search.reverted == ("mm1",), tuned.search
    assert tuned.search.baseline.mean_cosine < 0.99 <= tuned.search.final.mean_cosine
    record = json.loads((tuned.run.run_dir / results.RUN_FILE).read_text())
    assert record["tune"]["int8_share"]["MatMul"] == {"int8": 2, "total": 3}
    assert record["config"]["quant"]["scheme"] == scheme
