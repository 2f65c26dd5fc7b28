"""Latency: both models on the same serving batch of rows; a slow model gets fewer repeats, never fewer than 3."""

from __future__ import annotations

from models import digits_paths, with_fixed_batch

from dask_quant.tasks.chunks import chunk_refs
from dask_quant.tasks.digest import sha256_file
from dask_quant.tasks.latency import BATCH, measure_latency
from dask_quant.tasks.npy_io import NPY_MEMBER
from dask_quant.tasks.sessions import ModelRef


def test_repeats_shrink_to_the_time_budget_but_not_below_three():
    model_path, calib, _ = digits_paths()
    ref = ModelRef(str(model_path), sha256_file(model_path))
    chunk = chunk_refs(str(calib), (("input", NPY_MEMBER),), 300, 64)[0]
    generous = measure_latency(chunk, ref, (ref,), repeats=20)[0]
    assert generous.repeats == 20 and generous.batch_size == BATCH
    assert generous.fp32_seconds_per_sample > 0 and generous.int8_seconds_per_sample > 0
    assert measure_latency(chunk, ref, (ref,), repeats=20, budget_s=1e-9)[0].repeats == 3


def test_a_short_chunk_is_timed_whole():
    model_path, calib, _ = digits_paths()
    ref = ModelRef(str(model_path), sha256_file(model_path))
    chunk = chunk_refs(str(calib), (("input", NPY_MEMBER),), 300, 3)[0]
    assert measure_latency(chunk, ref, (ref,), repeats=3)[0].batch_size == 3


def test_a_model_that_fixes_its_batch_runs_whole_batches(tmp_path):
    model_path, calib, _ = digits_paths()
    fixed = with_fixed_batch(model_path, tmp_path / "fixed.onnx", 3)
    ref = ModelRef(str(fixed), sha256_file(fixed))
    chunk = chunk_refs(str(calib), (("input", NPY_MEMBER),), 300, 30)[0]
    assert measure_latency(chunk, ref, (ref,), repeats=3)[0].batch_size == 6
