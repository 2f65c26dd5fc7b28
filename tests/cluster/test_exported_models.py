"""Models as other tools export them, run as a user would: `dask-quant run` on a LocalCluster.

Each model is one of ours rewritten with onnx.helper to look like another
exporter's (tests/exported.py). A run either publishes an INT8 model that
ONNX Runtime loads, with weights quantized and finite outputs, or exits 2
with one line and publishes nothing.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from exported import (
    argmax_first_model,
    if_only_model,
    masked_attention_model,
    offset_model,
    recurrent_data,
    recurrent_model,
    token_model,
    where_model,
    with_constant_weights,
    with_destroyed_layer,
    with_if_head,
    with_opset,
)
from models import build_float16_model, digits_paths, load_arrays, with_fixed_batch
from onnxruntime.quantization import QuantType
from processes import dask_processes, dask_quant
from reference import model_signature, reference_model

from dask_quant.pipeline import results
from dask_quant.pipeline.outputs import CALIBRATION, LAYERS, QPARAMS
from dask_quant.pipeline.preparation import default_opset
from dask_quant.pipeline.selection import default_op_types

MODEL, CALIB, VAL = digits_paths()
# dask-quant's defaults spelled out for quantize_static (whose own activation default is int8).
DEFAULT_REFERENCE = {"per_channel": True, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8}


_SHARED: list[str] = []  # the module's cluster: --scheduler-file of the fixture below


@pytest.fixture(scope="module", autouse=True)
def _shared_cluster(tmp_path_factory):
    """One `dask scheduler` and two `dask worker` processes for every run of this module: each run connects
    instead of starting a LocalCluster of its own (what the runs test is the model, not the cluster)."""
    with dask_processes(tmp_path_factory.mktemp("cluster")) as cluster:
        _SHARED[:] = ["--scheduler-file", str(cluster.scheduler_file)]
        yield
        _SHARED.clear()


def _cli(*args):
    """`dask-quant ARGS` on the module's cluster."""
    return dask_quant(*map(str, args), *_SHARED)


