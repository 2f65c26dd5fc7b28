"""ONNX Runtime's own one-process quantization, the reference we must match bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class BatchReader:
    """A CalibrationDataReader over in-memory arrays, in equal batches."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int) -> None:
        rows = len(next(iter(arrays.values())))
        self._batches = iter([{k: v[i : i + batch] for k, v in arrays.items()} for i in range(0, rows, batch)])

    def get_next(self):
        return next(self._batches, None)


class FeedsReader:
    """A CalibrationDataReader giving each feeds dict as it is (inputs that are not batch-major, scalars)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def reference_ranges(model: Path, arrays, batch: int, op_types: list[str], tmp: Path):
    """ORT's MinMax calibrator's TensorsData for the data, as quantize_static computes it.

    `arrays`: samples on axis 0, read in batches of `batch`; or a list of the model's feeds, one per run.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(
        model, op_types, augmented_model_path=str(tmp / "augmented.onnx"), calibrate_method=CalibrationMethod.MinMax
    )
    calibrator.collect_data(FeedsReader(arrays) if isinstance(arrays, list) else BatchReader(arrays, batch))
    return calibrator.compute_data()


def reference_model(model: Path, arrays: dict[str, np.ndarray], batch: int, kwargs: dict, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationMethod, quantize_static

    quantize_static(
        str(model), str(out), BatchReader(arrays, batch), calibrate_method=CalibrationMethod.MinMax, **kwargs
    )
    return out


def model_signature(path: Path):
    """Nodes and initializers of a model, in a form where == means bit-identical."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    nodes = [(n.op_type, tuple(n.input), tuple(n.output), n.SerializeToString()) for n in proto.graph.node]
    inits = {}
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        inits[init.name] = (array.dtype.str, array.shape, array.tobytes())
    return nodes, inits
