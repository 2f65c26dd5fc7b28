"""From merged statistics to a QDQ model written by ONNX Runtime's quantizer.

`tensors_data` is a pure function of (statistics, config). The model is
written by `quantize_static` reading our ranges from its own calibration-cache
format, so the quantization itself is exactly the reference's code path.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.config import ActivationType, QuantConfig
from pipeline.selection import default_op_types
from tasks.range_stats import RangeStats


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


def quantize_kwargs(config: QuantConfig) -> dict:
    """Options for onnxruntime.quantization.quantize_static matching `config`."""
    from onnxruntime.quantization import QuantFormat, QuantType

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
        "extra_options": {"ActivationSymmetric": True} if config.symmetric else {},
    }


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """ORT's quantizer logs advice on the root logger; keep it for run.json instead of stderr."""
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler.messages
    finally:
        root.removeHandler(handler)


def write_quantized_model(model_proto, ranges, config: QuantConfig, out_path: Path) -> list[str]:
    """Write the QDQ model for `ranges` (a TensorsData) to out_path; return the quantizer's warnings."""
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    with tempfile.TemporaryDirectory(prefix="dask-quant-") as tmp, _captured_warnings() as messages:
        cache = Path(tmp) / "calibration.json"
        save_tensors_data(ranges, cache)
        quantize_static(
            model_proto,
            str(out_path),
            calibration_data_reader=None,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache),
            **quantize_kwargs(config),
        )
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