def _runs(out):
    return sorted(p for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []


def _refused(out, *args) -> str:
    """Run, expect exit 2 with one line and nothing published; return the line."""
    done = _cli("run", *args, "--out", out)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("dask-quant: error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert _runs(out) == [] and not (out / results.WORK).exists(), list(out.rglob("*"))
    return errors[0]


def _published(out, *args):
    done = _cli("run", *args, "--out", out)
    assert done.returncode == 0, done.stderr
    (run_dir,) = _runs(out)
    assert not (out / results.WORK).exists()  # the prepared model and checkpoints are gone
    return run_dir, done


def _weights(run_dir) -> int:
    import pyarrow.parquet as pq

    return sum(kind == "weight" for kind in pq.read_table(run_dir / QPARAMS.name).column("kind").to_pylist())


def test_constant_node_weights_at_opset_12_are_quantized_after_preparation(tmp_path):
    model = with_constant_weights(MODEL, tmp_path / "paddle_style.onnx", opset=12)
    run_dir, done = _published(tmp_path / "runs", model, "--calib", CALIB, "--val", VAL)
    assert "8 Constant nodes folded into initializers" in done.stderr
    assert "opset 12 -> 13" in done.stderr
    assert _weights(run_dir) == 8 and "0 weights" not in done.stdout  # 4 weights, 4 biases
    prepared = run_dir / results.FP32_FILE
    assert default_opset(onnx.load(str(prepared))) == 13
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    assert record["preparation"]["file"] == results.FP32_FILE and len(record["preparation"]["steps"]) >= 3

    import onnxruntime as ort

    ort.InferenceSession(str(run_dir / results.MODEL_FILE))  # loads
    reference = reference_model(
        prepared, load_arrays(CALIB, ["input"]), 300, DEFAULT_REFERENCE, tmp_path / "reference.onnx"
    )
    assert model_signature(run_dir / results.MODEL_FILE) == model_signature(reference)


def test_constant_node_weights_without_preparation_are_stopped_by_the_gate(tmp_path):
    model = with_constant_weights(MODEL, tmp_path / "paddle_style.onnx", opset=12)
    line = _refused(tmp_path / "runs", model, "--calib", CALIB, "--no-prepare")
    assert "opset 12, but per-channel weights need opset 13" in line  # the same model as above, as given
    line = _refused(tmp_path / "runs", model, "--calib", CALIB, "--no-prepare", "--per-tensor")
    assert "activations were quantized but none of the weights of 4" in line
    assert "drop --no-prepare" in line and "Nothing was published" in line


@pytest.mark.parametrize("opset", [10, 12])
def test_old_opset_with_per_channel_is_upgraded_and_bit_identical(opset, tmp_path):
    model = with_opset(MODEL, tmp_path / f"opset{opset}.onnx", opset)
    run_dir, done = _published(tmp_path / "runs", model, "--calib", CALIB)
    assert f"opset {opset} -> 13" in done.stderr
    prepared = run_dir / results.FP32_FILE
    reference = reference_model(
        prepared, load_arrays(CALIB, ["input"]), 300, DEFAULT_REFERENCE, tmp_path / "reference.onnx"
    )
    assert model_signature(run_dir / results.MODEL_FILE) == model_signature(reference)


def test_old_opset_with_per_channel_and_no_preparation_is_refused(tmp_path):
    model = with_opset(MODEL, tmp_path / "opset12.onnx", 12)
    line = _refused(tmp_path / "runs", model, "--calib", CALIB, "--val", VAL, "--no-prepare")
    assert "opset 12, but per-channel weights need opset 13 (ONNX Runtime could not load the INT8 model)" in line
    assert "drop --no-prepare" in line and "--per-tensor" in line and ".staging" not in line


def test_an_activation_overflowing_to_inf_on_one_row_is_refused_with_tensor_and_row(tmp_path):
    data = np.load(CALIB)[:120].copy()
    data[77] = 3e38  # finite input; the first convolution overflows
    calib = tmp_path / "overflow.npy"
    np.save(calib, data)
    line = _refused(tmp_path / "runs", MODEL, "--calib", calib, "--chunk-size", "50")
    assert "tensor '/0/Conv_output_0' is NaN or infinite on row(s) 77 of" in line
    assert "(chunk rows 50..100)" in line


@pytest.mark.parametrize("state", ["inferred", "flags", "fixed batch"])
def test_recurrent_model_with_a_state_and_a_scalar_runs_end_to_end(state, tmp_path):
    model = recurrent_model(tmp_path / "rnn.onnx", batch=4 if state == "fixed batch" else "batch")
    if state == "fixed batch":  # [2, 4, H]: nothing says which axis holds the samples but the flag
        sr = {"sr": np.array(2.0, np.float32)}
        calib, val = recurrent_data(tmp_path / "c.npz", 96, 1, **sr), recurrent_data(tmp_path / "v.npz", 40, 2, **sr)
        flags = ["--batch-axis", "h0=1"]
    elif state == "inferred":  # h0's batch axis from its dim name, sr from a 0-d array in the data
        sr = {"sr": np.array(2.0, np.float32)}
        calib, val = recurrent_data(tmp_path / "c.npz", 96, 1, **sr), recurrent_data(tmp_path / "v.npz", 40, 2, **sr)
        flags = []
    else:
        calib, val = recurrent_data(tmp_path / "c.npz", 96, 1), recurrent_data(tmp_path / "v.npz", 40, 2)
        flags = ["--batch-axis", "h0=1", "--const-input", "sr=2.0"]
    run_dir, done = _published(tmp_path / "runs", model, "--calib", calib, "--val", val, "--chunk-size", "24", *flags)
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    assert record["summary"]["samples"] == 40
    assert record["summary"]["mean_cosine"] > 0.99
    import pyarrow.parquet as pq

    layers = {row["tensor"]: row for row in pq.read_table(run_dir / LAYERS.name).to_pylist()}
    assert layers["h0"]["sqnr_db"] > 35  # a graph input's own 8-bit error: FP32 and INT8 values paired right

    # The same ranges as ONNX Runtime's calibrator fed the arrays in the model's own layout.
    from reference import reference_ranges

    arrays = load_arrays(calib, ["x", "h0"])
    step, sr_value = (4 if state == "fixed batch" else 96), np.array(2, np.float32)
    feeds = [
        {"x": arrays["x"][i : i + step], "h0": arrays["h0"][i : i + step].transpose(1, 0, 2), "sr": sr_value}
        for i in range(0, 96, step)
    ]
    op_types = list(default_op_types())
    expected = reference_ranges(run_dir / results.FP32_FILE, feeds, step, op_types, tmp_path)
    ours = {
        r["tensor"]: (r["observed_min"], r["observed_max"])
        for r in pq.read_table(run_dir / CALIBRATION.name).to_pylist()
    }
    assert sorted(ours) == sorted(expected.keys())
    for name, (low, high) in ours.items():
        assert (low, high) == (float(expected[name].lowest[0]), float(expected[name].highest[0])), name


def test_fixed_batch_of_three_gets_a_default_chunk_size_it_divides(tmp_path):
    model = with_fixed_batch(MODEL, tmp_path / "batch3.onnx", 3)
    run_dir, _ = _published(tmp_path / "runs", model, "--calib", CALIB)
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    assert record["config"]["chunk_size"] == 66 and record["data"]["calib"]["chunks"] == 5


def test_quality_guard_fails_after_publishing_and_names_the_destroyed_layer(tmp_path):
    model = with_destroyed_layer(MODEL, tmp_path / "destroyed.onnx")
    out = tmp_path / "runs"
    done = _cli("run", model, "--calib", CALIB, "--val", VAL, "--out", out, "--min-cosine", "0.99")
    assert done.returncode == 1, done.stderr
    assert "quality guard:" in done.stderr and "below --min-cosine 0.99" in done.stderr
    worst = done.stderr.split("worst layers:")[1]
    # The Add's range spans 1e5, so the Sub's output (what the next Conv reads) is the worst layer.
    assert worst.split(",")[0].strip().startswith("'destroy/Sub'"), done.stderr
    assert "WARNING" not in done.stderr  # the guard says it once
    assert len(_runs(out)) == 1 and "run " in done.stdout  # published, and the summary printed


def test_collapse_without_a_guard_flag_warns_loudly(tmp_path):
    model = with_destroyed_layer(MODEL, tmp_path / "destroyed.onnx")
    _, done = _published(tmp_path / "runs", model, "--calib", CALIB, "--val", VAL)
    assert "WARNING:" in done.stderr and "looks broken" in done.stderr and "destroy/Sub" in done.stderr


def test_where_model_where_the_quantizer_inserts_nothing_is_refused(tmp_path):
    line = _refused(tmp_path / "runs", where_model(tmp_path / "where.onnx"), "--calib", CALIB)
    assert "ONNX Runtime's quantizer inserted no quantization at all" in line


def test_operators_inside_control_flow_are_named_as_left_in_fp32(tmp_path):
    """ONNX Runtime's quantizer does not enter an If's branches: the run publishes the quantized CNN and says
    which control-flow node keeps its MatMuls in FP32 (on stderr and in run.json)."""
    model = with_if_head(MODEL, tmp_path / "if_head.onnx")
    run_dir, done = _published(tmp_path / "runs", model, "--calib", CALIB, "--val", VAL)
    assert "note: the Conv, ConvTranspose, Gemm and MatMul nodes inside If 'head/If' stay FP32" in done.stderr
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    assert record["preparation"]["control_flow"] == ["If 'head/If'"]
    assert _weights(run_dir) > 0  # the CNN's own weights are INT8
    branches = [node for node in onnx.load(str(run_dir / results.MODEL_FILE)).graph.node if node.op_type == "If"]
    assert [[n.op_type for n in a.g.node] for a in branches[0].attribute] == [["MatMul"], ["MatMul"]]
    assert record["summary"]["mean_cosine"] > 0.999
    assert "inside If &#x27;head/If&#x27; stay FP32: ONNX Runtime" in (run_dir / "report.html").read_text()


def test_which_quantizations_leave_control_flow_in_fp32(tmp_path):
    """ORT's QDQ and dynamic quantizers and our GPTQ passes see the main graph only; ORT's MatMulNBits
    quantizer (weight-only RTN, HQQ) enters subgraphs. Control flow without a weighted node is not named."""
    from dask_quant.pipeline.config import QuantConfig, Scheme, WeightAlgorithm
    from dask_quant.pipeline.selection import left_in_control_flow

    head = onnx.load(str(with_if_head(MODEL, tmp_path / "if_head.onnx")))
    weight_only = {a: QuantConfig(scheme=Scheme.WEIGHT_ONLY, algorithm=a) for a in WeightAlgorithm}
    assert left_in_control_flow(head, QuantConfig()) == ("If 'head/If'",)
    assert left_in_control_flow(head, QuantConfig(scheme=Scheme.DYNAMIC)) == ("If 'head/If'",)
    assert left_in_control_flow(head, weight_only[WeightAlgorithm.GPTQ]) == ("If 'head/If'",)
    assert left_in_control_flow(head, weight_only[WeightAlgorithm.RTN]) == ()
    assert left_in_control_flow(head, weight_only[WeightAlgorithm.HQQ]) == ()
    assert left_in_control_flow(head, QuantConfig(op_types=("Conv",))) == ()  # its MatMuls are not asked for
    assert left_in_control_flow(onnx.load(str(MODEL)), QuantConfig()) == ()


def test_control_flow_only_model_is_refused_before_any_data_check(tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 1, 8, 8), np.float32))  # would be refused too, later
    line = _refused(tmp_path / "runs", if_only_model(tmp_path / "if.onnx"), "--calib", wrong)
    assert "every quantizable operator is inside control flow (If 'branch/If')" in line


