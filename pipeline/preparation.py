"""Graph preparation: the model as ONNX Runtime's quantizer needs it, made by onnx's and ORT's own tools.

Models exported by other tools keep weights in `Constant` nodes (the quantizer
then leaves every weight in FP32) and use opsets below 13 (where ORT's
per-channel DequantizeLinear, which carries an `axis`, is invalid). Before
calibration the model goes through onnx's version converter when the options
need a newer opset, then ORT's `quant_pre_process` (symbolic shape inference,
ORT's basic graph optimisation, which folds constants into initializers, and
ONNX shape inference). Everything after works on the prepared model, so the
ranges and the QDQ model equal `quantize_static` run on that model.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from dask_quant.pipeline.logs import captured_logs
from dask_quant.pipeline.model_files import data_file
from dask_quant.tasks.errors import InputError

PER_CHANNEL_OPSET = 13  # DequantizeLinear's `axis` (per-channel weights) is new in opset 13
FLOAT16_OPSET = 19  # float16 scales (what ORT writes for a float16 model) are new in opset 19


@dataclass(frozen=True)
class PreparedGraph:
    """The prepared ModelProto and one line per step taken (what, and why when it fell back)."""

    proto: object
    steps: tuple[str, ...]
    written: bool = False  # whether the prepared model was written (prepare_graph's `files`)


def default_opset(proto) -> int:
    """The model's ai.onnx opset version."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1][:200] if text else type(exc).__name__


def has_float16(proto) -> bool:
    """Whether the graph computes in float16 (its quantization scales are then float16 too)."""
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    return any(v.type.tensor_type.elem_type == 10 for v in values) or any(
        init.data_type == 10 for init in proto.graph.initializer
    )  # 10: TensorProto.FLOAT16


def needed_opset(proto, per_channel: bool) -> tuple[int, str]:
    """The lowest opset the QDQ model needs for these options, and why ((0, "") when any will do)."""
    if has_float16(proto):
        return FLOAT16_OPSET, "float16 scales need"
    if per_channel:
        return PER_CHANNEL_OPSET, "per-channel weights need"
    return 0, ""


def _upgrade(proto, per_channel: bool, where: str) -> tuple[object, list[str]]:
    import onnx

    have, (target, why) = default_opset(proto), needed_opset(proto, per_channel)
    if have >= target:
        return proto, []
    try:
        upgraded = onnx.version_converter.convert_version(proto, target)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        fix = "pass --per-tensor, or " if target == PER_CHANNEL_OPSET else ""
        msg = (
            f"{where}: opset {have}, and {why} opset {target}, but onnx's version converter cannot upgrade it "
            f"({_first_line(exc)}); {fix}export the model at opset {target} or later"
        )
        raise InputError(msg) from None
    return upgraded, [f"opset {have} -> {target} (onnx version converter: {why} opset {target})"]


_WORKING_DIRECTORY = threading.Lock()


def _quant_pre_process():
    """ORT's quant_pre_process. Its package, onnxruntime.tools, imports torch whenever torch is installed
    (1.2 s: a third of MiniLM's preparation) for a PyTorch export helper nothing here calls: that import is
    skipped, by hiding torch from the package's one check while it loads."""
    import importlib.util

    if "onnxruntime.tools" not in sys.modules:
        find_spec = importlib.util.find_spec

        def torch_hidden(name, package=None):
            return None if name == "torch" else find_spec(name, package)

        importlib.util.find_spec = torch_hidden
        try:
            import onnxruntime.tools  # noqa: F401
        finally:
            importlib.util.find_spec = find_spec
    from onnxruntime.quantization.shape_inference import quant_pre_process

    return quant_pre_process


