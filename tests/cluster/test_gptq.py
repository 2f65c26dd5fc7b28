"""--scheme weight-only --algorithm gptq: Gram matrices from a distributed pass, a solve task per weight, and
the nodes ONNX Runtime's own GPTQ writes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from distributed import Client, LocalCluster
from onnx import TensorProto, helper, numpy_helper
from processes import dask_quant

from dask_quant import pipeline as dq
from dask_quant.pipeline import results
from dask_quant.pipeline.compute import compute
from dask_quant.pipeline.graph import channel_max_graph, gram_graph
from dask_quant.pipeline.stages.prepare import dataset_chunks
from dask_quant.tasks.gram import grid_exponents

GPTQ = dq.QuantConfig(scheme="weight-only", algorithm="gptq")


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as c:
        yield c


def _chain(path, x: np.ndarray, w0: np.ndarray, w1: np.ndarray):
    """x -> MatMul(w0) -> Relu -> MatMul(w1); the data beside it."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["h"], name="first"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w1"], ["y"], name="last"),
        ],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", x.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", w1.shape[1]])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.savez(path.with_suffix(".npz"), x=x)
    return path, path.with_suffix(".npz")


def _ort_gptq(fp32, data, batch: int, block_size: int = 32):
    """ONNX Runtime's own GPTQ (MatMulNBitsQuantizer with GPTQWeightOnlyQuantConfig) fed `batch` rows a time."""
    from onnxruntime.quantization import CalibrationDataReader

    from dask_quant.pipeline.stages.quantize import _matmul_nbits_module

    nbits = _matmul_nbits_module()
    rows = np.load(data)["x"]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self):
            if self.start >= len(rows):
                return None
            self.start += batch
            return {"x": rows[self.start - batch : self.start]}

    algo = nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader())
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(fp32)), block_size=block_size, algo_config=algo)
    quantizer.process()
    return quantizer.model.model


def _initializers(model) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _unpacked(model, weight: str, rows: int, block: int = 32):
    """The codes [K, N], scales and zero points [blocks, N] of a MatMulNBits weight (4 bits, low nibble first)."""
    inits = _initializers(model)
    q, scales, zp = (inits[f"{weight}{suffix}"] for suffix in (f"_Q4G{block}", "_scale", "_zp"))
    columns, blocks = scales.shape
    codes = np.stack([q & 0xF, q >> 4], axis=-1).reshape(columns, blocks * block)[:, :rows].T
    zeros = np.stack([zp & 0xF, zp >> 4], axis=-1).reshape(columns, -1)[:, :blocks].T
    return codes, scales.T, zeros


def test_the_model_is_gptq_of_each_matmul_inputs_gram_matrix(tmp_path, client):
    """Values that are small multiples of powers of two lie on the Gram grid, so the distributed H must equal
    2/n X^T X computed by numpy from the whole set: in chunks of 7 rows, every code, scale and zero point
    must be what the solve gives for numpy's H of that MatMul's own input."""
    from dask_quant.tasks.gptq import gptq_codes

    rng = np.random.default_rng(0)
    x = (rng.integers(-8, 9, (40, 64)) * 0.25).astype(np.float32)
    w0 = (rng.integers(-2, 3, (64, 64)) * 0.125).astype(np.float32)
    w1 = rng.normal(size=(64, 10)).astype(np.float32)
    model, data = _chain(tmp_path / "grid.onnx", x, w0, w1)
    config = dq.RunConfig(model=model, calib=data, val=data, out=tmp_path / "runs", quant=GPTQ, chunk_size=7)
    result = dq.run(config, client=client)
    ours = onnx.load(str(result.run_dir / results.MODEL_FILE))
    relu = np.maximum(x.astype(np.float64) @ w0, 0)  # exact: small multiples of 1/32
    for weight, values, inputs in (("w0", w0, x.astype(np.float64)), ("w1", w1, relu)):
        codes, scales, zeros = gptq_codes(values, 2 / len(x) * inputs.T @ inputs, 4, 32)
        got = _unpacked(ours, weight, len(values))
        assert np.array_equal(got[0], codes) and np.array_equal(got[2], zeros), weight
        assert np.array_equal(got[1], scales.astype(np.float32)), weight
    onnx.checker.check_model(ours)
    assert [n.op_type for n in ours.graph.node] == ["MatMulNBits", "Relu", "MatMulNBits"]
    assert "-gptq-int4-" in result.run_id and result.validation.mean_cosine > 0.99