def test_token_ids_outside_the_vocabulary_are_one_line_naming_the_rows(tmp_path):
    ids = np.random.default_rng(3).integers(0, 10, size=(80, 5))
    ids[45, 2] = 30522
    calib = tmp_path / "ids.npz"
    np.savez(calib, ids=ids)
    line = _refused(tmp_path / "runs", token_model(tmp_path / "tokens.onnx"), "--calib", calib, "--chunk-size", "20")
    assert f"ONNX Runtime failed on rows 40..60 (chunk 2) of {calib}" in line and "indices" in line


def test_nan_in_validation_data_is_refused(tmp_path):
    val = np.load(VAL)
    pixels = val["input"][:50].copy()
    pixels[12, 0, 3, 3] = np.nan
    path = tmp_path / "val.npz"
    np.savez(path, input=pixels, labels=val["labels"][:50])
    line = _refused(tmp_path / "runs", MODEL, "--calib", CALIB, "--val", path)
    assert "1 NaN or infinite value(s) in input 'input' (rows 0..50 of" in line


def test_labels_outside_the_class_range_are_refused(tmp_path):
    val = np.load(VAL)
    labels = val["labels"][:50].copy()
    labels[31] = 12
    path = tmp_path / "val.npz"
    np.savez(path, input=val["input"][:50], labels=labels)
    line = _refused(tmp_path / "runs", MODEL, "--calib", CALIB, "--val", path)
    assert "label 12 of sample 31 is not a class of the model's output, which has 10 values" in line


