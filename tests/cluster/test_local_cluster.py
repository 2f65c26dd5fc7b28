"""Real clusters: LocalCluster processes run the whole job."""

from __future__ import annotations

import contextlib
import gc
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from models import digits_paths, load_arrays, with_fixed_batch
from onnxruntime.quantization import QuantType
from processes import dask_quant
from reference import model_signature, reference_model

from dask_quant import pipeline
from dask_quant.cluster.config import ClusterConfig
from dask_quant.pipeline import outputs, results
from dask_quant.pipeline.config import QuantConfig, RunConfig
from dask_quant.pipeline.job import run
from dask_quant.pipeline.report import REPORT_FILE
from dask_quant.pipeline.workarea import WORK

MODEL, CALIB, VAL = digits_paths()


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        yield c


def _qparams(run_dir):
    return pq.read_table(run_dir / outputs.QPARAMS.name).drop(["run_id"]).to_pylist()


def test_run_on_a_given_client_leaves_it_open_and_matches_reference(client, tmp_path):
    config = RunConfig(model=MODEL, calib=CALIB, val=VAL, out=tmp_path / "runs", chunk_size=50)
    result = pipeline.run(config, client=client)
    assert client.status == "running"
    assert sorted(p.name for p in result.run_dir.iterdir()) == sorted(
        [
            results.MODEL_FILE,
            results.FP32_FILE,
            outputs.QPARAMS.name,
            outputs.CALIBRATION.name,
            outputs.VALIDATION.name,
            outputs.LAYERS.name,
            results.RUN_FILE,
            REPORT_FILE,
        ]
    )
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [result.run_id]  # no temporary left

    arrays = load_arrays(CALIB, ["input"])
    options = {"per_channel": True, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8}
    prepared = result.run_dir / results.FP32_FILE  # ORT quantizes the model as prepared, like we do
    ref = reference_model(prepared, arrays, batch=300, kwargs=options, out=tmp_path / "ref.onnx")
    assert model_signature(result.run_dir / results.MODEL_FILE) == model_signature(ref)

    validation = pq.read_table(result.run_dir / outputs.VALIDATION.name)
    assert validation.schema.equals(outputs.VALIDATION.schema())
    rows = validation.to_pylist()
    assert [(r["row_start"], r["row_stop"]) for r in rows] == [(i, i + 50) for i in range(0, 300, 50)]
    assert sum(r["samples"] for r in rows) == 300 and result.validation.samples == 300
    assert result.validation.agreement >= 0.98
    assert pq.read_table(result.run_dir / outputs.QPARAMS.name).schema.equals(outputs.QPARAMS.schema())
    layers = pq.read_table(result.run_dir / outputs.LAYERS.name)
    assert layers.schema.equals(outputs.LAYERS.schema())
    rows = layers.to_pylist()
    activations = {p.tensor for p in result.qparams if p.kind == "activation"}
    assert {r["tensor"] for r in rows} == activations  # one row per quantized activation
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)
    assert all(r["samples"] == 300 and 0.99 < r["cosine"] <= 1.0 for r in rows)


def test_parameters_do_not_depend_on_worker_count_or_chunk_size(client, tmp_path):
    two = run(RunConfig(model=MODEL, calib=CALIB, out=tmp_path, chunk_size=17), client=client)
    one = run(
        RunConfig(model=MODEL, calib=CALIB, out=tmp_path, chunk_size=300, cluster=ClusterConfig(workers=1)),
    )
    assert one.workers == 1 and two.workers == 2
    assert _qparams(one.run_dir) == _qparams(two.run_dir)
    assert model_signature(one.run_dir / results.MODEL_FILE) == model_signature(two.run_dir / results.MODEL_FILE)


def test_failed_run_leaves_no_directory(client, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "earlier").mkdir()

    def broken(*args, **kwargs):
        msg = "disk full (simulated)"
        raise OSError(msg)

    monkeypatch.setattr(results, "write_json", broken)
    with pytest.raises(OSError, match="simulated"):
        run(RunConfig(model=MODEL, calib=CALIB, val=VAL, out=out), client=client)
    assert sorted(p.name for p in out.iterdir()) == [WORK, "earlier"]  # no run; its chunk statistics, for --resume


