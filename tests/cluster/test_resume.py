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

MODEL, CALIB, _ = digits_paths()


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
