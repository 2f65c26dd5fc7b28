"""Models over 2 GiB: the prepared and INT8 models are written with their weights in a data file.

A model that large cannot be one protobuf message, so dask-quant decides by
the weights' bytes (pipeline.model_files.EXTERNAL_DATA_ABOVE). These tests
lower that bound in the client, where every model file is written, so the
digits CNN takes the large models' path; the workers read what they are
given by path either way. `benchmarks/large_model.py` runs a real 2.1 GB model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from models import digits_paths, load_arrays
from onnxruntime.quantization import QuantType
from reference import model_signature, reference_model

from dask_quant import pipeline as dq
from dask_quant.pipeline import model_files, outputs, results
from dask_quant.tasks.digest import external_locations, model_bytes, model_sha256

MODEL, CALIB, VAL = digits_paths()
REFERENCE = {"per_channel": True, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8}


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as c:
        yield c


def _run(model, out, client, **options):
    config = dq.RunConfig(model=model, calib=CALIB, val=VAL, out=out, chunk_size=64, **options)
    return dq.run(config, client=client).run_dir


def _qparams(run_dir):
    return pq.read_table(run_dir / outputs.QPARAMS.name).drop(["run_id"])


@pytest.mark.parametrize("given", ["one file", "external data"])
def test_a_large_model_is_written_with_external_data_and_quantized_as_quantize_static_does(
    given, tmp_path, client, monkeypatch
):
    model = tmp_path / "model" / "digits.onnx"
    model.parent.mkdir()
    external = {"save_as_external_data": True, "location": "weights.bin", "size_threshold": 0}
    onnx.save(onnx.load(str(MODEL)), str(model), **(external if given == "external data" else {}))
    small = _run(model, tmp_path / "small", client)  # under the bound: single files, as always

    monkeypatch.setattr(model_files, "EXTERNAL_DATA_ABOVE", 0)  # every model is "large"
    large = _run(model, tmp_path / "large", client)
    for name in (results.FP32_FILE, results.MODEL_FILE):
        assert external_locations((large / name).read_bytes()) == [model_files.data_file(large / name)]
        assert (large / f"{name}.data").stat().st_mode == (large / name).stat().st_mode  # onnx made it 0600
        assert external_locations((small / name).read_bytes()) == []
    # ORT's quantizer wrote the INT8 model as quantize_static does on the prepared model, weights outside.
    ref = tmp_path / "ref" / "ref.onnx"
    ref.parent.mkdir()
    arrays = load_arrays(CALIB, ["input"])
    kwargs = {**REFERENCE, "use_external_data_format": True}
    reference_model(large / results.FP32_FILE, arrays, batch=300, kwargs=kwargs, out=ref)
    assert external_locations(ref.read_bytes()) == ["ref.onnx.data"]
    assert model_signature(large / results.MODEL_FILE) == model_signature(ref)
    # The same numbers as the single-file run: only how the files are written differs.
    assert model_signature(large / results.MODEL_FILE) == model_signature(small / results.MODEL_FILE)
    assert _qparams(large).equals(_qparams(small))
    record = json.loads((large / results.RUN_FILE).read_text())
    assert record["summary"] == json.loads((small / results.RUN_FILE).read_text())["summary"]
    int8 = large / results.MODEL_FILE
    assert record["int8_model"]["sha256"] == model_sha256(int8)
    assert record["int8_model"]["bytes"] == model_bytes(int8) > int8.stat().st_size
    # ONNX Runtime loads the published model by its path, from the run directory alone.
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": load_arrays(VAL, ["input"])["input"][:8]})[0]
    assert logits.shape == (8, 10) and np.isfinite(logits).all()
    assert not (tmp_path / "large" / results.WORK).exists()  # the prepared model and its data are gone


def test_a_large_model_as_given_is_quantized_with_external_data(tmp_path, client, monkeypatch):
    model = tmp_path / "model" / "digits.onnx"
    model.parent.mkdir()
    onnx.save(onnx.load(str(MODEL)), str(model), save_as_external_data=True, location="w.bin", size_threshold=0)
    monkeypatch.setattr(model_files, "EXTERNAL_DATA_ABOVE", 0)
    run_dir = _run(model, tmp_path / "runs", client, prepare=False)
    assert not (run_dir / results.FP32_FILE).exists()
    assert external_locations((run_dir / results.MODEL_FILE).read_bytes()) == ["model.int8.onnx.data"]
    assert json.loads((run_dir / results.RUN_FILE).read_text())["summary"]["int8_accuracy"] > 0.95


def test_a_large_prepared_model_is_written_beside_its_data_and_removed_with_it(tmp_path, monkeypatch):
    from dask_quant.pipeline.stages.prepare import write_prepared

    monkeypatch.setattr(model_files, "EXTERNAL_DATA_ABOVE", 0)
    proto = onnx.load(str(MODEL))
    before = _weights(proto)
    ref = write_prepared(proto, tmp_path / "models", "digits")
    assert _weights(proto) == before  # the weights are back in the message the caller holds
    path = Path(ref.path)
    assert path.parent.parent == tmp_path / "models" and path.name == results.FP32_FILE
    assert sorted(p.name for p in path.parent.iterdir()) == [results.FP32_FILE, f"{results.FP32_FILE}.data"]
    assert ref.sha256 == model_sha256(path)
    model_files.remove_model(path)
    assert list(path.parent.iterdir()) == []


def _weights(proto):
    from onnx.external_data_helper import uses_external_data
    from onnx.numpy_helper import to_array

    assert not any(uses_external_data(init) for init in proto.graph.initializer)
    return {init.name: to_array(init).tobytes() for init in proto.graph.initializer}


def test_shape_inference_reads_a_large_models_graph_with_its_weights_set_aside(monkeypatch):
    """onnx's shape inference serializes the model (impossible over 2 GiB): it gets the big tensors as
    references, the same answer, and the caller's weights come back."""
    from onnx import TensorProto, helper, numpy_helper

    from dask_quant.pipeline.selection import tensors_to_calibrate

    weight = numpy_helper.from_array(np.arange(300 * 300, dtype=np.float32).reshape(300, 300), "w")
    shape = numpy_helper.from_array(np.array([-1, 150], np.int64), "shape")  # read by shape inference
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Reshape", ["y", "shape"], ["z"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 300])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [weight, shape],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = tensors_to_calibrate(proto)
    before = _weights(proto)
    monkeypatch.setattr(model_files, "EXTERNAL_DATA_ABOVE", 0)
    with model_files.weights_aside(proto) as graph_only:
        assert graph_only.ByteSize() < 4096
    assert tensors_to_calibrate(proto) == expected == (("x", 1), ("y", 1), ("z", 1))
    assert _weights(proto) == before


