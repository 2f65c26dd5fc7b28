"""One tune experiment, run as a task on a worker: a variant quantized by ONNX Runtime's quantizer from the
shared calibration, with some nodes in FP32, and scored on a fixed set of validation rows.

Every variant of a model quantizes the same weights the same way, and ORT's quantizer spends most of a
variant's time recomputing that in Python (per-channel scales one channel at a time, then the quantized
initializers). Both are pure functions of the weight and the quantizer's settings, so each worker remembers
their results per weight (`_remember_quantizer_work`). The variant it writes is byte for byte the one
quantize_static writes (tests/cluster/test_tune.py).
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dask_quant.pipeline.config import QuantConfig
from dask_quant.pipeline.stages.calibrate import Calibration
from dask_quant.pipeline.stages.quantize import quantize, quantized_proto
from dask_quant.tasks.digest import sha256_bytes
from dask_quant.tasks.reference_rows import ReferenceRows
from dask_quant.tasks.sessions import ModelRef, fresh_session, session_from_bytes
from dask_quant.tasks.validate import ValidationStats

_REMEMBERED = 20_000  # weights whose parameters and quantized initializer each worker process keeps
_lock = threading.Lock()


def _bounded(function, key_of):
    cache: OrderedDict = OrderedDict()

    def remembered(*args, **kwargs):
        key = key_of(*args, **kwargs)
        with _lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        value = function(*args, **kwargs)
        with _lock:
            cache[key] = value
            while len(cache) > _REMEMBERED:
                cache.popitem(last=False)
        return value

    return remembered


def _digest(array: np.ndarray) -> tuple:
    array = np.ascontiguousarray(array)
    return (array.dtype.str, array.shape, hashlib.sha256(array.view(np.uint8).ravel()).digest())


def _tensor_digest(tensor) -> tuple:
    """What an initializer holds (name aside): its type, shape and a digest of its values."""
    if tensor.raw_data:
        return tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).digest()  # sha256: hardware
    from onnx import numpy_helper

    return tensor.data_type, _digest(numpy_helper.to_array(tensor))


def _quantizer_settings(quantizer) -> tuple:
    """Everything besides the weight itself that ORT's weight parameters read from its quantizer."""
    return (
        quantizer.weight_qType,
        quantizer.activation_qType,
        quantizer.reduce_range,
        quantizer.min_real_range,
        quantizer.is_activation_symmetric,
        getattr(quantizer, "block_size", 0),
        repr(sorted(quantizer.extra_options.items(), key=lambda item: item[0])),
    )


