"""Sessions: built once per process per (model, spec), and refused when the bytes changed."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from models import digits_paths

from dask_quant.tasks import sessions
from dask_quant.tasks.calibrate import chunk_range_stats
from dask_quant.tasks.chunks import chunk_refs
from dask_quant.tasks.digest import sha256_file
from dask_quant.tasks.errors import InputError, ModelChangedError
from dask_quant.tasks.npy_io import NPY_MEMBER
from dask_quant.tasks.validate import validate_chunk


def test_session_is_cached_per_model_and_spec(tmp_path):
    model_path, _, _ = digits_paths()
    copy = tmp_path / "m.onnx"
    shutil.copy(model_path, copy)
    ref = sessions.ModelRef(str(copy), sha256_file(copy))
    first = sessions.session_for(ref)
    assert sessions.session_for(ref) is first
    assert sessions.session_for(ref, sessions.SessionSpec(calibration=True)) is not first


def test_cached_sessions_stay_within_the_byte_budget(tmp_path):
    """Least recently used first; the one just built stays even alone over the budget; None bounds the count only."""
    model_path, _, _ = digits_paths()
    ref = sessions.ModelRef(str(model_path), sha256_file(model_path))
    specs = [sessions.SessionSpec(), sessions.SessionSpec(calibration=True), sessions.SessionSpec(intra_op_threads=2)]
    cost = int(model_path.stat().st_size * sessions._SESSION_GROWTH) + sessions._SESSION_OVERHEAD
    sessions.drop_sessions()
    try:
        sessions.set_session_budget(2 * cost)
        first, second = (sessions.session_for(ref, spec) for spec in specs[:2])
        assert sessions.session_for(ref, specs[0]) is first  # used last: `second` is now the oldest
        sessions.session_for(ref, specs[2])
        assert sessions.session_for(ref, specs[0]) is first
        assert sessions.session_for(ref, specs[1]) is not second  # evicted, built anew
        sessions.set_session_budget(1)
        assert len(sessions._sessions) == 1
        sessions.set_session_budget(None)
        assert all(sessions.session_for(ref, spec) for spec in specs) and len(sessions._sessions) == 3
    finally:
        sessions.set_session_budget(None)
        sessions.drop_sessions()


def test_changed_model_bytes_are_refused(tmp_path):
    model_path, _, _ = digits_paths()
    copy = tmp_path / "m.onnx"
    shutil.copy(model_path, copy)
    ref = sessions.ModelRef(str(copy), "0" * 64)
    with pytest.raises(ModelChangedError, match="sha256 differs"):
        sessions.session_for(ref)


def test_one_intra_op_thread_and_no_spinning(tmp_path):
    model_path, _, _ = digits_paths()
    ref = sessions.ModelRef(str(model_path), sha256_file(model_path))
    options = sessions.session_for(ref).get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_task_callables_and_results_pickle():
    model_path, calib, _ = digits_paths()
    ref = sessions.ModelRef(str(model_path), sha256_file(model_path))
    chunk = chunk_refs(str(calib), (("input", NPY_MEMBER),), 300, 50)[0]
    for obj in (chunk_range_stats, validate_chunk, ref, chunk):
        assert pickle.loads(pickle.dumps(obj)) == obj
    stats = chunk_range_stats(chunk, ref, (("input", 1),))
    assert pickle.loads(pickle.dumps(stats)) == stats
    assert stats.as_dict()["input"].min == float(np.load(calib)[:50].min())


def test_nan_in_input_is_refused_with_count_and_rows(tmp_path):
    model_path, calib, _ = digits_paths()
    data = np.load(calib)[:10].copy()
    data[3, 0, 2, 2] = data[7, 0, 0, 1] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, data)
    ref = sessions.ModelRef(str(model_path), sha256_file(model_path))
    chunk = chunk_refs(str(path), (("input", NPY_MEMBER),), 10, 10)[0]
    with pytest.raises(
        InputError, match=re.escape(f"2 NaN or infinite value(s) in input 'input' (rows 0..10 of {path})")
    ):
        chunk_range_stats(chunk, ref, (("input", 1),))


def test_model_ort_refuses_is_an_input_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(InputError, match="ONNX Runtime cannot load this model"):
        sessions.session_for(sessions.ModelRef(str(path), sha256_file(path)))


def test_exposed_runs_fill_the_byte_budget_and_never_run_one_row_alone(tmp_path):
    model_path, calib, _ = digits_paths()
    ref = sessions.ModelRef(str(model_path), sha256_file(model_path))
    session = sessions.session_for(ref)
    feeds = {"input": np.load(calib)[:50]}
    row_bytes = 10 * 4  # one row of logits: 10 float32
    parts = list(sessions.exposed_runs([(session, ["logits"])], feeds, budget=7 * row_bytes + 3))
    assert [len(part["input"]) for _, part, _ in parts] == [2, 7, 7, 7, 7, 7, 7, 6]
    assert [rows for rows, _, _ in parts] == [2, 7, 7, 7, 7, 7, 7, 6]
    parts = list(sessions.exposed_runs([(session, ["logits"])], {"input": feeds["input"][:23]}, budget=1))
    assert [len(part["input"]) for _, part, _ in parts] == [2] * 10 + [3]
    joined = np.concatenate([outputs["logits"] for _, _, (outputs,) in parts])
    assert np.array_equal(joined, session.run(["logits"], {"input": feeds["input"][:23]})[0])


def test_run_in_slices_gives_one_runs_outputs_without_one_row_slices(tmp_path, monkeypatch):
    model_path, calib, _ = digits_paths()
    session = sessions.session_for(sessions.ModelRef(str(model_path), sha256_file(model_path)))
    seen = []

    def counted(session, names, feeds, feeding=sessions.NO_FEEDING):
        seen.append(len(feeds["input"]))
        return run_in_batches(session, names, feeds, feeding)

    run_in_batches = sessions.run_in_batches
    monkeypatch.setattr(sessions, "run_in_batches", counted)
    rows = np.load(calib)
    for count, slices in ((50, [16, 16, 16, 2]), (33, [16, 17]), (17, [17]), (1, [1])):
        seen.clear()
        (logits,) = sessions.run_in_slices(session, None, {"input": rows[:count]})
        assert seen == slices
        assert np.array_equal(logits, session.run(["logits"], {"input": rows[:count]})[0])


def test_run_in_slices_runs_every_row_at_once_when_an_output_has_other_rows(tmp_path):
    """An output whose rows are not samples (here one value per run) comes back as one run makes it, so
    validation's check names it, rather than concatenated per slice."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, noop_with_empty_axes=0)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
    )
    path = tmp_path / "sum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    session = sessions.session_for(sessions.ModelRef(str(path), sha256_file(path)))
    x = np.arange(120, dtype=np.float32).reshape(40, 3)
    (total,) = sessions.run_in_slices(session, ["total"], {"x": x})
    assert total.shape == () and total == x.sum()


def test_reductions_run_as_soon_as_their_tensor_is_made(tmp_path):
    """ORT must be able to free each activation right after it is made, not at the end of the chunk."""
    import json

    import onnx
    import onnxruntime as ort

    from dask_quant.tasks.augment import add_extrema_outputs

    model_path, calib, _ = digits_paths()
    proto = onnx.load(str(model_path))
    made = [(node.output[0], node.name) for node in proto.graph.node]
    augmented = add_extrema_outputs(proto, tuple((tensor, onnx.TensorProto.FLOAT) for tensor, _ in made))
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"input": np.load(calib)[:4]})
    events = json.loads(Path(session.end_profiling()).read_text())
    ran = [e["name"].removesuffix("_kernel_time") for e in events if e.get("cat") == "Node"]
    ran = [name for name in ran if not name.endswith(("_fence_before", "_fence_after"))]
    position = {name: i for i, name in enumerate(ran)}
    for (tensor, producer), (_, next_producer) in zip(made, made[1:], strict=False):
        reduced = position[f"{tensor}/dask_quant_max/kept"]
        assert position[producer] < reduced < position[next_producer], tensor
