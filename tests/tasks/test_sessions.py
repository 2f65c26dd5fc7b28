"""Sessions: built once per process per (model, spec), and refused when the bytes changed."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from models import digits_paths

from tasks import sessions
from tasks.calibrate import chunk_range_stats
from tasks.chunks import chunk_refs
from tasks.digest import sha256_file
from tasks.errors import ModelChangedError
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