def test_a_model_input_named_labels_is_an_input(tmp_path):
    model = token_model(tmp_path / "labels_input.onnx", input_name="labels")
    ids = np.random.default_rng(4).integers(0, 10, size=(60, 5))
    calib, val = tmp_path / "c.npz", tmp_path / "v.npz"
    np.savez(calib, labels=ids)
    np.savez(val, labels=ids[:30])
    run_dir, _ = _published(tmp_path / "runs", model, "--calib", calib, "--val", val)
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    assert record["data"]["val"]["labels"] is None and record["summary"]["samples"] == 30


def test_collapse_fails_the_guard_even_when_the_cosine_stays_high(tmp_path):
    rng = np.random.default_rng(0)
    calib, val = tmp_path / "c.npy", tmp_path / "v.npy"
    np.save(calib, rng.normal(size=(64, 8)).astype(np.float32))
    np.save(val, rng.normal(size=(32, 8)).astype(np.float32))
    out = tmp_path / "runs"
    args = [str(offset_model(tmp_path / "offset.onnx")), "--calib", str(calib), "--val", str(val), "--out", str(out)]
    done = _cli("run", *args, "--min-cosine", "0.999")
    assert done.returncode == 1, done.stderr
    assert "the INT8 output is the same for every sample while FP32's is not" in done.stderr
    assert "mean cosine" not in done.stderr.split("quality guard:")[1].split(";")[0]  # its cosine passed


