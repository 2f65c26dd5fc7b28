"""Histogram methods against ONNX Runtime's own calibrators on the digits CNN.

The reference gets the whole calibration set as one batch (its only
order-free case) and the same bin settings; every threshold must agree within
one of its histogram bins.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
from models import digits_paths, load_arrays
from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
from reference import BatchReader

from dask_quant.pipeline.config import QuantConfig, RunConfig
from dask_quant.pipeline.graph import calibration_graph, histogram_graph
from dask_quant.pipeline.ranges import activation_ranges, histogram_specs
from dask_quant.pipeline.selection import default_op_types
from dask_quant.pipeline.stages.prepare import dataset_chunks, prepare

MODEL, CALIB, _ = digits_paths()

CASES = {
    "entropy": (
        QuantConfig(method="entropy", num_bins=2048, num_quantized_bins=128),
        CalibrationMethod.Entropy,
        {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": False},
    ),
    "percentile-symmetric": (
        QuantConfig(method="percentile", percentile=99.999, num_bins=2048, symmetric=True),
        CalibrationMethod.Percentile,
        {"num_bins": 2048, "percentile": 99.999, "symmetric": True},
    ),
    "percentile-asymmetric": (
        QuantConfig(method="percentile", percentile=99.99, num_bins=2048),
        CalibrationMethod.Percentile,
        {"num_bins": 2048, "percentile": 99.99, "symmetric": False},
    ),
}


def _our_ranges(quant: QuantConfig) -> dict[str, tuple[float, float]]:
    prepared = prepare(RunConfig(model=MODEL, calib=CALIB, quant=quant, prepare=False))  # as ORT gets it
    chunks = dataset_chunks(prepared.calib, 45)
    (stats,) = dask.compute(calibration_graph(chunks, prepared.model, prepared.tensors), scheduler="sync")
    graph = histogram_graph(chunks, prepared.model, prepared.tensors, histogram_specs(stats, quant))
    (histograms,) = dask.compute(graph, scheduler="sync")
    return activation_ranges(stats, histograms, quant)


@pytest.mark.parametrize("case", sorted(CASES))
def test_thresholds_agree_with_ort_within_one_bin(case, tmp_path):
    quant, method, options = CASES[case]
    calibrator = create_calibrator(
        MODEL,
        list(default_op_types()),
        augmented_model_path=str(tmp_path / "augmented.onnx"),
        calibrate_method=method,
        extra_options=options,
    )
    calibrator.collect_data(BatchReader(load_arrays(CALIB, ["input"]), batch=300))
    reference = calibrator.compute_data()
    ours = _our_ranges(quant)
    assert sorted(ours) == sorted(reference.keys())
    exact = 0
    for name, (low, high) in ours.items():
        edges = calibrator.collector.histogram_dict[name][1]
        width = float(edges[1] - edges[0])
        ref_low, ref_high = float(np.asarray(reference[name].lowest)), float(np.asarray(reference[name].highest))
        assert abs(low - ref_low) <= width and abs(high - ref_high) <= width, (name, (low, high), (ref_low, ref_high))
        exact += (low, high) == (ref_low, ref_high)
    if case == "entropy":  # same edges, same counts, same search: the very same thresholds
        assert exact == len(ours)
