"""Calibration and validation data on a real S3 endpoint (moto's standalone server on 127.0.0.1, s3fs as
the client): `dask scheduler` and `dask worker` processes started in a folder that holds no data read it
by URL, and the parameters are bit-identical to the same job on local files."""

from __future__ import annotations

import json
import logging
import os
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from models import digits_paths
from processes import dask_processes, dask_quant

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

MODEL, CALIB, VAL = digits_paths()
BUCKET = "dq-data"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server on loopback, credentials and endpoint in the environment (the client and the worker
    processes started after it read them, as they would read a real deployment's), the digits data in it."""
    import fsspec

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    try:
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        fs.put(str(CALIB), f"{BUCKET}/digits/calib.npy")
        fs.put(str(MODEL), f"{BUCKET}/models/digits.onnx")
        fs.put(str(VAL), f"{BUCKET}/digits/val.npz")
        folder = tmp_path_factory.mktemp("parquet")
        with np.load(VAL) as arrays:
            images, labels = arrays["input"], arrays["labels"]
        for part, rows in enumerate((slice(0, 120), slice(120, None))):
            tensors = pa.FixedShapeTensorArray.from_numpy_ndarray(images[rows])
            table = pa.table({"input": tensors, "labels": labels[rows]})
            pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=50)
            fs.put(str(folder / f"part-{part}.parquet"), f"{BUCKET}/digits/val/part={part}/rows.parquet")
        import boto3  # a folder's marker object, as S3 consoles and Hadoop's s3a write them: not data

        boto3.client("s3").put_object(Bucket=BUCKET, Key="digits/val/", Body=b"")
        yield fs
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


def _qparams(out):
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    table = pq.read_table(run_dir / "qparams.parquet").drop_columns(["run_id"])
    return table, json.loads((run_dir / "run.json").read_text()), run_dir


