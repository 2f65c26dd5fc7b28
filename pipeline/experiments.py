"""One tune experiment, run as a task on a worker: a variant quantized by ONNX Runtime's quantizer from the
shared calibration, with some nodes in FP32, and scored on a fixed set of validation rows.

Every variant of a model quantizes the same weights the same way, and ORT's quantizer spends most of a
variant's time recomputing that in Python (per-channel scales one channel at a time, then the quantized
initializers). Both are pure functions of their arguments, so each worker remembers their results
(`_remember_weights`): the variant it writes is byte for byte the one quantize_static writes
(tests/cluster/test_tune.py), in about half the time on MiniLM.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from dask_quant.pipeline.config import QuantConfig
from dask_quant.pipeline.stages.calibrate import Calibration
from dask_quant.pipeline.stages.quantize import quantize
from dask_quant.tasks.reference_rows import ReferenceRows
from dask_quant.tasks.sessions import ModelRef
from dask_quant.tasks.validate import ValidationStats

_REMEMBERED = 200_000  # channel scales and quantized initializers kept per worker process
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
    return (array.dtype.str, array.shape, hashlib.blake2b(array.view(np.uint8).ravel()).digest())


def _remember_weights() -> None:
    """Memoize the two pure functions ORT's QDQ quantizer calls per weight (once per process)."""
    import onnx
    from onnxruntime.quantization import qdq_quantizer

    if getattr(qdq_quantizer, "_dask_quant_remembers", False):
        return
    compute = qdq_quantizer.compute_data_quant_params
    to_initializer = qdq_quantizer.quantize_onnx_initializer

    def key(*args, **kwargs) -> tuple:
        def part(value):
            if isinstance(value, np.ndarray):
                return _digest(value)
            if isinstance(value, onnx.TensorProto):
                return hashlib.blake2b(value.SerializeToString()).digest()
            return value

        return tuple(map(part, args)), tuple((name, part(value)) for name, value in sorted(kwargs.items()))

    remembered_initializer = _bounded(to_initializer, key)

    def quantize_initializer(*args, **kwargs):
        copy = onnx.TensorProto()  # each model gets its own message
        copy.CopyFrom(remembered_initializer(*args, **kwargs))
        return copy

    def channel_key(data, *args, **kwargs) -> tuple:  # called once per channel: the cheapest exact key
        return data.dtype.str, data.shape, data.tobytes(), args, tuple(sorted(kwargs.items()))

    qdq_quantizer._dask_quant_originals = (compute, to_initializer)  # for the test that compares both
    qdq_quantizer.compute_data_quant_params = _bounded(compute, channel_key)
    qdq_quantizer.quantize_onnx_initializer = quantize_initializer
    qdq_quantizer._dask_quant_remembers = True


def run_experiment(
    calibration: Calibration, quant: QuantConfig, reverted: tuple[str, ...], rows: ReferenceRows, output: str | None
) -> tuple[ValidationStats, float, str]:
    """(statistics against FP32 on `rows`, seconds, where it ran) of the model with `reverted` nodes in FP32."""
    start = time.perf_counter()
    _remember_weights()
    with tempfile.TemporaryDirectory(prefix="dask-quant-variant-") as tmp:
        quantized = quantize(calibration, quant, Path(tmp) / "variant.onnx", exclude=reverted)
        stats = rows.score(ModelRef(str(quantized.path), quantized.sha256), output)
    return stats, time.perf_counter() - start, f"{socket.gethostname()}:{os.getpid()}"
