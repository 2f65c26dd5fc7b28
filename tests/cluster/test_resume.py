"""An interrupted run keeps its chunk statistics; --resume computes only the missing chunks, same answer."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pyarrow.parquet as pq
from models import digits_paths
from processes import dask_quant, start_dask_quant

from dask_quant.pipeline import outputs, results
from dask_quant.pipeline.workarea import WORK
from dask_quant.tasks.checkpoint import SUFFIX

MODEL, CALIB, VAL = digits_paths()


def _checkpoints(out):
    return sorted((out / WORK).glob(f"*/*{SUFFIX}"))


def test_resume_computes_only_the_missing_chunks(tmp_path):
    big = tmp_path / "calib.npy"
    np.save(big, np.tile(np.load(CALIB), (100, 1, 1, 1)))  # 30,000 rows in 300 chunks of 100
    out = tmp_path / "runs"
    args = [MODEL, "--calib", big, "--chunk-size", "100", "--workers", "1"]
    first = start_dask_quant("run", *args, "--out", out)
    deadline = time.monotonic() + 120
    while len(_checkpoints(out)) < 20 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert "run again with --resume" in stderr
    kept = len(_checkpoints(out))
    assert 20 <= kept < 300
    assert [p.name for p in out.iterdir()] == [WORK]  # checkpoints, but no run

    edited = _checkpoints(out)[0]  # a checkpoint edited while the run was stopped is never used
    edited.write_text(edited.read_text().replace('"ranges": [[', '"ranges": [], "x": [[', 1))
    resumed = dask_quant("run", *args, "--resume", "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {kept} chunk checkpoints found" in resumed.stderr
    (run_dir,) = [p for p in out.iterdir() if p.name != WORK]
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    passes = record["calibration"]["passes"]["range_stats"]
    assert passes == {"computed": 300 - kept + 1, "reused": kept - 1, "discarded": 1}
    assert not (out / WORK).exists()  # a published run removes its work area

    fresh = dask_quant("run", *args, "--out", tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr
    (fresh_dir,) = list((tmp_path / "fresh").iterdir())
    assert json.loads((fresh_dir / results.RUN_FILE).read_text())["calibration"]["passes"]["range_stats"] == {
        "computed": 300,
        "reused": 0,
        "discarded": 0,
    }
    for name in (outputs.QPARAMS.name,):
        assert pq.read_table(run_dir / name).drop(["run_id"]) == pq.read_table(fresh_dir / name).drop(["run_id"])


def test_resume_after_an_interrupt_during_validation_reuses_its_finished_chunks(tmp_path):
    """Validation's chunks (outputs and per-layer sums) are checkpointed like calibration's: a run stopped
    during validation, resumed, computes only what is missing and publishes what a fresh run does."""
    with np.load(VAL) as arrays:
        val = tmp_path / "val.npz"
        np.savez(val, input=np.tile(arrays["input"], (20, 1, 1, 1)), labels=np.tile(arrays["labels"], 20))
    out = tmp_path / "runs"
    args = [MODEL, "--calib", CALIB, "--val", val, "--chunk-size", "50", "--workers", "1"]
    first = start_dask_quant("run", *args, "--out", out)
    deadline = time.monotonic() + 180
    calibration = 6  # 300 calibration rows in chunks of 50
    while len(_checkpoints(out)) < calibration + 20 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    kept = len(_checkpoints(out)) - calibration
    assert 20 <= kept < 240  # 120 output chunks and 120 per-layer chunks

    resumed = dask_quant("run", *args, "--resume", "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    (run_dir,) = [p for p in out.iterdir() if p.name != WORK]
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    counts = record["validation_chunks"]
    assert counts["outputs"]["reused"] + counts["per_layer"]["reused"] == kept
    assert counts["outputs"]["computed"] + counts["outputs"]["reused"] == 120
    assert counts["per_layer"]["computed"] + counts["per_layer"]["reused"] == 120
    assert record["calibration"]["passes"]["range_stats"]["reused"] == calibration

    fresh = dask_quant("run", *args, "--out", tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr
    (fresh_dir,) = list((tmp_path / "fresh").iterdir())
    fresh_record = json.loads((fresh_dir / results.RUN_FILE).read_text())
    assert fresh_record["validation_chunks"]["outputs"] == {"computed": 120, "reused": 0, "discarded": 0}
    for name in (outputs.QPARAMS.name, outputs.VALIDATION.name, outputs.LAYERS.name):
        assert pq.read_table(run_dir / name).drop(["run_id"]) == pq.read_table(fresh_dir / name).drop(["run_id"])
    assert record["summary"] == fresh_record["summary"]