def test_a_large_model_is_smoothed_from_its_data_file(residual, tmp_path, client, monkeypatch):
    """SmoothQuant reads the weights a large model's prepared graph does not hold, and its run equals the
    same run written as single files."""
    model, calib, val = residual
    options = {"smooth_quant": 0.5, "quant": dq.QuantConfig(fp32_outputs=("MatMul", "Gemm"))}
    config = dq.RunConfig(model=model, calib=calib, val=val, out=tmp_path / "small", chunk_size=32, **options)
    small = dq.run(config, client=client).run_dir
    monkeypatch.setattr(model_files, "EXTERNAL_DATA_ABOVE", 0)
    large = dq.run(replace(config, out=tmp_path / "large"), client=client).run_dir
    # Only tensors over 1 KiB go to a data file (onnx's and ORT's threshold): the smoothed weights do.
    assert external_locations((large / results.FP32_FILE).read_bytes()) == ["model.fp32.onnx.data"]
    assert model_signature(large / results.MODEL_FILE) == model_signature(small / results.MODEL_FILE)
    assert model_signature(large / results.FP32_FILE) == model_signature(small / results.FP32_FILE)
    assert _qparams(large).equals(_qparams(small))


def test_a_large_model_below_opset_13_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from exported import with_opset

    from dask_quant.pipeline.stages.prepare import prepare
    from dask_quant.tasks.errors import InputError

    model = with_opset(MODEL, tmp_path / "opset12.onnx", 12)
    readme = (  # the README's bad-input table
        "opset 12, and per-channel weights need opset 13, but onnx's version converter cannot take a model over "
        "2 GiB; pass --per-tensor, or export it at opset 13 or later"
    )
    monkeypatch.setattr(model_files, "EXTERNAL_DATA_ABOVE", 0)
    with pytest.raises(InputError, match=f"^{model}: {readme}$"):
        prepare(dq.RunConfig(model=model, calib=CALIB, out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    prepared = prepare(
        dq.RunConfig(model=model, calib=CALIB, out=tmp_path / "out", quant=dq.QuantConfig(per_channel=False))
    )
    assert prepared.prepared and external_locations(Path(prepared.model.path).read_bytes()) != []
    prepared.discard()
    assert not (tmp_path / "out" / results.WORK).exists()
