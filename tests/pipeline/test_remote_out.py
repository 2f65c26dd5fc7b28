"""Publishing to --out at a URL (fsspec's memory:// here; S3 in tests/cluster/test_object_storage.py): every
file before run.json, nothing left when an upload fails, nothing overwritten, the workers' models removed."""

from __future__ import annotations

import re

import fsspec
import pytest

from dask_quant.pipeline.remote_out import RemoteOut, check_out_url, upload_model
from dask_quant.pipeline.results import RUN_FILE
from dask_quant.tasks import storage
from dask_quant.tasks.digest import sha256_bytes
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.sessions import ModelRef


def _run_dir(tmp_path):
    run = tmp_path / "digits-minmax-1"
    (run / "tensorrt").mkdir(parents=True)
    names = (RUN_FILE, "model.int8.onnx", "qparams.parquet", "validation.parquet", "tensorrt/calibration.flatbuffers")
    for name in names:
        (run / name).write_bytes(name.encode())
    return run


@pytest.fixture
def memory():
    fs = fsspec.filesystem("memory")
    yield fs
    fs.rm("/out", recursive=True) if fs.exists("/out") else None


def test_run_json_is_uploaded_last_and_the_run_is_whole(tmp_path, memory, monkeypatch):
    uploaded = []
    put = storage.put_file
    monkeypatch.setattr(storage, "put_file", lambda path, url, option: (uploaded.append(url), put(path, url, option)))
    out = RemoteOut("memory://out/")
    try:
        final = out.publish(_run_dir(tmp_path))
    finally:
        out.close()
    assert final == "memory://out/digits-minmax-1"
    assert uploaded[-1] == f"{final}/{RUN_FILE}" and len(uploaded) == 5
    assert memory.cat(f"/out/digits-minmax-1/{RUN_FILE}") == RUN_FILE.encode()
    assert memory.cat("/out/digits-minmax-1/tensorrt/calibration.flatbuffers") == b"tensorrt/calibration.flatbuffers"
    again = RemoteOut("memory://out")
    with pytest.raises(FileExistsError, match="nothing was overwritten"):
        again.publish(_run_dir(tmp_path / "again"))
    again.close()
    assert not again.local.exists()


def test_a_failed_upload_leaves_no_run_and_nothing_of_it(tmp_path, memory, monkeypatch):
    put = storage.put_file
    calls = []

    def failing(path, url, option):
        calls.append(url)
        if len(calls) == 3:
            msg = "connection reset"
            raise OSError(msg)
        put(path, url, option)

    monkeypatch.setattr(storage, "put_file", failing)
    out = RemoteOut("memory://out")
    with pytest.raises(OSError, match="connection reset"):
        out.publish(_run_dir(tmp_path))
    out.close()
    assert not memory.exists("/out/digits-minmax-1")


def test_models_for_workers_are_uploaded_by_digest_and_removed_at_close(tmp_path, memory):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really a model")
    out = RemoteOut("memory://out")
    out.check()
    ref = upload_model(ModelRef(str(model), sha256_bytes(model.read_bytes())), out.models)
    assert ref.url == f"{out.models}/{ref.sha256}.onnx" and ref.path == str(model)
    assert storage.read_remote(ref.url) == model.read_bytes()
    assert upload_model(ref, out.models) is ref
    out.close()
    assert not memory.exists(out.models.removeprefix("memory://")) and not out.local.exists()


def test_a_model_with_external_data_is_not_uploaded_for_workers(tmp_path, memory):
    """Workers read an uploaded model from its one object: a model over 2 GiB (or one with external data and
    --no-prepare) needs a local --out; nothing is uploaded."""
    import onnx
    from models import digits_paths

    model = tmp_path / "e.onnx"
    onnx.save(onnx.load(str(digits_paths()[0])), str(model), save_as_external_data=True, size_threshold=0)
    out = RemoteOut("memory://out")
    out.check()
    with pytest.raises(InputError, match="external data files.*pass a local --out that every worker sees"):
        upload_model(ModelRef(str(model), "0" * 64), out.models)
    assert not memory.exists(out.models.removeprefix("memory://"))
    out.close()