def _remember_quantizer_work() -> None:
    """Memoize, once per process, the two pure computations ORT's QDQ quantizer repeats for every weight:
    its scales and zero points (`_calc_initializer_quant_params`, one weight at a time) and the quantized
    initializer (`quantize_onnx_initializer`). And ORT's `replace_input_of_all_nodes`, a Python loop over
    every input of every node for each QDQ pair it inserts (a third of a MiniLM variant's quantizer time),
    now skips the nodes that do not read the tensor. The originals stay in `_dask_quant_originals` for the
    test."""
    import onnx
    from onnxruntime.quantization import qdq_quantizer
    from onnxruntime.quantization.onnx_model import ONNXModel

    if getattr(qdq_quantizer, "_dask_quant_remembers", False):
        return
    replace_everywhere = ONNXModel.replace_input_of_all_nodes

    def replace_input_of_all_nodes(self, old_input_name, new_input_name):
        for node in self.model.graph.node:
            if old_input_name in node.input:  # a C-level test; ORT's loop then replaces as before
                ONNXModel.replace_node_input(node, old_input_name, new_input_name)

    quantizer_class = qdq_quantizer.QDQQuantizer
    weight_params = quantizer_class._calc_initializer_quant_params
    to_initializer = qdq_quantizer.quantize_onnx_initializer

    def one_weight(quantizer, name, info, _initializer):
        alone = quantizer.tensors_to_quantize  # ORT's own code, asked about this weight only
        quantizer.tensors_to_quantize = {name: info}
        try:
            return weight_params(quantizer).get(name)
        finally:
            quantizer.tensors_to_quantize = alone

    def weight_key(quantizer, name, info, initializer) -> tuple:
        overrides = quantizer.tensor_quant_overrides.get(name, None)
        info_key = (info.tensor_type, info.axis, info.data_type, info.is_shared)
        return _tensor_digest(initializer), info_key, repr(overrides), _quantizer_settings(quantizer)

    remembered_weight = _bounded(one_weight, weight_key)

    def calc_initializer_quant_params(quantizer):
        params, initializers = {}, {tensor.name: tensor for tensor in quantizer.model.initializer()}
        for name, info in quantizer.tensors_to_quantize.items():
            if name not in initializers:
                continue
            value = remembered_weight(quantizer, name, info, initializers[name])
            if value is not None:
                params[name] = value
        return params

    def key(*args, **kwargs) -> tuple:
        def part(value):
            if isinstance(value, np.ndarray):
                return _digest(value)
            if isinstance(value, onnx.TensorProto):
                return _tensor_digest(value), value.name
            return value

        return tuple(map(part, args)), tuple((name, part(value)) for name, value in sorted(kwargs.items()))

    remembered_initializer = _bounded(to_initializer, key)

    def quantize_initializer(*args, **kwargs):
        copy = onnx.TensorProto()  # each model gets its own message
        copy.CopyFrom(remembered_initializer(*args, **kwargs))
        return copy

    qdq_quantizer._dask_quant_originals = (  # (owner, attribute, original): for the test that compares both
        (quantizer_class, "_calc_initializer_quant_params", weight_params),
        (qdq_quantizer, "quantize_onnx_initializer", to_initializer),
        (ONNXModel, "replace_input_of_all_nodes", replace_everywhere),
    )
    quantizer_class._calc_initializer_quant_params = calc_initializer_quant_params
    qdq_quantizer.quantize_onnx_initializer = quantize_initializer
    ONNXModel.replace_input_of_all_nodes = replace_input_of_all_nodes
    qdq_quantizer._dask_quant_remembers = True


# ORT's quantize_static first infers its input model's shapes (a copy saved, onnx's infer_shapes_path, a
# reload: 0.2-0.3 s of a MiniLM variant), for every variant of the same source. That is a pure function of the
# model, so each worker computes it once per source file state and hands ORT a copy: run_experiment gives the
# quantizer a copy of the source registered here, and ORT's function, asked about that very object, returns a
# copy of the remembered result.
_handed: dict[int, tuple[object, object]] = {}  # id(source copy) -> (that copy, its shape-inferred model)


# Both copies stay in each worker's memory (MiniLM's 86 MiB: its peak 1.41 -> 1.58 GiB), so only a model up to
# this size is remembered; a larger one pays ORT's round trip per variant, as before.
_REMEMBER_SOURCE_UP_TO = 256 * 2**20


@functools.lru_cache(maxsize=1)
def _source(path: str, state: tuple):
    """(the model at `path`, ORT's shape-inferred model of it) while the file keeps `state`; None for a model
    over _REMEMBER_SOURCE_UP_TO bytes."""
    import onnx

    from dask_quant.tasks.digest import model_bytes

    if model_bytes(path) > _REMEMBER_SOURCE_UP_TO:
        return None
    proto = onnx.load(path)
    ort_quantize = _ort_quantize_module()
    original = getattr(ort_quantize, "_dask_quant_shape_inference", ort_quantize.save_and_reload_model_with_shape_infer)
    return proto, original(proto)


def _ort_quantize_module():
    """onnxruntime.quantization.quantize, the module (its package exports a function of that name)."""
    import importlib

    return importlib.import_module("onnxruntime.quantization.quantize")