def test_the_gram_matrices_and_the_model_do_not_depend_on_workers_or_chunks(tmp_path, client):
    """Random activations (not on any grid): 1 and 3 workers, chunks of 7 and 64 rows; the Grams are the same
    integers, and the models the same bytes."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((150, 64)) * np.geomspace(1e-3, 30, 64)).astype(np.float32)
    model, data = _chain(
        tmp_path / "chain.onnx", x, (rng.normal(size=(64, 96)) / 8).astype(np.float32),
        (rng.normal(size=(96, 10)) / 8).astype(np.float32),
    )  # fmt: skip
    prepared = dq.prepare(dq.RunConfig(model=model, calib=data, val=data, out=tmp_path / "prep", quant=GPTQ))
    wanted = (("x", TensorProto.FLOAT, 64), ("r", TensorProto.FLOAT, 96))
    grams, models = [], []
    with prepared:
        for workers, rows in ((1, 7), (3, 64), (3, 7)):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster, Client(cluster) as c:
                chunks = dataset_chunks(prepared.calib, rows)
                (maxima,) = compute(c, [channel_max_graph(chunks, prepared.model, wanted, 2)], "maxima")
                grids = tuple((name, elem, grid_exponents(maxima.get(name).array())) for name, elem, _ in wanted)
                (gram,) = compute(c, [gram_graph(chunks, prepared.model, grids, 2)], "grams")
                grams.append(gram)
                config = dq.RunConfig(
                    model=model, calib=data, val=data, out=tmp_path / f"runs{workers}-{rows}", quant=GPTQ,
                    chunk_size=rows,
                )  # fmt: skip
                result = dq.run(config, client=c)
                models.append((result.run_dir / results.MODEL_FILE).read_bytes())
    assert grams[0] == grams[1] == grams[2] and grams[0].get("x").rows == 150
    assert models[0] == models[1] == models[2]
    # 96 input channels are 3 blocks of 32 per row: zero points packed row by row (ORT's own GPTQ fails there).
    written = onnx.load_from_string(models[0])
    assert _initializers(written)["w1_zp"].shape == (10, 2)
    assert result.validation.mean_cosine > 0.99


def test_ours_is_as_good_as_onnx_runtimes_gptq_on_float_data(tmp_path, client):
    """Output error against FP32 of ours, ORT's own GPTQ and round to nearest, on correlated float inputs."""
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    # Correlated input channels, as a layer's activations are: where they are independent (H diagonal),
    # GPTQ has no other column to move an error to and rounds as round-to-nearest does.
    x = (rng.standard_normal((160, 24)) @ rng.normal(size=(24, 64))).astype(np.float32)
    w0, w1 = (rng.normal(size=(64, 128)) / 8).astype(np.float32), (rng.normal(size=(128, 10)) / 8).astype(np.float32)
    model, data = _chain(tmp_path / "chain.onnx", x, w0, w1)
    result = dq.run(dq.RunConfig(model=model, calib=data, val=data, out=tmp_path / "runs", quant=GPTQ), client=client)
    fp32 = result.run_dir / results.FP32_FILE
    reference = _ort_gptq(fp32, data, batch=16).SerializeToString()
    rtn_quant = dq.QuantConfig(scheme="weight-only")
    rtn = dq.run(dq.RunConfig(model=model, calib=data, val=data, out=tmp_path / "rtn", quant=rtn_quant), client=client)
    expected = ort.InferenceSession(str(fp32)).run(None, {"x": x})[0]
    errors = {}
    for name, given in (
        ("ours", str(result.run_dir / results.MODEL_FILE)), ("ort", reference),
        ("rtn", str(rtn.run_dir / results.MODEL_FILE)),
    ):  # fmt: skip
        errors[name] = float(np.mean((ort.InferenceSession(given).run(None, {"x": x})[0] - expected) ** 2))
    # What GPTQ is for: less error than rounding to nearest. ORT's own GPTQ does not move any error
    # (tests/tasks/test_gptq_solve.py), so it lands where round to nearest does.
    assert errors["ours"] < errors["rtn"] * 0.8 and errors["ours"] < errors["ort"] * 0.8, errors