def test_an_out_without_its_backend_is_one_line_and_leaves_nothing(monkeypatch):
    def missing(url):
        msg = f"{url}: gs:// needs gcsfs, installed on the client and on every worker"
        raise InputError(msg)

    monkeypatch.setattr(storage, "_filesystem", missing)
    out = RemoteOut("gs://bucket/runs")
    with pytest.raises(InputError, match="^gs://bucket/runs: gs:// needs gcsfs"):
        out.check()
    out.close()  # the store is unreachable: closing still removes the local folder, and raises nothing
    assert not out.local.exists()


def test_a_model_at_a_url_is_read_whole_and_refused_with_external_data(tmp_path, memory):
    import onnx
    from models import digits_paths

    from dask_quant.pipeline.model_files import load_remote_model

    model_path, _, _ = digits_paths()
    memory.put(str(model_path), "/out/digits.onnx")
    proto, ref = load_remote_model("memory://out/digits.onnx")
    assert ref.sha256 == sha256_bytes(model_path.read_bytes()) and ref.url == ref.path == "memory://out/digits.onnx"
    assert len(proto.graph.node) == len(onnx.load(str(model_path)).graph.node)
    memory.pipe("/out/text.onnx", b"hello")
    with pytest.raises(InputError, match="^memory://out/text.onnx is not an ONNX model"):
        load_remote_model("memory://out/text.onnx")
    external = onnx.load(str(model_path))
    onnx.save(external, str(tmp_path / "e.onnx"), save_as_external_data=True, size_threshold=0, location="e.data")
    memory.put(str(tmp_path / "e.onnx"), "/out/e.onnx")
    with pytest.raises(InputError, match="its weights are in external data files.*download the model with its data"):
        load_remote_model("memory://out/e.onnx")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:9/bucket/runs", "http:// cannot hold published runs"),
        ("memory://runs", "memory:// cannot hold published runs"),
        ("s3://", "give a bucket"),
        ("s3:///", "give a bucket"),
        ("s3://bucket//runs", "without empty parts"),
    ],
)
def test_an_out_url_runs_cannot_be_published_to_is_refused(url, why):
    with pytest.raises(InputError, match=f"^--out {re.escape(url)}: .*{why}"):
        check_out_url(url)
    check_out_url("s3://bucket/runs/")  # a trailing slash is fine


def test_clean_up_asks_the_store_nothing_after_a_failed_check_and_never_raises(monkeypatch):
    asked = []

    def unreachable(url, data, option):
        msg = f"{url}: cannot be written (ReadTimeoutError: no answer)"
        raise InputError(msg)

    monkeypatch.setattr(storage, "put_bytes", unreachable)
    monkeypatch.setattr(storage, "remove", lambda url: asked.append(url))
    out = RemoteOut("s3://bucket/runs")
    with pytest.raises(InputError, match="^s3://bucket/runs: cannot be written"):
        out.check()
    out.close()  # a store that did not answer the probe is not asked again (a second long wait)
    assert asked == [] and not out.local.exists()

    monkeypatch.setattr(storage, "put_bytes", lambda url, data, option: None)

    def failing(url):
        msg = "botocore's own exception type"
        raise RuntimeError(msg)

    monkeypatch.setattr(storage, "remove", failing)
    out = RemoteOut("s3://bucket/runs")
    with pytest.raises(RuntimeError):
        out.check()  # the probe's removal is the store's call: its failure is not swallowed there
    out.close()  # but clean-up never raises over the failure that ended the run
    assert not out.local.exists()


def test_models_of_jobs_killed_days_ago_are_swept_and_those_of_running_jobs_kept(memory, monkeypatch):
    import time

    from dask_quant.pipeline import remote_out

    for token in ("killed", "running"):
        memory.pipe(f"/out/.work/{token}/model.onnx", b"x")
    stamps = storage.modified("memory://out/.work")
    assert sorted(name.rsplit("/", 2)[1] for name in stamps) == ["killed", "running"]
    assert all(time.time() - stamp < 60 for stamp in stamps.values())
    (killed,) = (name for name in stamps if "/killed/" in name)
    days_ago = time.time() - remote_out.STALE_AFTER_S - 60
    monkeypatch.setattr(storage, "modified", lambda url: {**stamps, killed: days_ago})
    out = RemoteOut("memory://out")
    out.check()
    out.close()
    assert not memory.exists("/out/.work/killed") and memory.exists("/out/.work/running/model.onnx")
