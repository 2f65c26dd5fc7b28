"""The quantize stage: from a Calibration and a QuantConfig to an INT8 model written by ONNX Runtime's quantizer.

A pure function of (statistics, config) and the model file: no cluster, so it
runs on the client or as a task on a worker alike. The static scheme's QDQ
model is written by `quantize_static` reading our ranges from its own
calibration-cache format, so the quantization itself is exactly the
reference's code path; the dynamic scheme's by `quantize_dynamic` and the
weight-only scheme's by `MatMulNBitsQuantizer`, which read no statistics.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dask_quant.pipeline.config import ActivationType, QuantConfig, Scheme, WeightAlgorithm
from dask_quant.pipeline.logs import captured_logs
from dask_quant.pipeline.preparation import PER_CHANNEL_OPSET, default_opset, needed_opset
from dask_quant.pipeline.presets import Preset, qnn_kwargs
from dask_quant.pipeline.qparams import QParam, read_qparams
from dask_quant.pipeline.selection import default_op_types
from dask_quant.pipeline.stages.calibrate import Calibration
from dask_quant.tasks.range_stats import RangeStats


def tensors_data(ranges: Mapping[str, tuple[float, float]], stats: RangeStats):
    """ORT TensorsData with each tensor's (lowest, highest) as a 1-element array of the tensor's own
    float type, exactly as its MinMax calibrator reports them. The quantizer reads only these two
    numbers whatever the method, so every method hands its ranges over the same way."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    dtypes = {name: r.dtype for name, r in stats.ranges}
    data = {
        name: TensorData(lowest=np.array([low], dtypes[name]), highest=np.array([high], dtypes[name]))
        for name, (low, high) in sorted(ranges.items())
    }
    return TensorsData(CalibrationMethod.MinMax, data)


def quantize_kwargs(config: QuantConfig, model=None) -> dict:
    """Options for onnxruntime.quantization.quantize_static matching `config` (for --preset qnn, what
    get_qnn_qdq_config gives for `model`, a ModelProto or a path)."""
    from onnxruntime.quantization import QuantFormat, QuantType

    if config.preset is Preset.QNN:
        kwargs = qnn_kwargs(model, config)
        kwargs["extra_options"].update(_extra_options(config))
        return kwargs
    activation = {
        ActivationType.UINT8: QuantType.QUInt8,
        ActivationType.INT8: QuantType.QInt8,
        ActivationType.UINT16: QuantType.QUInt16,
        ActivationType.INT16: QuantType.QInt16,
    }[config.activation_type]
    return {
        "quant_format": QuantFormat.QDQ,
        "op_types_to_quantize": list(config.op_types or default_op_types()),
        "per_channel": config.per_channel,
        "reduce_range": False,
        "activation_type": activation,
        "weight_type": QuantType.QInt8,
        "nodes_to_exclude": list(config.exclude_nodes),
        "extra_options": _extra_options(config),
    }


def _extra_options(config: QuantConfig) -> dict:
    options = {}
    if config.symmetric:
        options["ActivationSymmetric"] = True
    if config.fp32_outputs:  # ORT then puts QDQ on these nodes' inputs and weights only
        options["OpTypesToExcludeOutputQuantization"] = list(config.fp32_outputs)
    return options


def write_quantized_model(model, ranges, config: QuantConfig, out_path: Path, large: bool | None = None) -> list[str]:
    """Write the QDQ model of `model` (a ModelProto, or a model file's path, which ORT then reads itself)
    for `ranges` (a TensorsData) to out_path; return the quantizer's warnings.

    A `large` model (pipeline.model_files; None: a path is, a ModelProto is asked) is written with its
    weights in `out_path`.data beside it.
    """
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from dask_quant.pipeline.model_files import is_large, share_like_model

    if large is None:
        large = isinstance(model, Path) or is_large(model)
    with tempfile.TemporaryDirectory(prefix="dask-quant-") as tmp, captured_logs() as messages:
        cache = Path(tmp) / "calibration.json"
        save_tensors_data(ranges, cache)
        quantize_static(
            str(model) if isinstance(model, Path) else model,
            str(out_path),
            calibration_data_reader=None,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache),
            use_external_data_format=large,
            **quantize_kwargs(config, model),
        )
    if large:
        share_like_model(out_path)
    return list(messages)