def test_workers_without_the_data_read_it_from_s3_with_identical_parameters(s3, tmp_path):
    elsewhere = tmp_path / "workers"
    elsewhere.mkdir()
    with dask_processes(tmp_path, cwd=elsewhere) as cluster:
        scheduler = ("--scheduler-file", cluster.scheduler_file)
        for name, val in (("npz", f"s3://{BUCKET}/digits/val.npz"), ("parquet", f"s3://{BUCKET}/digits/val")):
            proc = dask_quant(
                "run", MODEL, "--calib", f"s3://{BUCKET}/digits/calib.npy", "--val", val,
                "--chunk-size", "37", "--out", tmp_path / name, *scheduler,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
        proc = dask_quant("run", MODEL, "--calib", CALIB, "--val", VAL, "--out", tmp_path / "local", *scheduler)
        assert proc.returncode == 0, proc.stderr
    local, _, _ = _qparams(tmp_path / "local")
    for name in ("npz", "parquet"):
        remote, record, run_dir = _qparams(tmp_path / name)
        assert remote.equals(local), name
        assert record["data"]["calib"]["path"] == f"s3://{BUCKET}/digits/calib.npy"
        validation = pq.read_table(run_dir / "validation.parquet")
        assert sum(validation.column("samples").to_pylist()) == 300
    assert not list(elsewhere.iterdir())  # the workers wrote nothing where they run


def test_a_missing_object_is_one_line_and_exit_2(s3, tmp_path):
    proc = dask_quant("run", MODEL, "--calib", f"s3://{BUCKET}/digits/nothing.npz", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"dask-quant: error: --calib s3://{BUCKET}/digits/nothing.npz: file not found; pass an existing .npz, .npy "
        "or .parquet file (or a folder of them)"
    ]
    assert not (tmp_path / "o").exists()


def test_a_changed_object_is_refused_by_the_worker_that_reads_it(s3, tmp_path):
    """Object storage cannot rename: a rewritten object has another ETag, and the worker refuses it."""
    from dask_quant.tasks.chunks import read_feeds
    from dask_quant.tasks.errors import InputError

    url = f"s3://{BUCKET}/digits/changing.npy"
    s3.put(str(CALIB), url)
    from dask_quant.pipeline.config import RunConfig
    from dask_quant.pipeline.stages.prepare import dataset_chunks, prepare

    prepared = prepare(RunConfig(model=MODEL, calib=url, prepare=False))
    (chunk, *_) = dataset_chunks(prepared.calib, 64)
    assert read_feeds(chunk)["input"].shape == (64, 1, 8, 8)
    np.save(tmp_path / "other.npy", np.zeros((300, 1, 8, 8), np.float32) + 1)
    s3.put(str(tmp_path / "other.npy"), url)
    with pytest.raises(InputError, match="changed since the run started"):
        read_feeds(chunk)


def test_out_at_a_url_workers_read_the_models_there_and_the_run_appears_whole(s3, tmp_path):
    """MODEL, data and --out all at s3://: workers in a folder that holds nothing read the prepared and the
    INT8 model from the bucket (moto's access log), the run is published there with run.json, and its
    parameters are those of the same job on local files; the models uploaded for the workers are gone after."""
    requests: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: requests.append(record.getMessage())
    access_log = logging.getLogger("werkzeug")
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    elsewhere = tmp_path / "workers"
    elsewhere.mkdir()
    try:
        with dask_processes(tmp_path, cwd=elsewhere) as cluster:
            at = f"s3://{BUCKET}"
            scheduler = ("--scheduler-file", cluster.scheduler_file)
            remote = dask_quant(
                "run", f"{at}/models/digits.onnx", "--calib", f"{at}/digits/calib.npy", "--val", f"{at}/digits/val.npz",
                "--out", f"{at}/runs", *scheduler,
            )  # fmt: skip
            local = dask_quant("run", MODEL, "--calib", CALIB, "--val", VAL, "--out", tmp_path / "local", *scheduler)
    finally:
        access_log.removeHandler(handler)
    assert remote.returncode == 0, remote.stderr
    assert local.returncode == 0, local.stderr
    (manifest,) = s3.glob(f"{BUCKET}/runs/*/run.json")
    run = manifest.rsplit("/", 1)[0]
    assert f"written to       s3://{run}" in remote.stdout
    published = {key.removeprefix(run + "/") for key in s3.find(run)}
    assert {"run.json", "model.int8.onnx", "model.fp32.onnx", "qparams.parquet", "report.html"} <= published
    assert s3.find(f"{BUCKET}/runs/.work") == []
    models_read = [line for line in requests if f"GET /{BUCKET}/runs/.work/" in line and ".onnx" in line]
    assert len(models_read) >= 2, requests[-20:]  # the FP32 and the INT8 model, by the workers
    import onnxruntime as ort

    ort.InferenceSession(s3.cat(f"{run}/model.int8.onnx"), providers=["CPUExecutionProvider"])
    with s3.open(f"{run}/qparams.parquet", "rb") as handle:
        remote_qparams = pq.read_table(handle).drop_columns(["run_id"])
    assert remote_qparams.equals(_qparams(tmp_path / "local")[0])
    record = json.loads(s3.cat(manifest))
    assert record["config"]["out"] == f"s3://{BUCKET}/runs"
    assert record["model"]["path"] == f"s3://{BUCKET}/models/digits.onnx"
    assert not list(elsewhere.iterdir())


def test_storage_options_reach_the_client_and_every_worker(s3, tmp_path):
    """Without AWS_* in anyone's environment, --storage-option alone gives the endpoint and credentials: to
    the client, and to workers through the scheduler (a worker that starts later gets them too); run.json
    keeps the keys only."""
    at = f"s3://{BUCKET}"
    endpoint, secret = os.environ["AWS_ENDPOINT_URL"], os.environ["AWS_SECRET_ACCESS_KEY"]
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    options = (
        "--storage-option", f"endpoint_url={endpoint}", "--storage-option", "key=testing",
        "--storage-option", f"secret={secret}", "--storage-option", 'client_kwargs={"region_name": "us-east-1"}',
    )  # fmt: skip
    elsewhere = tmp_path / "workers"
    elsewhere.mkdir()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(bare)
    try:
        with dask_processes(tmp_path, cwd=elsewhere) as cluster:
            job = ("run", f"{at}/models/digits.onnx", "--calib", f"{at}/digits/calib.npy")
            scheduler = ("--scheduler-file", cluster.scheduler_file)
            without = dask_quant(*job, "--out", tmp_path / "without", *scheduler)
            # Only --out is a URL here: the workers read the models the client uploads there with the options.
            given = dask_quant("run", MODEL, "--calib", CALIB, "--out", f"{at}/with-options", *options, *scheduler)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert without.returncode == 2, without.stderr  # no credentials, no endpoint: one line
    line = without.stderr.strip().splitlines()[-1]
    assert line.startswith(f"dask-quant: error: {at}/models/digits.onnx: no credentials"), without.stderr
    assert given.returncode == 0, given.stderr
    (manifest,) = s3.glob(f"{BUCKET}/with-options/*/run.json")
    record = json.loads(s3.cat(manifest))
    assert record["config"]["storage_options"] == ["endpoint_url", "key", "secret", "client_kwargs"]
    assert secret not in s3.cat(manifest).decode()


def test_a_zoo_of_urls_runs_and_a_second_night_reuses_it_by_etag(s3, tmp_path):
    """A manifest whose model and data are all at s3://: the job runs, and the next night, nothing having
    changed (keys, sizes and ETags), reuses its result; a rewritten calibration object is a change."""
    from distributed import Client, LocalCluster

    from dask_quant.pipeline.zoo import ZooConfig, zoo_run

    at = f"s3://{BUCKET}"
    manifest = tmp_path / "zoo.toml"
    manifest.write_text(
        f'[[model]]\nname = "digits"\nmodel = "{at}/models/digits.onnx"\ncalib = "{at}/zoo/calib.npy"\n'
        f'val = "{at}/digits/val.npz"\nmethods = ["minmax"]\n'
    )
    s3.put(str(CALIB), f"{BUCKET}/zoo/calib.npy")
    nights = []
    # Worker processes started after the fixture set AWS_*: they read the bucket as the client does.
    with LocalCluster(n_workers=1, threads_per_worker=1, silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        for night in ("2026-07-01", "2026-07-02", "2026-07-03"):
            if night == "2026-07-03":
                np.save(tmp_path / "calib.npy", np.load(CALIB)[:200])
                s3.put(str(tmp_path / "calib.npy"), f"{BUCKET}/zoo/calib.npy")
            result = zoo_run(ZooConfig(manifest, tmp_path / "zoo", night=night), client=c, log=lambda _: None)
            assert result.exit_code == 0, [(row["status"], row["error"]) for row in result.rows]
            nights.append(result.rows[0])
    assert [(row["status"], row["reused"]) for row in nights] == [("ok", False), ("ok", True), ("ok", False)]
    assert json.loads(nights[2]["changed"]) == ["calib"]
