"""Graph preparation: the steps taken, their fallbacks, and a prepared model that is the same every time."""

from __future__ import annotations

import onnx
import pytest
from exported import with_constant_weights
from models import digits_paths

from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.preparation import default_opset, prepare_graph
from dask_quant.pipeline.stages.prepare import prepare
from dask_quant.tasks.errors import InputError

MODEL, CALIB, _ = digits_paths()


@pytest.fixture
def constant_weights(tmp_path):
    return onnx.load(str(with_constant_weights(MODEL, tmp_path / "c12.onnx", opset=12)))


def test_constants_are_folded_and_the_opset_upgraded_for_per_channel(constant_weights):
    graph = prepare_graph(constant_weights, per_channel=True, where="m.onnx")
    assert default_opset(graph.proto) == 13
    assert not [n for n in graph.proto.graph.node if n.op_type == "Constant"]
    assert len(graph.proto.graph.initializer) == 8
    assert graph.steps[0].startswith("opset 12 -> 13")
    assert "8 Constant nodes folded into initializers, 17 -> 9 nodes" in graph.steps[2]


def test_per_tensor_keeps_the_opset(constant_weights):
    graph = prepare_graph(constant_weights, per_channel=False, where="m.onnx")
    assert default_opset(graph.proto) == 12 and not graph.steps[0].startswith("opset")


def test_failed_symbolic_shape_inference_falls_back_and_says_so(constant_weights, monkeypatch):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def fail(*args, **kwargs):
        msg = "Incomplete symbolic shape inference"
        raise RuntimeError(msg)

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(fail))
    graph = prepare_graph(constant_weights, per_channel=True, where="m.onnx")
    assert "symbolic shape inference failed (Incomplete symbolic shape inference); ONNX shape inference only" in (
        graph.steps
    )
    assert not [n for n in graph.proto.graph.node if n.op_type == "Constant"]  # the next steps still ran


def test_a_real_symbolic_inference_failure_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ORT saves `sym_shape_infer_temp.onnx` (and its external data) in the working directory when
    symbolic inference is incomplete, as it is for a Resize by scales."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest"),
            helper.make_node("Conv", ["x", "w"], ["s"], pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["r", "s"], ["y"]),
        ],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, scales],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    monkeypatch.chdir(tmp_path)
    prepared = prepare_graph(model, per_channel=False, where="m.onnx")
    assert prepared.steps[0].startswith("symbolic shape inference failed (Incomplete symbolic shape inference)")
    assert list(tmp_path.iterdir()) == []


def test_an_opset_the_converter_cannot_upgrade_is_one_clear_error(constant_weights, monkeypatch):
    def fail(model, target):
        msg = "No Adapter From Version $12 for Foo"
        raise RuntimeError(msg)

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    with pytest.raises(InputError, match=r"m.onnx: opset 12, and per-channel weights need opset 13, but onnx's "):
        prepare_graph(constant_weights, per_channel=True, where="m.onnx")


def test_the_prepared_model_is_the_same_every_time_and_removed_on_exit(tmp_path):
    config = RunConfig(model=with_constant_weights(MODEL, tmp_path / "c.onnx"), calib=CALIB, out=tmp_path / "out")
    with prepare(config) as first, prepare(config) as second:
        assert first.model.sha256 == second.model.sha256  # checkpoints (--resume) are keyed by it
        assert first.model.path != second.model.path  # concurrent runs never share or delete each other's
        assert first.prepared and first.source.path == str(config.model.resolve())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.onnx"))


def test_a_full_disk_while_writing_the_prepared_model_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    import onnx

    from dask_quant.pipeline.stages import prepare as stage

    def full(proto, path, **options):
        Path(path).touch()
        raise OSError(errno.ENOSPC, "No space left on device")

    config = RunConfig(model=MODEL, calib=CALIB, out=tmp_path / "out")
    real = stage.prepare_graph

    def then_the_disk_fills(*args, **options):  # preparation saves the model too: the prepared copy's write fails
        graph = real(*args, **options)
        monkeypatch.setattr(onnx, "save", full)
        return graph

    monkeypatch.setattr(stage, "prepare_graph", then_the_disk_fills)
    with pytest.raises(InputError, match=r"--out: cannot write the prepared model to .* \(No space left on device\)"):
        prepare(config)
    assert not (tmp_path / "out").exists()


def test_preparation_does_not_import_torch(tmp_path):
    """ORT's tools package imports torch (1.2 s) for an export helper preparation never calls."""
    import subprocess
    import sys

    model, calib, _ = digits_paths()
    code = (
        "import sys\nfrom pathlib import Path\nfrom dask_quant.pipeline.config import RunConfig\n"
        "from dask_quant.pipeline.stages.prepare import prepare\n"
        f"with prepare(RunConfig(model=Path({str(model)!r}), calib=Path({str(calib)!r}), out=Path({str(tmp_path)!r}))) "
        "as prepared:\n    assert prepared.steps, prepared\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "False"


def test_unnamed_nodes_are_named_after_their_outputs(tmp_path):
    """ORT's quantizer excludes nodes by name: two unnamed nodes were one group '' to tune, reverted together
    and listed as an empty name."""
    from onnx import helper

    model, calib, _ = digits_paths()
    proto = onnx.load(str(model))
    logits = proto.graph.output[0].name
    proto.graph.node.extend(
        [
            helper.make_node("Relu", [logits], ["positive"]),
            helper.make_node("Neg", ["positive"], ["negative"], name=""),
            helper.make_node("Abs", ["negative"], ["/0/Conv"]),  # its output is another node's name
        ]
    )
    proto.graph.output[0].name = "/0/Conv"
    graph = prepare_graph(proto, per_channel=True, where="m.onnx")
    names = [node.name for node in graph.proto.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert {"positive", "negative"} <= set(names) and graph.steps[-1] == "3 unnamed nodes named after their outputs"
    assert prepare_graph(graph.proto, per_channel=True, where="m.onnx").steps[-1] == "ONNX shape inference"
