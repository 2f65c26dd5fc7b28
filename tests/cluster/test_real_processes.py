"""Jobs on `dask scheduler` and `dask worker` processes on 127.0.0.1: plain, TLS, and a worker killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
from distributed import Client
from models import digits_paths
from processes import dask_processes, dask_quant, make_tls_files, start_dask_quant, wait_for_calibration

from dask_quant.pipeline import outputs, results

MODEL, CALIB, VAL = digits_paths()


def _security(tls):
    from distributed.security import Security

    return Security(
        tls_ca_file=str(tls["ca"]),
        tls_client_cert=str(tls["cert"]),
        tls_client_key=str(tls["key"]),
        require_encryption=True,
    )


def _wait_for_workers(scheduler_file, count, tls=None):
    with Client(scheduler_file=str(scheduler_file), timeout=30, security=_security(tls) if tls else None) as client:
        client.wait_for_workers(count, timeout=60)
        return client.scheduler.address


def _run_json(out):
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return json.loads((run_dir / results.RUN_FILE).read_text()), run_dir


def test_job_on_real_processes_by_scheduler_file_and_by_environment(tmp_path):
    with dask_processes(tmp_path) as cluster:
        address = _wait_for_workers(cluster.scheduler_file, 2)
        proc = dask_quant("run", "--scheduler-file", cluster.scheduler_file, "--out", tmp_path / "a")
        assert proc.returncode == 0, proc.stderr
        assert "on 2 workers" in proc.stderr
        record, _ = _run_json(tmp_path / "a")
        assert record["cluster"] == {"scheduler": address, "workers": 2}

        env = {**os.environ, "DASK_SCHEDULER_ADDRESS": address}
        command = [sys.executable, "-m", "dask_quant", "run", "--out", str(tmp_path / "b")]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        assert _run_json(tmp_path / "b")[0]["cluster"]["scheduler"] == address
        assert cluster.scheduler.poll() is None  # a scheduler we did not start is left running


def test_job_over_tls_with_a_throwaway_ca(tmp_path):
    tls = make_tls_files(tmp_path)
    with dask_processes(tmp_path, tls=tls) as cluster:
        address = _wait_for_workers(cluster.scheduler_file, 2, tls)
        assert address.startswith("tls://127.0.0.1:")
        refused = dask_quant("run", "--scheduler-file", cluster.scheduler_file, "--out", tmp_path / "x")
        assert refused.returncode == 2
        assert "is a TLS scheduler: pass --tls-ca-file" in refused.stderr
        proc = dask_quant(
            "run",
            "--scheduler-file",
            cluster.scheduler_file,
            "--tls-ca-file",
            tls["ca"],
            "--tls-cert",
            tls["cert"],
            "--tls-key",
            tls["key"],
            "--out",
            tmp_path / "runs",
        )
        assert proc.returncode == 0, proc.stderr
        assert _run_json(tmp_path / "runs")[0]["cluster"]["scheduler"] == address


def test_a_worker_killed_mid_calibration_changes_nothing(tmp_path):
    big = tmp_path / "calib.npy"
    np.save(big, np.tile(np.load(CALIB), (100, 1, 1, 1)))  # 30,000 rows
    args = ["--chunk-size", "100", "--method", "entropy", "--val", VAL]
    with dask_processes(tmp_path) as cluster:
        _wait_for_workers(cluster.scheduler_file, 2)
        job = start_dask_quant(
            "run",
            MODEL,
            "--calib",
            big,
            *args,
            "--scheduler-file",
            cluster.scheduler_file,
            "--out",
            tmp_path / "killed",
        )
        wait_for_calibration(job)
        cluster.workers[0].send_signal(signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, stderr
        assert cluster.workers[0].wait(timeout=10) == -signal.SIGKILL
        undisturbed = dask_quant(
            "run", MODEL, "--calib", big, *args, "--scheduler-file", cluster.scheduler_file, "--out", tmp_path / "calm"
        )
        assert undisturbed.returncode == 0, undisturbed.stderr
    _, killed_dir = _run_json(tmp_path / "killed")
    _, calm_dir = _run_json(tmp_path / "calm")
    for name in (outputs.QPARAMS.name, outputs.LAYERS.name):
        assert pq.read_table(killed_dir / name).drop(["run_id"]) == pq.read_table(calm_dir / name).drop(["run_id"])
    rows = pq.read_table(killed_dir / outputs.VALIDATION.name).to_pylist()
    assert [r["chunk_index"] for r in rows] == list(range(3))  # 300 rows in chunks of 100: none lost, none twice
    assert sum(r["samples"] for r in rows) == 300