def _pre_process(proto, skip_symbolic: bool, files: tuple[Path, Path] | None) -> tuple[object, list[str]]:
    """ORT's quant_pre_process on `proto`; the lines it logged at ERROR (a failed optimisation) are returned.

    `files`: (the model's file, where to write the prepared one) for a large model (pipeline.model_files),
    prepared from and to files with its weights in a data file: the result holds no weights then.
    """
    import onnx

    quant_pre_process = _quant_pre_process()
    with (
        _WORKING_DIRECTORY,  # the working directory is the process's: one preparation moves it at a time
        tempfile.TemporaryDirectory(prefix="dask-quant-prepare-") as tmp,
        captured_logs(logging.ERROR) as errors,
        # ORT saves `sym_shape_infer_temp.onnx` and its external data in the working directory when
        # symbolic inference is incomplete: keep them in the temporary folder, never the user's.
        contextlib.chdir(tmp),
    ):
        # A path, not the ModelProto: ORT 1.32's optimisation step fails on an in-memory model
        # without external data when symbolic shape inference is skipped.
        given, out = files or (Path(tmp) / "given.onnx", Path(tmp) / "prepared.onnx")
        options = {"skip_symbolic_shape": skip_symbolic}
        if files is None:
            onnx.save(proto, str(given))
        else:  # over 2 GiB a model is not one protobuf message: ORT's steps keep its weights in a data file too
            options |= {"save_as_external_data": True, "all_tensors_to_one_file": True}
            options |= {"external_data_location": data_file(out)}
        quant_pre_process(given, out, **options)
        prepared = onnx.load(str(out), load_external_data=files is None)
        if _casts(prepared) > _casts(proto):
            # The CPU provider computes float16 in float32 and the optimiser saves the casts it inserted:
            # that would change the model's precision, so keep its graph unoptimised.
            quant_pre_process(given, out, skip_optimization=True, **options)
            prepared = onnx.load(str(out), load_external_data=files is None)
            errors.append("it inserts float16/float32 casts on the CPU provider")
        return prepared, list(errors)


def _casts(proto) -> int:
    return sum(node.op_type == "Cast" for node in proto.graph.node)


def _constants(proto) -> int:
    return sum(node.op_type == "Constant" for node in proto.graph.node)


def prepare_graph(proto, *, per_channel: bool, where: str, files: tuple[Path, Path] | None = None) -> PreparedGraph:
    """The model ready for ORT's quantizer, with the steps taken; InputError when a needed step is impossible.

    `files`: (the model's file, where to write the prepared model) for a large model, whose weights `proto`
    does not hold: the prepared graph returned holds none either (they are in its data file). Without
    `files`, nothing is written.
    """
    if files is not None and needed_opset(proto, per_channel)[0] > default_opset(proto):
        target, why = needed_opset(proto, per_channel)
        fix = "pass --per-tensor, or " if target == PER_CHANNEL_OPSET else ""
        msg = (
            f"{where}: opset {default_opset(proto)}, and {why} opset {target}, but onnx's version converter "
            f"cannot take a model over 2 GiB; {fix}export it at opset {target} or later"
        )
        raise InputError(msg)
    proto, steps = _upgrade(proto, per_channel, where)
    before_nodes, before_constants = len(proto.graph.node), _constants(proto)
    try:
        prepared, errors = _pre_process(proto, False, files)
        steps.append("symbolic shape inference (ORT)")
    except Exception as exc:  # ORT's symbolic inference fails on some exported graphs: fall back, and say so
        reason = _first_line(exc)
        try:
            prepared, errors = _pre_process(proto, True, files)
        except Exception as again:
            steps.append(f"ORT's quant_pre_process failed ({_first_line(again)}); model kept as given")
            return PreparedGraph(proto, (*steps, *_name_nodes(proto)))
        steps.append(f"symbolic shape inference failed ({reason}); ONNX shape inference only")
    if errors:
        steps.append(f"ORT graph optimisation not used ({errors[0].splitlines()[0]}); constants not folded")
    else:
        folded = before_constants - _constants(prepared)
        steps.append(
            f"ORT basic graph optimisation: {folded} Constant nodes folded into initializers, "
            f"{before_nodes} -> {len(prepared.graph.node)} nodes"
        )
    steps.append("ONNX shape inference")
    if files is None:  # a large model's prepared file is ORT's, already written
        steps += _name_nodes(prepared)
    return PreparedGraph(prepared, tuple(steps), written=files is not None)


def _name_nodes(proto) -> list[str]:
    """Name each unnamed node after its first output (unique: an output has one writer), in place: ORT's
    quantizer excludes nodes by name, so unnamed ones could only be reverted all together, and tune, the
    report and --exclude-nodes would show them as an empty name. The step taken, if any."""
    taken = {node.name for node in proto.graph.node}
    unnamed = [node for node in proto.graph.node if not node.name]
    for node in unnamed:
        name = node.output[0] if node.output and node.output[0] not in taken else f"{node.op_type}_{len(taken)}"
        while name in taken:
            name = f"{name}_"
        node.name = name
        taken.add(name)
    return [f"{len(unnamed)} unnamed nodes named after their outputs"] if unnamed else []
