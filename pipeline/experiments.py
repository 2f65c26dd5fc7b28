"""One tune experiment, run as a task on a worker: a variant quantized by ONNX Runtime's quantizer from the
shared calibration, with some nodes in FP32, and scored on a fixed set of validation rows."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from dask_quant.pipeline.config import QuantConfig
from dask_quant.pipeline.stages.calibrate import Calibration
from dask_quant.pipeline.stages.quantize import quantize
from dask_quant.tasks.reference_rows import ReferenceRows
from dask_quant.tasks.sessions import ModelRef
from dask_quant.tasks.validate import ValidationStats


def run_experiment(
    calibration: Calibration, quant: QuantConfig, reverted: tuple[str, ...], rows: ReferenceRows, output: str | None
) -> tuple[ValidationStats, float, str]:
    """(statistics against FP32 on `rows`, seconds, where it ran) of the model with `reverted` nodes in FP32."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dask-quant-variant-") as tmp:
        quantized = quantize(calibration, quant, Path(tmp) / "variant.onnx", exclude=reverted)
        stats = rows.score(ModelRef(str(quantized.path), quantized.sha256), output)
    return stats, time.perf_counter() - start, f"{socket.gethostname()}:{os.getpid()}"