def test_an_int64_first_output_is_skipped_for_the_logits(tmp_path):
    model = argmax_first_model(MODEL, tmp_path / "argmax_first.onnx")
    run_dir, done = _published(tmp_path / "runs", model, "--calib", CALIB, "--val", VAL)
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    assert record["summary"]["output"] == "logits" and record["summary"]["int8_accuracy"] > 0.95


def test_a_float16_model_is_upgraded_to_the_opset_its_scales_need(tmp_path):
    model = build_float16_model(tmp_path / "half.onnx")  # opset 17
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(8).normal(size=(40, 8)).astype(np.float16))
    run_dir, done = _published(tmp_path / "runs", model, "--calib", calib, "--val", calib)
    assert "opset 17 -> 19 (onnx version converter: float16 scales need opset 19)" in done.stderr
    assert json.loads((run_dir / results.RUN_FILE).read_text())["summary"]["mean_cosine"] > 0.99


def test_a_mask_the_model_makes_infinite_is_explained_and_exclusion_works(tmp_path):
    model = masked_attention_model(tmp_path / "masked.onnx")
    rng = np.random.default_rng(1)
    mask = np.ones((48, 6), np.int64)
    mask[:, 4:] = 0  # padding: the last two positions of every sample
    calib = tmp_path / "c.npz"
    np.savez(calib, x=rng.normal(size=(48, 8)).astype(np.float32), mask=mask)
    line = _refused(tmp_path / "runs", model, "--calib", calib)
    assert "tensor 'masked' is NaN or infinite on every row of chunk rows 0..48" in line
    assert "the model itself makes it (an attention mask's -inf?)" in line
    _published(tmp_path / "ok", model, "--calib", calib, "--exclude-nodes", "mask/Where,attn/Softmax")


def test_every_output_is_validated_and_the_lead_one_is_chosen(tmp_path):
    """A recurrent step's two outputs (its result, and the next state with the batch on axis 1): each
    has its rows in validation.parquet and its summary in run.json, with the cosines numpy computes
    from ONNX Runtime's own outputs; --lead-output picks which one leads."""
    import onnxruntime as ort
    import pyarrow.parquet as pq

    model = recurrent_model(tmp_path / "rnn.onnx")
    calib, val = recurrent_data(tmp_path / "c.npz", 96, 1), recurrent_data(tmp_path / "v.npz", 40, 2)
    flags = ["--batch-axis", "h0=1", "--const-input", "sr=2.0", "--chunk-size", "16"]
    arrays = load_arrays(val, ["x", "h0"])
    feeds = {"x": arrays["x"], "h0": arrays["h0"].transpose(1, 0, 2), "sr": np.array(2, np.float32)}

    def cosines(run_dir, name):
        fp32, int8 = (
            ort.InferenceSession(str(run_dir / file), providers=["CPUExecutionProvider"]).run([name], feeds)[0]
            for file in (results.FP32_FILE, results.MODEL_FILE)
        )
        if name == "h1":
            fp32, int8 = fp32.transpose(1, 0, 2), int8.transpose(1, 0, 2)
        a, b = fp32.reshape(40, -1).astype(np.float64), int8.reshape(40, -1).astype(np.float64)
        return np.mean(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))

    for lead, other, extra in (("out", "h1", []), ("h1", "out", ["--lead-output", "h1"])):
        run_dir, done = _published(tmp_path / lead, model, "--calib", calib, "--val", val, *flags, *extra)
        record = json.loads((run_dir / results.RUN_FILE).read_text())
        assert record["summary"]["output"] == lead and [o["output"] for o in record["other_outputs"]] == [other]
        assert f"output '{other}'" in done.stdout and f"40 samples of '{lead}'" in done.stdout
        rows = pq.read_table(run_dir / "validation.parquet").to_pylist()
        assert {(r["output"], r["lead"]) for r in rows} == {(lead, True), (other, False)}
        for name, summary in ((lead, record["summary"]), (other, record["other_outputs"][0])):
            assert sum(r["samples"] for r in rows if r["output"] == name) == 40
            assert summary["mean_cosine"] == pytest.approx(cosines(run_dir, name), rel=1e-9)


