"""Each bad input: one clear line, exit code 2, no traceback, and --out left as it was."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from exported import if_only_model, recurrent_data, recurrent_model, squeezed_output_model
from models import digits_paths, with_fixed_batch
from processes import dask_quant

from dask_quant.pipeline.cli import main

MODEL, CALIB, VAL = digits_paths()


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def _run_cli(args, out):
    before = _tree(out)
    result = CliRunner().invoke(main, ["run", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dask-quant: error: "), result.stderr
    assert "Traceback" not in result.output
    assert _tree(out) == before
    return lines[0]


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "runs"
    path.mkdir()
    (path / "earlier-run").mkdir()
    (path / "earlier-run" / "run.json").write_text("{}")
    return path


def _npy(tmp_path, array, name="x.npy"):
    path = tmp_path / name
    np.save(path, array)
    return str(path)


CASES = {
    "unknown method": (lambda t: [str(MODEL), "--calib", str(CALIB), "--method", "kl"], "unknown method 'kl'"),
    "percentile outside (0, 100]": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--method", "percentile", "--percentile", "150"],
        "--percentile must be in (0, 100], got 150.0",
    ),
    "fewer bins than quantized bins": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--method", "entropy", "--num-bins", "64"],
        "--num-bins (64) must be at least --num-quantized-bins (128)",
    ),
    "unknown activation type": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--activation-type", "fp8"],
        "unknown activation type 'fp8'",
    ),
    "--storage-option without a URL": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--storage-option", "endpoint_url=http://127.0.0.1:9"],
        "--storage-option applies to data, models or --out at URLs: none of MODEL, --calib, --val, --out is one",
    ),
    "data at a URL nothing reads": (
        lambda t: [str(MODEL), "--calib", "nosuch://bucket/calib.npz"],
        "nosuch://bucket/calib.npz: not a URL fsspec knows",
    ),
    "unknown metric": (lambda t: [str(MODEL), "--calib", str(CALIB), "--metric", "bleu"], "unknown metric 'bleu'"),
    "no workers asked for": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--workers", "0"],
        "--workers must be at least 1, got 0",
    ),
    "scheduler file missing": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--scheduler-file", str(t / "none.json")],
        "--scheduler-file",
    ),
    "TLS certificate without key": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--tls-cert", str(CALIB)],
        "--tls-cert and --tls-key go together",
    ),
    "chunk size vs fixed batch": (
        lambda t: [str(with_fixed_batch(MODEL, t / "b4.onnx", 4)), "--calib", str(CALIB), "--chunk-size", "6"],
        "--chunk-size 6 is not a multiple of the batch size 4 that model input 'input' fixes",
    ),
    "rows vs fixed batch": (
        lambda t: [str(with_fixed_batch(MODEL, t / "b7.onnx", 7)), "--calib", str(CALIB), "--chunk-size", "7"],
        "300 samples, but model input 'input' fixes the batch size to 7; pass a multiple of 7 samples",
    ),
    "nothing to quantize": (
        lambda t: [_abs_only_model(t), "--calib", str(CALIB)],
        "no operator that ONNX Runtime can quantize (op types: ORT's default list)",
    ),
    "no node of the op types": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--op-types", "Softmax"],
        "no operator that ONNX Runtime can quantize (op types: Softmax)",
    ),
    "unknown op type": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--op-types", "Conv,conv"],
        "--op-types: ONNX Runtime cannot quantize 'conv'; choose from: Add, ArgMax",
    ),
    "unknown excluded node": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--exclude-nodes", "/0/Conv,/9/Conv"],
        "--exclude-nodes: no node named '/9/Conv' in",
    ),
    "missing model": (lambda t: [str(t / "nope.onnx"), "--calib", str(CALIB)], "model file not found: "),
    "not onnx": (lambda t: [_text(t), "--calib", str(CALIB)], "is not an ONNX model"),
    "calib missing option": (lambda t: [str(MODEL)], "--calib is required"),
    "calib file missing": (lambda t: [str(MODEL), "--calib", str(t / "none.npy")], "file not found"),
    "wrong name": (
        lambda t: [str(MODEL), "--calib", _npz(t, pixels=np.zeros((4, 1, 8, 8), np.float32))],
        "no array named 'input' (found: 'pixels')",
    ),
    "wrong rank": (
        lambda t: [str(MODEL), "--calib", _npy(t, np.zeros((4, 8, 8), np.float32))],
        "rank 3 (shape (4, 8, 8)), but model input 'input' has rank 4",
    ),
    "wrong dtype": (
        lambda t: [str(MODEL), "--calib", _npy(t, np.zeros((4, 1, 8, 8), np.float64))],
        "dtype float64, but model input 'input' wants float32",
    ),
    "wrong shape": (
        lambda t: [str(MODEL), "--calib", _npy(t, np.zeros((4, 1, 8, 9), np.float32))],
        "at axis 3 (9 != 8)",
    ),
    "empty calibration": (
        lambda t: [str(MODEL), "--calib", _npy(t, np.zeros((0, 1, 8, 8), np.float32))],
        "holds no samples",
    ),
    "unsupported file": (lambda t: [str(MODEL), "--calib", _text(t, "c.csv")], "unsupported file type '.csv'"),
    "bad chunk size": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--chunk-size", "0"],
        "--chunk-size must be a positive number of rows, got 0",
    ),
    "bad labels": (
        lambda t: [
            str(MODEL),
            "--calib",
            str(CALIB),
            "--val",
            _npz(t, input=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(3, np.int64)),
        ],
        "[labels]: want one integer class per sample, shape (4,); got shape (3,) of int64",
    ),
    "labels per class": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--val", _val_with_labels(t, np.zeros((4, 2), np.int64))],
        "[labels]: want one integer class per sample, shape (4,); got shape (4, 2) of int64",
    ),
    "float labels": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--val", _val_with_labels(t, np.zeros(4, np.float32))],
        "got shape (4,) of float32",
    ),
    "sequence input": (
        lambda t: [_sequence_input_model(t), "--calib", str(CALIB)],
        "model input 'input' is a sequence, not a tensor",
    ),
    "control flow only, found before the data": (
        lambda t: [str(if_only_model(t / "if.onnx")), "--calib", _npz(t, pixels=np.zeros((4, 1, 8, 8), np.float32))],
        "every quantizable operator is inside control flow (If 'branch/If'), and ONNX Runtime's quantizer does "
        "not enter the subgraphs of If, Loop and Scan",
    ),
    "scalar input without a value": (
        lambda t: [str(recurrent_model(t / "rnn.onnx")), "--calib", str(recurrent_data(t / "c.npz", 8, 1))],
        "model input 'sr' takes one value for every sample; pass --const-input sr=VALUE, or store it in a .npz",
    ),
    "scalar stored per sample": (
        lambda t: [
            str(recurrent_model(t / "rnn.onnx")),
            "--calib",
            str(recurrent_data(t / "c.npz", 8, 1, sr=np.ones(8, np.float32))),
        ],
        "[sr]: shape (8,), but constant input 'sr' has shape () (no sample axis)",
    ),
    "batch axis of an unknown input": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--batch-axis", "state=1"],
        "--batch-axis: the model has no input 'state' (inputs: input)",
    ),
    "batch axis outside the rank": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--batch-axis", "input=4"],
        "--batch-axis input=4: input 'input' has rank 4, so the axis must be 0..3",
    ),
    "malformed NAME=VALUE": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--batch-axis", "input:1"],
        "--batch-axis 'input:1': expected NAME=VALUE with an integer axis",
    ),
    "constant that is not a number": (
        lambda t: [str(recurrent_model(t / "rnn.onnx")), "--calib", str(CALIB), "--const-input", "sr=fast"],
        "--const-input sr=fast: not a float32 value; pass a finite number",
    ),
    "labels key that is a model input": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--val", str(VAL), "--labels-key", "input"],
        "--labels-key 'input' is the name of a model input; save the labels under another name",
    ),
    "no output with one row per sample": (
        lambda t: [str(squeezed_output_model(MODEL, t / "squeezed.onnx")), "--calib", str(CALIB), "--val", str(VAL)],
        "no floating-point output has one row per sample (outputs: flat [10]), so FP32 and INT8 outputs cannot",
    ),
    "Fortran-order array": (
        lambda t: [str(MODEL), "--calib", _npy(t, np.asfortranarray(np.zeros((4, 1, 8, 8), np.float32)))],
        "stored in Fortran order; save it C-contiguous (numpy.ascontiguousarray) to read by rows",
    ),
    "memory limit below what a worker needs": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--memory-limit", "1MiB"],
        "--memory-limit 1MiB: 1048576 bytes is less than a worker needs to start (256 MiB at least; a number without",
    ),
    "memory limit that is not a size": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--memory-limit", "lots"],
        "--memory-limit 'lots': not a size; pass for example 4GiB, auto, or 0 for no limit",
    ),
    "connect timeout that is not a number": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--connect-timeout", "nan"],
        "--connect-timeout must be a positive number of seconds, got nan",
    ),
    "scheduler file without an address": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--scheduler-file", _text(t, "s.json", '["tcp://x:1"]')],
        "no scheduler address in it (TypeError); pass the file that `dask scheduler --scheduler-file` wrote",
    ),
    "input of an undefined element type": (
        lambda t: [_undefined_type_model(t), "--calib", str(CALIB)],
        "model input 'input' has element type 0, which is undefined or has no numpy equivalent",
    ),
    "unknown op type in --fp32-outputs": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--fp32-outputs", "matmul"],
        "--fp32-outputs: ONNX Runtime cannot quantize 'matmul'; choose from: Add, ArgMax",
    ),
    "SmoothQuant alpha outside (0, 1]": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--smooth-quant", "0"],
        "--smooth-quant 0.0: alpha must be in (0, 1]; 0.5 is the usual choice",
    ),
    "SmoothQuant with nothing to smooth": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--op-types", "Conv", "--smooth-quant", "0.5"],
        "so there is nothing to smooth; drop --smooth-quant",
    ),
    "unknown layers mode": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--layers", "some"],
        "--layers must be all or none, got 'some'",
    ),
    "misspelled labels key": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--val", str(VAL), "--labels-key", "lables"],
        "no array named 'lables' for --labels-key; check its spelling",
    ),
    "constant that is not finite": (
        lambda t: [str(recurrent_model(t / "rnn.onnx")), "--calib", str(CALIB), "--const-input", "sr=nan"],
        "--const-input sr=nan: not a float32 value; pass a finite number",
    ),
    "quality guard without validation data": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--min-cosine", "0.99"],
        "--min-cosine/--max-drop judge the validation results: pass --val",
    ),
    "accuracy guard without labels": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--val", _val_without_labels(t), "--max-drop", "1"],
        "has no labels; use --min-cosine",
    ),
    "malformed scheduler address": (
        lambda t: [str(MODEL), "--calib", str(CALIB), "--scheduler", "garbage", "--connect-timeout", "2"],
        "could not reach the Dask scheduler at garbage within 2 s",
    ),
}


def _val_without_labels(tmp_path):
    return _npz(tmp_path, input=np.zeros((4, 1, 8, 8), np.float32))


def _val_with_labels(tmp_path, labels):
    return _npz(tmp_path, input=np.zeros((4, 1, 8, 8), np.float32), labels=labels)


def _sequence_input_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("SequenceAt", ["input", "zero"], ["out"])],
        "seq",
        [helper.make_tensor_sequence_value_info("input", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor("zero", TensorProto.INT64, [], [0])],
    )
    path = tmp_path / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def _abs_only_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Abs", ["input"], ["out"])],
        "abs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 1, 8, 8])],
    )
    path = tmp_path / "abs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def _text(tmp_path, name="model.onnx", text="this is not a model\n" * 20):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _undefined_type_model(tmp_path):
    import onnx

    proto = onnx.load(str(MODEL))
    proto.graph.input[0].type.tensor_type.elem_type = 0
    path = tmp_path / "undefined.onnx"
    onnx.save(proto, str(path))
    return str(path)


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(case, tmp_path, out):
    make_args, expected = CASES[case]
    line = _run_cli(make_args(tmp_path), out)
    assert expected in line


OUT_AT_A_URL = {
    "--resume with --out at a URL": (
        ["--out", "s3://bucket/runs", "--resume"],
        "--resume reads the chunk checkpoints kept under a local --out; --out s3://bucket/runs is a URL, where none "
        "are kept: run without --resume",
    ),
    "--out at a URL runs cannot be published to": (
        ["--out", "http://127.0.0.1:9/bucket/runs"],
        "--out http://127.0.0.1:9/bucket/runs: http:// cannot hold published runs; publish to s3://, gs://, az:// "
        "or a folder",
    ),
    "--out at a URL without its backend": (
        ["--out", "gs://bucket/runs"],
        "gs://bucket/runs: gs:// needs gcsfs, installed on the client and on every worker",
    ),
}


@pytest.mark.parametrize("case", sorted(OUT_AT_A_URL))
def test_bad_out_at_a_url_is_one_line_and_leaves_no_local_folder(case):
    import tempfile

    if "backend" in case:
        assert importlib.util.find_spec("gcsfs") is None, "this case needs a backend that is not installed"
    args, expected = OUT_AT_A_URL[case]
    folders = set(Path(tempfile.gettempdir()).glob("dask-quant-out-*"))
    result = CliRunner().invoke(main, ["run", str(MODEL), "--calib", str(CALIB), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"dask-quant: error: {expected}"], result.output
    assert set(Path(tempfile.gettempdir()).glob("dask-quant-out-*")) == folders


def test_a_storage_option_the_backend_refuses_is_one_line():
    pytest.importorskip("s3fs")
    args = ["run", str(MODEL), "--calib", str(CALIB), "--out", "s3://bucket/runs", "--storage-option", "nosuchkw=1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("dask-quant: error: --out s3://bucket/runs: its filesystem refuses the options"), line
    assert "nosuchkw" in line and line.endswith("check --storage-option"), line


def test_the_zoo_refuses_an_out_at_a_url(tmp_path):
    result = CliRunner().invoke(main, ["zoo", "run", "--out", "s3://bucket/zoo"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "dask-quant: error: --out s3://bucket/zoo: the zoo keeps its history in a local folder (or one all workers "
        "see), where nights append under a lock; its models and data may be URLs"
    ]
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()


def test_out_that_does_not_exist_is_not_created_on_error(tmp_path):
    out = tmp_path / "new" / "runs"
    _run_cli([str(MODEL), "--calib", str(tmp_path / "none.npy")], out)
    assert not (tmp_path / "new").exists()


def test_unwritable_out(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        line = _run_cli([str(MODEL), "--calib", str(CALIB)], blocker / "runs")
        assert "is a file, not a directory" in line
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "is not writable" in _run_cli([str(MODEL), "--calib", str(CALIB)], locked)


def test_real_process_prints_no_traceback(tmp_path):
    proc = dask_quant("run", tmp_path / "missing.onnx", "--calib", CALIB, "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"dask-quant: error: model file not found: {tmp_path / 'missing.onnx'}; pass the path of an .onnx file"
    )
    assert proc.stdout == "" and not (tmp_path / "o").exists()


def test_big_endian_data_is_not_a_dtype_mismatch(tmp_path):
    from dask_quant.pipeline.config import RunConfig
    from dask_quant.pipeline.stages.prepare import prepare

    path = tmp_path / "be.npy"
    np.save(path, np.load(CALIB).astype(">f4"))
    assert prepare(RunConfig(model=MODEL, calib=path, prepare=False)).calib.rows == 300