def test_cli_default_run_prints_summary_and_exits_cleanly(tmp_path):
    proc = dask_quant("run", "--out", tmp_path, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "top-1 agreement  " in proc.stdout and "written to" in proc.stdout
    worst = next(line for line in proc.stdout.splitlines() if "worst layers" in line)
    assert worst.count(" dB") == 3
    for noise in ("Traceback", "ERROR", "Error", "Exception"):
        assert noise not in proc.stderr, proc.stderr
    agreement = float(proc.stdout.split("top-1 agreement")[1].split("%")[0])
    assert agreement >= 98.0


def test_cli_connects_to_a_scheduler_address(client, tmp_path):
    address = client.scheduler.address
    proc = dask_quant("run", "--scheduler", address, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "on 2 workers" in proc.stderr
    assert client.status == "running"  # the scheduler we connected to is not shut down


def test_unreachable_scheduler_fails_within_the_timeout(tmp_path):
    import socket

    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = dask_quant(
        "run", "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "2", "--out", tmp_path / "o"
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(
        f"dask-quant: error: could not reach the Dask scheduler at tcp://127.0.0.1:{port} within 2 s"
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_scheduler_without_workers_fails_after_the_timeout(tmp_path):
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as empty:
        proc = dask_quant(
            "run", "--scheduler", empty.scheduler_address, "--connect-timeout", "2", "--out", tmp_path / "o"
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"dask-quant: error: the Dask scheduler at {empty.scheduler_address} has no workers after 2 s; "
        f"start some: dask worker {empty.scheduler_address}"
    )
    assert not (tmp_path / "o").exists()


def test_bad_data_found_on_a_worker_is_one_line_and_exit_2(tmp_path):
    data = np.load(CALIB).copy()
    data[123, 0, 4, 4] = np.nan
    nan_file = tmp_path / "nan.npy"
    np.save(nan_file, data)
    proc = dask_quant(
        "run", MODEL, "--calib", nan_file, "--chunk-size", "50", "--workers", "1", "--out", tmp_path / "o"
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("dask-quant: ") or "error" in line]
    assert errors == [
        f"dask-quant: error: 1 NaN or infinite value(s) in input 'input' (rows 100..150 of {nan_file}); "
        "fix or remove those samples"
    ]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("form", ["npz", "parquet"])
def test_client_never_reads_data_rows(client, tmp_path, monkeypatch, form):
    """Invariant 6: only workers (other processes here) read rows; the client reads headers (footers)."""
    import pyarrow as pa

    from dask_quant.tasks import chunks as chunks_module
    from dask_quant.tasks import npy_io, parquet_io

    calib, val = CALIB, VAL
    if form == "parquet":
        with np.load(VAL) as arrays:
            images = pa.FixedShapeTensorArray.from_numpy_ndarray(arrays["input"])
            columns = {"input": images, "labels": arrays["labels"]}
        val = calib = tmp_path / "digits.parquet"
        pq.write_table(pa.table(columns), calib, row_group_size=64)

    def forbidden(*args, **kwargs):
        msg = "the client read data rows"
        raise AssertionError(msg)

    patched = [(npy_io, "read_rows"), (parquet_io, "read_rows"), (parquet_io, "_decoded"), (np, "load")]
    for module, name in [*patched, (chunks_module, "npy_rows"), (chunks_module, "parquet_rows")]:
        monkeypatch.setattr(module, name, forbidden)
    result = run(RunConfig(model=MODEL, calib=calib, val=val, out=tmp_path, chunk_size=100), client=client)
    assert result.validation.samples == 300


def test_interrupt_requested_before_publishing_writes_nothing(client, tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        run(RunConfig(model=MODEL, calib=CALIB, out=out), client=client, interrupted=lambda: True)
    assert [p.name for p in out.iterdir()] == [WORK]  # no run: only the checkpoints --resume would reuse


@pytest.mark.parametrize("method", ["entropy", "percentile", "mse"])
def test_histogram_methods_run_on_the_cluster(method, client, tmp_path):
    config = RunConfig(model=MODEL, calib=CALIB, val=VAL, out=tmp_path, chunk_size=64, quant=QuantConfig(method=method))
    result = run(config, client=client)
    assert result.validation.agreement >= 0.98
    histograms = pq.read_table(result.run_dir / outputs.HISTOGRAMS.name)
    assert histograms.schema.equals(outputs.HISTOGRAMS.schema())
    assert all(sum(row["counts"]) > 0 and len(row["bin_edges"]) == 2049 for row in histograms.to_pylist())
    acts = [r for r in pq.read_table(result.run_dir / outputs.QPARAMS.name).to_pylist() if r["kind"] == "activation"]
    assert {r["method"] for r in acts} == {method}
    assert all(r["observed_min"] <= r["rmin"] <= r["rmax"] <= r["observed_max"] for r in acts)


def test_tensorrt_table_holds_the_chosen_ranges(client, tmp_path):
    config = RunConfig(model=MODEL, calib=CALIB, out=tmp_path, tensorrt_table=True)
    result = run(config, client=client)
    table = dict(
        line.split(" ")
        for line in (result.run_dir / results.TENSORRT_DIR / "calibration.cache").read_text().split("\n")
        if line
    )
    acts = {r["tensor"]: r for r in pq.read_table(result.run_dir / outputs.QPARAMS.name).to_pylist()}
    checked = [t for t in table if t in acts and acts[t]["kind"] == "activation"]
    assert any(-acts[t]["rmin"] > acts[t]["rmax"] for t in checked)  # a range whose low end is the larger
    for tensor in checked:
        assert float(table[tensor]) == max(abs(acts[tensor]["rmin"]), abs(acts[tensor]["rmax"]))
    assert (result.run_dir / results.TENSORRT_DIR / "calibration.flatbuffers").stat().st_size > 0


@pytest.mark.parametrize("chunk_size", [36000, 12000])
def test_a_chunk_that_keeps_killing_workers_is_named(tmp_path, chunk_size):
    """36,000 rows: one chunk with two 295 MB activations alive at once, against 300 MB per worker.
    In 12,000-row chunks a restarted worker used to sit paused above 80% (ORT keeps its arena)
    and the job waited forever. The model fixes its batch to the chunk: otherwise a chunk runs in
    slices of about 128 MiB of activations, and no chunk of this model is too large."""
    huge = tmp_path / "huge.npy"
    np.save(huge, np.tile(np.load(CALIB), (120, 1, 1, 1)))
    out = tmp_path / "o"
    proc = dask_quant(
        "run",
        with_fixed_batch(MODEL, tmp_path / "whole_chunk.onnx", chunk_size),
        "--calib",
        huge,
        "--chunk-size",
        str(chunk_size),
        "--workers",
        "2",
        "--memory-limit",
        "300MB",
        "--out",
        out,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"dask-quant: error: chunk \d \(rows \d+\.\.\d+ of {re.escape(str(huge))}\) killed 4 workers in a row; .*"
        r"lower --chunk-size or raise --memory-limit",
        last,
    ), last
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() or [p.name for p in out.iterdir()] == [WORK]  # at most checkpoints for --resume


def test_only_this_process_can_connect_to_the_local_cluster():
    from distributed.comm.core import CommClosedError
    from distributed.security import Security

    from dask_quant.cluster.config import ClusterConfig
    from dask_quant.cluster.connect import cluster_client

    with cluster_client(ClusterConfig(workers=1)) as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert client.run(lambda: 1) == {next(iter(client.scheduler_info()["workers"])): 1}  # it works for us
        for intruder in (Security(), Security.temporary()):  # no certificate; a certificate of its own
            with pytest.raises((OSError, TypeError, CommClosedError)):
                Client(address, timeout=3, security=intruder)
            # A Client whose __init__ failed sits in a reference cycle with its traceback. Free it now:
            # freed by a collection that happens to run inside the next Client's start, its __del__
            # waits for the loop that start is making, and the test hangs (seen once in CI).
            gc.collect()
        with pytest.raises((OSError, CommClosedError)):  # and not in the clear either
            Client(address.replace("tls://", "tcp://"), timeout=3)
        gc.collect()


def test_local_workers_keep_what_they_free_for_reuse(monkeypatch):
    import os

    from dask_quant.cluster.config import ClusterConfig
    from dask_quant.cluster.connect import REUSE_FREED, cluster_client

    names = sorted(REUSE_FREED)
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")  # the user's own setting wins
    with cluster_client(ClusterConfig(workers=1, memory_limit="8GiB")) as client:
        (found,) = client.run(lambda: [os.environ.get(name) for name in names]).values()
    assert dict(zip(names, found, strict=True)) == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "12345"}
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)  # the nanny set it in this process for its child
    with cluster_client(ClusterConfig(workers=1, memory_limit="1GiB")) as client:  # no room: glibc's defaults
        (found,) = client.run(lambda: [os.environ.get(name) for name in names]).values()
    assert found[0] is None


def test_workers_that_die_before_running_anything_end_the_job_with_one_message(tmp_path, monkeypatch):
    """Workers killed as they start (as a memory limit below what they need would) are restarted by
    their nannies forever; the job must end instead of waiting."""
    from distributed.diagnostics.plugin import WorkerPlugin

    from dask_quant.pipeline import calibrate, prepare
    from dask_quant.tasks.errors import DaskQuantError

    class DieAtStart(WorkerPlugin):
        name = "die-at-start"

        def setup(self, worker):
            import os

            os._exit(1)

    monkeypatch.setattr("dask_quant.pipeline.compute.NO_WORKERS_S", 3.0)
    config = RunConfig(model=MODEL, calib=CALIB, out=tmp_path, prepare=False)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as doomed,
    ):
        with contextlib.suppress(Exception):  # the worker it is sent to dies before it can answer
            doomed.register_plugin(DieAtStart())
        with pytest.raises(DaskQuantError, match=r"pass 1 \(ranges\): no worker stayed alive for 3 s before any"):
            calibrate(prepare(config), doomed, chunk_size=50)


def test_layers_none_skips_the_per_layer_pass_and_keeps_the_metrics(client, tmp_path):
    full = run(RunConfig(model=MODEL, calib=CALIB, val=VAL, out=tmp_path / "all", chunk_size=50), client=client)
    config = RunConfig(model=MODEL, calib=CALIB, val=VAL, out=tmp_path / "none", chunk_size=50, layers="none")
    skipped = run(config, client=client)
    assert full.layers and skipped.layers == []
    assert pq.read_table(skipped.run_dir / outputs.LAYERS.name).num_rows == 0
    assert skipped.validation == full.validation  # the model-output metrics do not depend on it
    assert "--layers none" in (skipped.run_dir / REPORT_FILE).read_text()