def test_a_lead_output_that_validation_cannot_compare_is_refused(tmp_path):
    model = argmax_first_model(MODEL, tmp_path / "argmax.onnx")
    line = _refused(tmp_path / "runs", model, "--calib", CALIB, "--val", VAL, "--lead-output", "class")
    assert "--lead-output 'class': not an output validation can compare" in line


@pytest.mark.parametrize("prepare", [True, False], ids=["prepared", "as given"])
def test_a_model_with_external_data_quantizes_as_quantize_static_does(prepare, tmp_path):
    """Weights in a file beside the model (save_as_external_data, every tensor): read on the client for
    preparation and by the workers (ORT told the model's folder), checked by digest, and the INT8 model
    bit-identical to quantize_static's on the same files."""
    model = tmp_path / "model" / "digits.onnx"
    model.parent.mkdir()
    onnx.save(onnx.load(str(MODEL)), str(model), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert len(model.read_bytes()) < 4096  # the weights are not in the .onnx file
    flags = [] if prepare else ["--no-prepare"]
    run_dir, _ = _published(tmp_path / "runs", model, "--calib", CALIB, "--val", VAL, "--chunk-size", "64", *flags)
    arrays = load_arrays(CALIB, ["input"])
    given = run_dir / results.FP32_FILE if prepare else model  # ORT quantizes the model as we calibrated it
    ref = reference_model(given, arrays, batch=300, kwargs=DEFAULT_REFERENCE, out=tmp_path / "ref.onnx")
    assert model_signature(run_dir / results.MODEL_FILE) == model_signature(ref)
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    assert record["summary"]["int8_accuracy"] > 0.95
    assert record["model"]["bytes"] == model.stat().st_size + (model.parent / "weights.bin").stat().st_size


def test_a_changed_external_data_file_is_refused_by_the_worker(tmp_path):
    from dask_quant.tasks.digest import model_sha256
    from dask_quant.tasks.errors import ModelChangedError
    from dask_quant.tasks.sessions import ModelRef, fresh_session

    model = tmp_path / "digits.onnx"
    onnx.save(onnx.load(str(MODEL)), str(model), save_as_external_data=True, location="weights.bin", size_threshold=0)
    ref = ModelRef(str(model), model_sha256(model))
    assert fresh_session(ref).run(None, {"input": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(weights.stat().st_size))  # same size, other weights
    with pytest.raises(ModelChangedError, match="sha256 differs"):
        fresh_session(ref)


def test_a_missing_external_data_file_is_one_line(tmp_path):
    model = tmp_path / "digits.onnx"
    onnx.save(onnx.load(str(MODEL)), str(model), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    line = _refused(tmp_path / "runs", model, "--calib", CALIB)
    assert "its external data file 'weights.bin' is not beside it" in line


def _with_output(path, nodes, output):
    """The digits CNN with `nodes` appended and `output` (a ValueInfo) as a second graph output."""
    proto = onnx.load(str(MODEL))
    proto.graph.node.extend(nodes)
    proto.graph.output.append(output)
    onnx.save(proto, str(path))
    return path


def test_an_output_whose_rows_are_not_samples_is_not_compared(tmp_path):
    """NonZero's rows depend on the data: that output is left out of validation, and leading with it is
    one error on the worker, not a traceback."""
    from onnx import TensorProto, helper

    threshold = helper.make_tensor("threshold", TensorProto.FLOAT, [], [5.0])
    nodes = [
        helper.make_node("Constant", [], ["th"], value=threshold),
        helper.make_node("Greater", ["logits", "th"], ["over"]),
        helper.make_node("NonZero", ["over"], ["where"]),
        helper.make_node("Transpose", ["where"], ["pairs"]),
        helper.make_node("Cast", ["pairs"], ["hits"], to=TensorProto.FLOAT),
    ]
    value = helper.make_tensor_value_info("hits", TensorProto.FLOAT, ["n", 2])
    model = _with_output(tmp_path / "hits.onnx", nodes, value)
    run_dir, done = _published(tmp_path / "runs", model, "--calib", CALIB, "--val", VAL)
    record = json.loads((run_dir / results.RUN_FILE).read_text())
    assert record["summary"]["output"] == "logits" and record["other_outputs"] == []
    line = _refused(tmp_path / "again", model, "--calib", CALIB, "--val", VAL, "--lead-output", "hits")
    assert "output 'hits' has" in line and "its rows are not samples" in line


def test_a_collapsed_other_output_fails_the_quality_guard(tmp_path):
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Constant", [], ["small"], value=helper.make_tensor("s", TensorProto.FLOAT, [], [1e-4])),
        helper.make_node("Constant", [], ["big"], value=helper.make_tensor("b", TensorProto.FLOAT, [], [1000.0])),
        helper.make_node("Mul", ["logits", "small"], ["scaled"]),
        helper.make_node("Add", ["scaled", "big"], ["shifted"]),
    ]
    value = helper.make_tensor_value_info("shifted", TensorProto.FLOAT, ["batch", 10])
    model = _with_output(tmp_path / "shifted.onnx", nodes, value)
    done = _cli("run", model, "--calib", CALIB, "--val", VAL, "--min-cosine", "0.9", "--out", tmp_path / "o")
    assert done.returncode == 1, done.stderr
    assert "output 'shifted': the INT8 output is the same for every sample while FP32's is not" in done.stderr


@pytest.mark.parametrize("location", ["../weights.bin", "ABSOLUTE"])
def test_external_data_outside_the_model_folder_is_one_line(location, tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    (tmp_path / "model").mkdir()
    proto = onnx.load(str(MODEL))
    convert_model_to_external_data(proto, location="weights.bin", size_threshold=0)
    onnx.save(proto, str(tmp_path / "weights-model.onnx"))  # writes tmp_path/weights.bin
    where = str(tmp_path / "weights.bin") if location == "ABSOLUTE" else location
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = where
    model = tmp_path / "model" / "digits.onnx"
    model.write_bytes(proto.SerializeToString())
    line = _refused(tmp_path / "runs", model, "--calib", CALIB)
    assert "is outside the model's folder" in line or "is not in files beside it" in line


def test_an_output_that_is_an_input_passed_through_is_one_line(tmp_path):
    from onnx import helper

    proto = onnx.load(str(MODEL))
    proto.graph.output.append(helper.make_tensor_value_info("input", 1, ["batch", 1, 8, 8]))
    model = tmp_path / "through.onnx"
    onnx.save(proto, str(model))
    line = _refused(tmp_path / "runs", model, "--calib", CALIB)
    assert "output 'input' is the model input of that name, passed through" in line


def test_an_output_with_minus_infinity_on_purpose_is_validated_and_published(tmp_path):
    """Masked log-probabilities (-inf for a class ruled out): its values that are not finite are counted
    apart from the exact sums, its undefined mean cosine is null in run.json (strict JSON), and the run
    publishes instead of failing on them."""
    import pyarrow.parquet as pq
    from onnx import TensorProto, helper

    mask = helper.make_tensor("mask", TensorProto.FLOAT, [1, 10], [0.0] * 9 + [-np.inf])
    nodes = [
        helper.make_node("LogSoftmax", ["logits"], ["logp"], axis=1),
        helper.make_node("Constant", [], ["class_mask"], value=mask),
        helper.make_node("Add", ["logp", "class_mask"], ["masked"]),
    ]
    value = helper.make_tensor_value_info("masked", TensorProto.FLOAT, ["batch", 10])
    model = _with_output(tmp_path / "masked.onnx", nodes, value)
    run_dir, _ = _published(tmp_path / "runs", model, "--calib", CALIB, "--val", VAL, "--op-types", "Conv,Gemm")
    record = json.loads((run_dir / results.RUN_FILE).read_text())  # strict: NaN would not parse back as null
    (other,) = record["other_outputs"]
    assert other["output"] == "masked" and other["mean_cosine"] is None
    assert record["summary"]["mean_cosine"] > 0.99  # the lead output, logits, is finite
    rows = pq.read_table(run_dir / "validation.parquet").to_pandas()
    masked = rows[rows.output == "masked"]
    assert (masked.non_finite == masked.samples).all()  # one -inf per sample, under both models
    assert (masked.squared_error >= 0).all() and (masked.signal > 0).all()
    assert (rows[rows.lead].non_finite == 0).all()
