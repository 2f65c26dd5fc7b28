"""--chunk-size auto on a real cluster: a model whose one row is 8 MiB of activations gets few rows per
chunk under a small worker memory limit, says so, and its parameters are those of --chunk-size 64."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from processes import dask_quant

from dask_quant.pipeline import results


def _wide_model(path):
    """x [batch, 1, 1] broadcast over a 1024 x 1024 constant (4 MiB a row), Relu, MatMul to 4 values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = [
        numpy_helper.from_array(rng.normal(size=(1, 1024, 1024)).astype(np.float32), "plane"),
        numpy_helper.from_array(rng.normal(size=(1024, 4)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Add", ["x", "plane"], ["wide"], name="broadcast"),
        helper.make_node("Relu", ["wide"], ["active"], name="relu"),
        helper.make_node("MatMul", ["active", "w"], ["y"], name="project"),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1024, 4])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_auto_chooses_rows_that_fit_the_workers_and_changes_no_parameter(tmp_path):
    model = _wide_model(tmp_path / "wide.onnx")
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(4).normal(size=(40, 1, 1)).astype(np.float32))
    common = [model, "--calib", calib, "--workers", "1", "--layers", "none"]
    auto = dask_quant("run", *common, "--memory-limit", "400MiB", "--out", tmp_path / "auto")
    assert auto.returncode == 0, auto.stderr
    assert "chunk size 12 rows (auto: ~8.0 MiB of activations per row, 400 MiB per worker thread)" in auto.stderr
    fixed = dask_quant("run", *common, "--chunk-size", "64", "--memory-limit", "0", "--out", tmp_path / "fixed")
    assert fixed.returncode == 0, fixed.stderr
    (auto_dir,), (fixed_dir,) = (list((tmp_path / side).iterdir()) for side in ("auto", "fixed"))
    record = json.loads((auto_dir / results.RUN_FILE).read_text())
    assert record["chunking"] == {"auto": True, "rows": 12, "row_bytes": record["chunking"]["row_bytes"],
                                  "thread_memory": 400 * 2**20}  # fmt: skip
    assert record["data"]["calib"]["chunks"] == 4  # 40 rows in chunks of 12
    for name in ("qparams.parquet", "calibration.parquet"):
        assert pq.read_table(auto_dir / name).drop(["run_id"]) == pq.read_table(fixed_dir / name).drop(["run_id"])
