"""Sessions: built once per process per (model, spec), and refused when the bytes changed."""

from __future__ import annotations

import pickle
import re
import shutil

import numpy as np
import pytest
from models import digits_paths

from tasks import sessions
from tasks.calibrate import chunk_range_stats
from tasks.chunks import chunk_refs
from tasks.digest import sha256_file
from tasks.errors import InputError, ModelChangedError
from tasks.npy_io import NPY_MEMBER
from tasks.validate import validate_chunk


def test_session_is_cached_per_model_and_spec(tmp_path):
    model_path, _, _ = digits_paths()
    copy = tmp_path / "m.onnx"
    shutil.copy(model_path, copy)
    ref = sessions.ModelRef(str(copy), sha256_file(copy))
    first = sessions.session_for(ref)
    assert sessions.session_for(ref) is first
    assert sessions.session_for(ref, sessions.SessionSpec(calibration=True)) is not first


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