# DynamicQuantizeLinear, which the dynamic scheme puts before every quantized MatMul/Conv, is opset 11.
DYNAMIC_OPSET = 11


def dynamic_kwargs(config: QuantConfig) -> dict:
    """Options for onnxruntime.quantization.quantize_dynamic matching `config` (its default op types when
    --op-types is not given)."""
    from onnxruntime.quantization import QuantType

    return {
        "op_types_to_quantize": list(config.op_types) or None,
        "per_channel": config.per_channel,
        "reduce_range": False,
        "weight_type": QuantType.QInt8,
        "nodes_to_exclude": list(config.exclude_nodes),
        "extra_options": {},
    }


def write_dynamic_model(model, config: QuantConfig, out_path: Path, large: bool) -> list[str]:
    """Write the dynamic INT8 model of `model` (a ModelProto, or a model file's path) with quantize_dynamic;
    return its warnings. A `large` model is written with its weights in `out_path`.data beside it."""
    from onnxruntime.quantization import quantize_dynamic

    from dask_quant.pipeline.model_files import share_like_model
    from dask_quant.tasks.errors import InputError

    with captured_logs() as messages:
        try:
            quantize_dynamic(
                str(model) if isinstance(model, Path) else model,
                str(out_path),
                use_external_data_format=large,
                **dynamic_kwargs(config),
            )
        except ValueError as exc:  # e.g. a Conv whose weight a Constant node holds: "Expected w to be an initializer"
            fix = (
                "drop --no-prepare: preparation folds Constant nodes into initializers"
                if "initializer" in str(exc)
                else "keep the node it names in FP32 with --exclude-nodes, or use --scheme static"
            )
            msg = f"ONNX Runtime's quantize_dynamic cannot quantize this model ({exc}); nothing was published: {fix}"
            raise InputError(msg) from None
    if large:
        share_like_model(out_path)
    return list(messages)


def weight_only_quantizer(model, config: QuantConfig):
    """ONNX Runtime's MatMulNBitsQuantizer for `model` (a ModelProto, or a model file's path) under `config`:
    `rtn` is its default algorithm (round to nearest per block, asymmetric, with zero points), `hqq` its
    HQQ; MatMul weights only unless --op-types says otherwise, --exclude-nodes kept FP32."""
    nbits = _matmul_nbits_module()
    op_types = tuple(config.op_types) or None
    if config.algorithm is WeightAlgorithm.HQQ:
        algo = nbits.HQQWeightOnlyQuantConfig(
            block_size=config.block_size, bits=config.bits, op_types_to_quantize=op_types
        )
    else:
        algo = nbits.DefaultWeightOnlyQuantConfig(
            block_size=config.block_size, is_symmetric=False, bits=config.bits, op_types_to_quantize=op_types
        )
    given = str(model) if isinstance(model, Path) else model
    return nbits.MatMulNBitsQuantizer(given, nodes_to_exclude=list(config.exclude_nodes), algo_config=algo)