def _remember_shape_inference() -> None:
    import onnx

    ort_quantize = _ort_quantize_module()
    if hasattr(ort_quantize, "_dask_quant_shape_inference"):
        return
    original = ort_quantize.save_and_reload_model_with_shape_infer

    def save_and_reload_model_with_shape_infer(model):
        with _lock:
            entry = _handed.get(id(model))
        if entry is None or entry[0] is not model:
            return original(model)
        inferred = onnx.ModelProto()
        inferred.CopyFrom(entry[1])
        return inferred

    ort_quantize._dask_quant_shape_inference = original
    ort_quantize.save_and_reload_model_with_shape_infer = save_and_reload_model_with_shape_infer


@contextmanager
def _source_copy(calibration: Calibration):
    """A copy of calibration's model for ORT's quantizer to consume, its shape inference remembered (None for
    a model at a URL or a large one: quantize() reads those itself)."""
    import onnx

    from dask_quant.tasks.digest import file_state

    model = calibration.model
    remembered = None
    if model.url != model.path and Path(model.path).is_file():
        remembered = _source(str(Path(model.path).resolve()), file_state(model.path))
    if remembered is None:
        yield None
        return
    _remember_shape_inference()
    copy = onnx.ModelProto()
    copy.CopyFrom(remembered[0])
    with _lock:
        _handed[id(copy)] = (copy, remembered[1])
    try:
        yield copy
    finally:
        with _lock:
            _handed.pop(id(copy), None)


# Variants scored by this process, by the model's sha256 and the rows: reverting a node whose every QDQ pair
# another node also asks for writes the very model scored before (frequent with every op type quantized).
_score_once = _bounded(
    lambda key, rows, names, session: rows.score_session(session(), names),
    lambda key, rows, names, session: (key, rows.rows, names),
)


def write_variant(calibration: Calibration, quant: QuantConfig, path: Path, reverted: tuple[str, ...]):
    """quantize() of the variant with `reverted` nodes in FP32, byte for byte, with what this process remembers
    of earlier variants (its qparams are not read back: a variant is only scored)."""
    _remember_quantizer_work()
    with _source_copy(calibration) as source:
        return quantize(calibration, quant, path, exclude=reverted, source=source, read_back=False)


def variant_bytes(calibration: Calibration, quant: QuantConfig, reverted: tuple[str, ...]) -> bytes | None:
    """The serialized model write_variant would write, made in memory (no file written, read back and hashed:
    a third of a MiniLM ranking experiment's time), or None for one that quantize() must write itself."""
    _remember_quantizer_work()
    with _source_copy(calibration) as source:
        proto = quantized_proto(calibration, quant, reverted, source=source)
    return None if proto is None else proto.SerializeToString()


def warm_up(calibration: Calibration, quant: QuantConfig) -> None:
    """Make the full INT8 variant once in this worker process, so what it remembers of the source model and
    of its weights' quantization is ready before the first experiment (MiniLM's took ~3 s instead of ~0.9)."""
    variant_bytes(calibration, quant, ())


def run_experiment(
    calibration: Calibration,
    quant: QuantConfig,
    reverted: tuple[str, ...],
    rows: ReferenceRows,
    names: tuple[str, ...] | None,
) -> tuple[tuple[ValidationStats, ...], float, str]:
    """(statistics against FP32 on `rows` of each output `names` (None: the first), seconds, where it ran) of
    the model with `reverted` nodes in FP32."""
    start = time.perf_counter()
    data = variant_bytes(calibration, quant, reverted)
    if data is not None:
        stats = _score_once(sha256_bytes(data), rows, names, lambda: session_from_bytes(data, "a tune variant"))
    else:
        with tempfile.TemporaryDirectory(prefix="dask-quant-variant-") as tmp:
            quantized = write_variant(calibration, quant, Path(tmp) / "variant.onnx", reverted)
            model = ModelRef(str(quantized.path), quantized.sha256)
            stats = _score_once(model.sha256, rows, names, lambda: fresh_session(model))
    return stats, time.perf_counter() - start, f"{socket.gethostname()}:{os.getpid()}"
