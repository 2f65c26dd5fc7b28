"""SmoothQuant (--smooth-quant): its statistic is exact for any chunking, and the smoothed model computes
what the original does."""

from __future__ import annotations

import json
from dataclasses import replace

import dask
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from distributed import Client, LocalCluster
from models import load_arrays
from processes import dask_quant

from dask_quant import pipeline as dq
from dask_quant.pipeline import results
from dask_quant.pipeline.graph import channel_max_graph
from dask_quant.pipeline.smoothing import smooth_model, smoothing_scales, smoothing_targets
from dask_quant.pipeline.stages.prepare import dataset_chunks
from dask_quant.tasks.errors import InputError

NAMES = ["image", "extra"]


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as c:
        yield c


def _prepared(residual, tmp_path, **options):
    model, calib, val = residual
    return dq.prepare(dq.RunConfig(model=model, calib=calib, val=val, out=tmp_path, **options))


def _targets(prepared):
    return smoothing_targets(prepared.proto, dict(prepared.tensors))


def _maxima(prepared, chunk_size: int, scheduler):
    targets = _targets(prepared)
    wanted = tuple((t.tensor, t.elem_type, t.channels) for t in targets)
    graph = channel_max_graph(dataset_chunks(prepared.calib, chunk_size), prepared.model, wanted, split_every=2)
    (maxima,) = dask.compute(graph, scheduler=scheduler)
    return maxima


def _activations(model_path, arrays, names):
    """`names` of the model on every row at once, by ORT with the graph as written (as ORT's calibrator runs
    it: fused kernels would round differently), for numpy's reference."""
    proto = onnx.load(str(model_path))
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, arrays), strict=True))


def test_targets_are_the_matmul_and_gemm_inputs_with_their_channels(residual, tmp_path):
    targets = _targets(_prepared(residual, tmp_path))
    assert [(t.channels, len(t.nodes)) for t in targets] == [(38, 1), (12, 1)]  # Concat -> MatMul, Tanh -> Gemm


def test_channel_maxima_are_identical_for_any_chunking_and_equal_numpy(residual, tmp_path, client):
    prepared = _prepared(residual, tmp_path)
    reference = _maxima(prepared, 96, "sync")
    for chunk_size, scheduler in ((7, client.get), (13, "sync"), (40, client.get)):
        maxima = _maxima(prepared, chunk_size, scheduler)
        assert maxima == reference  # every value, bit for bit
        assert maxima.chunks[0] == -(-96 // chunk_size)
    arrays = load_arrays(residual[1], NAMES)
    names = [t.tensor for t in _targets(prepared)]
    for name, values in _activations(prepared.model.path, arrays, names).items():
        expected = np.abs(values.reshape(-1, values.shape[-1])).max(axis=0)
        assert np.array_equal(reference.get(name).array(), expected.astype(np.float64))


@pytest.mark.parametrize("alpha", [0.5, 0.85, 1.0])
def test_smoothed_model_computes_the_original_outputs(residual, tmp_path, alpha):
    prepared = _prepared(residual, tmp_path)
    targets = _targets(prepared)
    smoothed = smooth_model(prepared.proto, targets, _maxima(prepared, 32, "sync"), alpha)
    onnx.checker.check_model(smoothed)
    arrays = load_arrays(residual[2], NAMES)
    original = ort.InferenceSession(prepared.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rewritten = ort.InferenceSession(smoothed.SerializeToString(), providers=["CPUExecutionProvider"])
    expected, got = original.run(None, arrays)[0], rewritten.run(None, arrays)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The activations really changed: their outlier channels moved into the weights.
    before = _activations(prepared.model.path, load_arrays(residual[1], NAMES), [t.tensor for t in targets])
    path = tmp_path / "smoothed.onnx"
    onnx.save(smoothed, str(path))
    after = _activations(path, load_arrays(residual[1], NAMES), [f"{t.tensor}/smoothed" for t in targets])
    for target in targets:
        ratio = np.abs(after[f"{target.tensor}/smoothed"]).max(axis=0) / np.abs(before[target.tensor]).max(axis=0)
        assert np.ptp(ratio) > 0.01  # channel by channel, not one global factor


def test_scales_follow_the_formula_and_leave_dead_channels_alone():
    activation = np.array([8.0, 1.0, 0.0, 4.0, 1e12])
    weight = np.array([2.0, 0.5, 3.0, 0.0, 1e-12])
    scales = smoothing_scales(activation, weight, 0.5)
    assert scales.dtype == np.float32
    assert scales[0] == np.float32(8**0.5 / 2**0.5) and scales[1] == np.float32(1 / 0.5**0.5)
    assert scales[2] == scales[3] == 1  # a channel that is all zeros on either side keeps its values
    assert scales[4] == np.float32(1e5)  # clipped: beyond it one outlier would only trade for another
    assert np.array_equal(smoothing_scales(activation[:2], weight[:2], 1.0), np.float32(activation[:2]))


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5, float("nan")])
def test_alpha_outside_zero_one_is_refused(residual, tmp_path, alpha):
    with pytest.raises(InputError, match="alpha must be in"):
        dq.RunConfig(model=residual[0], calib=residual[1], smooth_quant=alpha)


def test_cli_refuses_bad_alpha_in_one_line_and_writes_nothing(residual, tmp_path):
    model, calib, _ = residual
    proc = dask_quant("run", model, "--calib", calib, "--out", tmp_path / "out", "--smooth-quant", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "alpha must be in (0, 1]" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_run_publishes_the_smoothed_model_and_records_the_step(residual, tmp_path, client):
    model, calib, val = residual
    config = dq.RunConfig(
        model=model,
        calib=calib,
        val=val,
        out=tmp_path,
        smooth_quant=0.5,
        quant=dq.QuantConfig(fp32_outputs=("MatMul", "Gemm")),
    )
    result = dq.run(config, client=client)
    record = json.loads((result.run_dir / results.RUN_FILE).read_text())
    assert record["config"]["smooth_quant"] == 0.5
    assert record["config"]["quant"]["fp32_outputs"] == ["MatMul", "Gemm"]
    assert any(step.startswith("SmoothQuant (alpha 0.5): 2 activations") for step in record["preparation"]["steps"])
    int8 = onnx.load(str(result.run_dir / results.MODEL_FILE))
    readers = {n.op_type: n.input[0] for n in int8.graph.node if n.op_type in ("MatMul", "Gemm")}
    producers = {o: n for n in int8.graph.node for o in n.output}
    assert all(producers[name].op_type == "DequantizeLinear" for name in readers.values())  # inputs quantized
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "out" for n in int8.graph.node)  # FP32 output
    # The smoothing Muls stay FP32: a QDQ on their input would quantize the outliers smoothing moved away
    # (the Tanh's output has none; the Concat's has its own, as ORT quantizes a Concat's output).
    muls = {n.output[0]: n for n in int8.graph.node if n.op_type == "Mul" and n.output[0].endswith("/smoothed")}
    assert len(muls) == 2 and producers[muls["/Tanh_output_0/smoothed"].input[0]].op_type == "Tanh"
    assert {n.name for n in muls.values()} <= set(record["config"]["quant"]["exclude_nodes"])
    assert result.validation.mean_cosine > 0.99
    # Same job without smoothing: a different model, same chunks (the statistics pass adds no chunk state).
    plain = dq.run(replace(config, smooth_quant=None, out=tmp_path / "plain"), client=client)
    assert (plain.run_dir / results.MODEL_FILE).read_bytes() != (result.run_dir / results.MODEL_FILE).read_bytes()