def test_weights_in_constant_nodes_are_folded_first_or_refused_in_one_line(tmp_path, client):
    """An exporter's opset-12 model with its weights in Constant nodes: preparation folds them, and GPTQ
    quantizes both MatMuls; with --no-prepare it says what to do."""
    from exported import with_constant_weights

    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 8)) @ rng.normal(size=(8, 64))).astype(np.float32)
    model, data = _chain(
        tmp_path / "chain.onnx", x, (rng.normal(size=(64, 64)) / 8).astype(np.float32),
        (rng.normal(size=(64, 10)) / 8).astype(np.float32),
    )  # fmt: skip
    exported = with_constant_weights(model, tmp_path / "exported.onnx")
    config = dq.RunConfig(model=exported, calib=data, val=data, out=tmp_path / "runs", quant=GPTQ)
    result = dq.run(config, client=client)
    assert [n.op_type for n in onnx.load(str(result.run_dir / results.MODEL_FILE)).graph.node].count("MatMulNBits") == 2
    done = dask_quant(
        "run", exported, "--calib", data, "--no-prepare", "--scheme", "weight-only", "--algorithm", "gptq", "--out",
        tmp_path / "raw",
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "its MatMul weights are Constant nodes: drop --no-prepare" in done.stderr


def _graph_model(path, nodes, inits, width: int = 64, outputs: int = 64):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", outputs])],
        [numpy_helper.from_array(value, name) for name, value in inits.items()],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_unnamed_nodes_and_a_shared_weight_give_a_model_that_loads_and_computes(tmp_path, client):
    """Exporters leave nodes unnamed; ALBERT-like models read one weight in two MatMuls. The unnamed MatMuls are
    replaced where they stand (no node lost), and the shared weight stays FP32 (GPTQ solves a weight for one
    input's Gram matrix), while the weight read once is quantized."""
    import onnxruntime as ort

    rng = np.random.default_rng(6)
    inits = {name: (rng.normal(size=(64, 64)) / 8).astype(np.float32) for name in ("shared", "own")}
    nodes = [
        helper.make_node("MatMul", ["x", "shared"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("MatMul", ["r", "shared"], ["b"]),
        helper.make_node("Tanh", ["b"], ["t"]),
        helper.make_node("MatMul", ["t", "own"], ["y"]),
    ]
    model = _graph_model(tmp_path / "unnamed.onnx", nodes, inits)
    x = (rng.standard_normal((48, 8)) @ rng.normal(size=(8, 64))).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    result = dq.run(
        dq.RunConfig(model=model, calib=tmp_path / "x.npz", val=tmp_path / "x.npz", out=tmp_path / "runs", quant=GPTQ),
        client=client,
    )
    written = onnx.load(str(result.run_dir / results.MODEL_FILE))
    assert [n.op_type for n in written.graph.node] == ["MatMul", "Relu", "MatMul", "Tanh", "MatMulNBits"]
    assert "shared" in _initializers(written) and "own" not in _initializers(written)
    expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(result.run_dir / results.MODEL_FILE)).run(None, {"x": x})[0]
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()
    assert [p.tensor for p in result.qparams] == ["own"]  # named as the FP32 weight, as rtn's are


def test_a_nan_activation_is_refused_in_one_line(tmp_path):
    """Sqrt of a negative input makes NaN inside the model, past the data checks; ORT's ReduceMax can drop a
    NaN, so the Gram pass checks the values it sums itself."""
    rng = np.random.default_rng(8)
    nodes = [
        helper.make_node("Sqrt", ["x"], ["s"], name="sqrt"),
        helper.make_node("MatMul", ["s", "w"], ["y"], name="mm"),
    ]
    model = _graph_model(tmp_path / "sqrt.onnx", nodes, {"w": rng.normal(size=(64, 64)).astype(np.float32)})
    x = np.abs(rng.normal(size=(40, 64))).astype(np.float32)
    x[17, 5] = -1.0  # one NaN, not in a slice's first row
    np.savez(tmp_path / "x.npz", x=x)
    done = dask_quant(
        "run", model, "--calib", tmp_path / "x.npz", "--scheme", "weight-only", "--algorithm", "gptq", "--out",
        tmp_path / "runs",
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "is NaN or infinite" in done.stderr and "need" in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists() or not any(p.name != ".work" for p in (tmp_path / "runs").iterdir())


def test_gptq_refuses_what_it_cannot_do_in_one_line(tmp_path):
    for args, says in (
        (("--bits", "8"), "--algorithm gptq --bits 8: ONNX Runtime's GPTQ writes 4-bit weights only"),
        ((), "has no MatMul with a constant 2-D weight of its own to quantize"),  # the built-in CNN
        (("--op-types", "Conv"), "within --op-types"),
    ):
        done = dask_quant("run", "--scheme", "weight-only", "--algorithm", "gptq", *args, "--out", tmp_path / "runs")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert says in done.stderr, done.stderr
        assert not (tmp_path / "runs").exists() or not any(p.name != ".work" for p in (tmp_path / "runs").iterdir())