def _matmul_nbits_module():
    """onnxruntime.quantization.matmul_nbits_quantizer, imported without what its import does to this process:
    it calls logging.basicConfig(level=INFO), which would print every library's INFO lines on stderr."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return matmul_nbits_quantizer


def write_weight_only_model(model, config: QuantConfig, out_path: Path, large: bool) -> list[str]:
    """Write the weight-only model of `model` (a ModelProto, or a model file's path) to out_path with
    MatMulNBitsQuantizer; return its warnings. A `large` model keeps its weights in `out_path`.data."""
    import warnings

    from dask_quant.pipeline.model_files import share_like_model

    with captured_logs() as messages, warnings.catch_warnings():
        # ORT's HQQ hands torch a read-only weight that it only reads: torch's warning about that is noise.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        quantizer = weight_only_quantizer(model, config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out_path), use_external_data_format=large)
    if large:
        share_like_model(out_path)
    return list(messages)


def write_tensorrt_table(ranges, folder: Path) -> None:
    """The calibration table ONNX Runtime's TensorRT EP reads, written by ORT's own writer.

    TensorRT quantizes symmetrically from one dynamic range per tensor, and the
    writer keeps max(lowest, highest): hand it the symmetric bound max(|low|, |high|).
    """
    from onnxruntime.quantization.calibrate import TensorData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    symmetric = {}
    for name, data in ranges.data.items():
        bound = np.maximum(np.abs(data.lowest), np.abs(data.highest))
        symmetric[name] = TensorData(lowest=-bound, highest=bound)
    folder.mkdir()
    write_calibration_table(symmetric, dir=str(folder))


@dataclass(frozen=True)
class QuantizedModel:
    """An INT8 model written by quantize(): where it is, what made it, and what ORT wrote into it."""

    path: Path
    sha256: str
    quant: QuantConfig
    calibration: Calibration  # only what `quant`'s method reads
    ranges: dict  # tensor -> (low, high) handed to the quantizer
    qparams: tuple[QParam, ...]  # empty when quantize() was told not to read the model back
    warnings: tuple[str, ...]  # ONNX Runtime's quantizer's, de-duplicated

    @property
    def activations(self) -> int:
        return sum(p.kind == "activation" for p in self.qparams)


def _opsets(proto) -> tuple[int, tuple[tuple[int, str], tuple[int, str]]]:
    """The model's opset, and the opset its QDQ model needs (and why) per tensor and per channel."""
    return default_opset(proto), (needed_opset(proto, False), needed_opset(proto, True))


@functools.lru_cache(maxsize=8)
def _file_facts(path: str, state: tuple) -> tuple[bool, int, tuple]:
    """(large, _opsets) of the model file at `path` while it keeps `state`: every tune variant asks them of
    the same file, whose weights need reading to know them."""
    import onnx

    from dask_quant.pipeline.model_files import is_large_file

    large = is_large_file(Path(path))
    return large, *_opsets(onnx.load(path, load_external_data=False))


def _inputs(calibration: Calibration, quant: QuantConfig, exclude: tuple[str, ...], source):
    """(quant with `exclude` added, the model ORT's quantizer is given, whether it is large, the ranges) after
    checking that the model file is the one calibrated and its opset can hold the quantized model."""
    import onnx

    from dask_quant.tasks.digest import file_state, known_sha256, sha256_bytes
    from dask_quant.tasks.errors import InputError
    from dask_quant.tasks.storage import read_remote

    if exclude:
        quant = replace(quant, exclude_nodes=tuple(dict.fromkeys((*quant.exclude_nodes, *exclude))))
    model = calibration.model
    if model.url == model.path:  # the user's model at a URL (--no-prepare): no local copy to read
        data = read_remote(model.url)
        found, given, model_path = sha256_bytes(data), onnx.load_from_string(data), model.url
        large, (opset, needs) = False, _opsets(given)
    else:
        model_path = Path(model.path)
        found = known_sha256(model_path, model=True) if model_path.is_file() else None
        if found == model.sha256:
            large, opset, needs = _file_facts(str(model_path.resolve()), file_state(model_path))
            # A large model's file ORT reads itself: its weights stay out of this process.
            given = model_path if large else source if source is not None else onnx.load(str(model_path))
    if found != model.sha256:
        msg = (
            f"{model_path}: not the model this calibration was made from (sha256 {model.sha256[:12]}...); "
            "calibrate again or restore the file"
        )
        raise InputError(msg)
    ranges = calibration.ranges(quant) if quant.calibrated else {}
    needed, why = needs[quant.per_channel] if quant.scheme is not Scheme.WEIGHT_ONLY else (0, "")
    if quant.scheme is Scheme.DYNAMIC and needed < DYNAMIC_OPSET:
        needed, why = DYNAMIC_OPSET, "dynamic quantization (DynamicQuantizeLinear) needs"
    if opset < needed:
        msg = (
            f"{model_path}: opset {opset}, but {why} opset {needed} (ONNX Runtime could not load "
            "the INT8 model); drop --no-prepare, which upgrades the opset"
            + (", or pass --per-tensor" if needed == PER_CHANNEL_OPSET else "")
        )
        raise InputError(msg)
    return quant, given, large, ranges


def quantized_proto(calibration: Calibration, quant: QuantConfig, exclude: tuple[str, ...] = (), *, source=None):
    """The static QDQ model quantize() would write, byte for byte once serialized, as a ModelProto in memory
    (nothing is written), or None where quantize() must write a file: a large model, another scheme."""
    if quant.scheme is not Scheme.STATIC:
        return None
    quant, given, large, ranges = _inputs(calibration, quant, exclude, source)
    if large:
        return None
    with _kept_in_memory() as kept:
        write_quantized_model(given, tensors_data(ranges, calibration.stats), quant, kept.path, large=False)
    return kept.model


class _Kept(threading.local):
    path: str | None = None
    model = None


_kept = _Kept()
_keeping = threading.Lock()


@contextmanager
def _kept_in_memory():
    """While it lasts, this thread's onnx.save_model to the yielded object's `path` (which ORT's quantizer
    calls last, after its own sorting and checks) keeps the model in that object's `model` instead."""
    import onnx

    with _keeping:
        if not getattr(onnx.save_model, "_dask_quant_keeps", False):
            save = onnx.save_model

            def save_model(proto, f, *args, **kwargs):
                if _kept.path is not None and str(f) == _kept.path:
                    _kept.model = proto
                    return None
                return save(proto, f, *args, **kwargs)

            save_model._dask_quant_keeps = True
            onnx.save_model = save_model
    _kept.path, _kept.model = f"dask-quant-in-memory-{uuid.uuid4().hex}.onnx", None
    try:
        yield _kept
    finally:
        _kept.path = None


def quantize(
    calibration: Calibration,
    quant: QuantConfig,
    path: Path,
    exclude: tuple[str, ...] = (),
    *,
    source=None,
    read_back: bool = True,
) -> QuantizedModel:
    """Write the quantized model of `calibration`'s model under `quant` to `path` (plus `exclude`: nodes kept
    FP32): QDQ from the calibration's ranges (static), quantize_dynamic's model (dynamic),
    MatMulNBitsQuantizer's (weight-only) or GPTQ's nodes solved by calibrate (weight-only gptq); dynamic and
    rtn/hqq read no statistics, so the calibration may be empty.

    The model file is read from calibration.model.path (the user's model at a
    URL from there) and must still have the sha256 it was calibrated with; a
    caller that already holds that file's ModelProto (not a large one) passes
    it as `source`, which ORT's quantizer then consumes. Without `read_back`
    the written model's qparams are not read (a tune variant, scored once).
    """
    import onnx

    from dask_quant.tasks.digest import model_sha256

    quant, given, large, ranges = _inputs(calibration, quant, exclude, source)
    path = Path(path)
    if quant.scheme is Scheme.STATIC:
        warnings = write_quantized_model(given, tensors_data(ranges, calibration.stats), quant, path, large)
    elif quant.scheme is Scheme.DYNAMIC:
        warnings = write_dynamic_model(given, quant, path, large)
    elif quant.uses_grams:
        from dask_quant.pipeline.gptq import write_gptq_model

        write_gptq_model(given, calibration.gptq_weights(quant), quant.exclude_nodes, path, large)
        warnings = []
    else:
        warnings = write_weight_only_model(given, quant, path, large)
    qparams = tuple(read_qparams(onnx.load(str(path)))) if read_back else ()
    return QuantizedModel(
        path, model_sha256(path), quant, calibration.for_method(quant), ranges, qparams, tuple(dict.fromkeys(warnings))
    )
