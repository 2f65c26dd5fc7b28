"""--preset cpu|tensorrt|qnn as a user runs it: printed, recorded in run.json, and the files each EP needs.

Only the CPU EP runs here: the QNN and TensorRT models are checked for what their EP reads (the options
themselves are checked bit for bit against ORT's own flows in tests/pipeline/test_exact_reference.py).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pyarrow.parquet as pq
from onnx import numpy_helper
from processes import dask_quant

from dask_quant.pipeline import outputs, results

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def _run(tmp_path, preset: str, *more: str):
    done = dask_quant("run", "--preset", preset, *more, "--out", tmp_path / preset)
    assert done.returncode == 0, done.stderr
    (run_dir,) = [d for d in (tmp_path / preset).iterdir() if not d.name.startswith(".")]
    return done, run_dir


def _zero_points(model) -> dict[str, np.ndarray]:
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {
        node.input[2]: inits[node.input[2]]
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2
    }


def test_qnn_preset_writes_uint8_node_units_that_pass_the_checker(tmp_path):
    done, run_dir = _run(tmp_path, "qnn")
    assert "preset qnn: static QDQ, uint8 activations and uint8 asymmetric per-tensor weights" in done.stderr
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    assert record["config"]["quant"]["preset"] == "qnn"
    assert record["config"]["quant"]["per_channel"] is False
    model = onnx.load(str(run_dir / results.MODEL_FILE))
    onnx.checker.check_model(model, full_check=True)
    # Every Q/DQ is per tensor (scalar zero point), uint8 but for the biases (int32, zero point 0): QNN's
    # 8-bit HTP format.
    points = _zero_points(model)
    assert points and all(z.ndim == 0 for z in points.values())
    assert all(z.dtype == np.uint8 or (z.dtype == np.int32 and z == 0) for z in points.values())
    assert any(name.endswith("weight_zero_point") for name in points)  # weights too, not only activations
    # QNN EP takes node units: each quantized op reads every float input through a DequantizeLinear and
    # writes through a QuantizeLinear.
    made_by = {out: node.op_type for node in model.graph.node for out in node.output}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    units = [node for node in model.graph.node if node.op_type in QUANTIZED_OPS]
    assert units
    for node in units:
        assert all(made_by.get(name) == "DequantizeLinear" for name in node.input if name), node.name
        assert all(kind == "QuantizeLinear" for kind in readers.get(node.output[0], [])), node.name
    assert record["summary"]["int8_accuracy"] > 0.95


def test_tensorrt_preset_writes_a_symmetric_model_and_its_table(tmp_path):
    done, run_dir = _run(tmp_path, "tensorrt")
    assert "preset tensorrt:" in done.stderr and "calibration table in tensorrt/" in done.stderr
    model = onnx.load(str(run_dir / results.MODEL_FILE))
    points = _zero_points(model)
    assert points and not any(z.any() for z in points.values())  # symmetric: every zero point 0
    assert {z.dtype for z in points.values()} <= {np.dtype(np.int8), np.dtype(np.int32)}  # int8, int32 biases
    table = run_dir / results.TENSORRT_DIR
    names = ["calibration.cache", "calibration.flatbuffers", "calibration.json"]
    assert sorted(p.name for p in table.iterdir()) == names
    # One symmetric bound per quantized activation, as TensorRT reads it.
    bounds = dict(line.rsplit(" ", 1) for line in (table / "calibration.cache").read_text().splitlines() if line)
    qparams = pq.read_table(run_dir / outputs.QPARAMS.name).to_pylist()
    assert set(bounds) == {row["tensor"] for row in qparams if row["kind"] == "activation"}
    assert all(float(bound) >= 0 for bound in bounds.values())
    assert json.loads((run_dir / results.RUN_FILE).read_text())["config"]["quant"]["preset"] == "tensorrt"


def test_a_preset_refuses_an_option_it_sets_otherwise_in_one_line(tmp_path):
    for args, says in (
        (("--preset", "tensorrt", "--activation-type", "uint8"), "--preset tensorrt sets --activation-type int8"),
        (("--preset", "qnn", "--scheme", "dynamic"), "--preset qnn sets --scheme static"),
        (("--preset", "cpu", "--symmetric"), "--preset cpu sets asymmetric activations (no --symmetric)"),
    ):
        done = dask_quant("run", *args, "--out", tmp_path / "runs")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert says in done.stderr and "drop it, or drop --preset" in done.stderr, done.stderr
        assert not (tmp_path / "runs").exists()
