"""Range searches against ONNX Runtime's own HistogramCollector on identical histograms."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import HistogramCollector

from dask_quant.tasks.thresholds import ThresholdSettings, entropy_range, mse_range, percentile_range


def _data(kind: str, rng) -> np.ndarray:
    samples = {
        "normal": lambda: rng.normal(size=40000),
        "heavy-tailed": lambda: rng.laplace(size=40000) ** 3,
        "relu": lambda: np.maximum(rng.normal(size=40000), 0),
        "skewed": lambda: rng.gamma(2.0, size=40000) - 1,
    }
    return samples[kind]().astype(np.float32)


def _signed_histogram(data: np.ndarray, bins: int):
    bound = np.float32(max(abs(data.min()), abs(data.max())))
    counts, edges = np.histogram(data, bins, range=(-bound, bound))
    return counts, edges, bound


@pytest.mark.parametrize("kind", ["normal", "heavy-tailed", "relu", "skewed"])
@pytest.mark.parametrize("bins", [256, 1024, 2048])
def test_entropy_matches_ort_exactly(kind, bins):
    data = _data(kind, np.random.default_rng(bins))
    counts, edges, bound = _signed_histogram(data, bins)
    collector = HistogramCollector("entropy", False, bins, 128, 99.999, "same")
    ref = collector.get_entropy_threshold((counts, edges, data.min(), data.max(), bound), 128)
    ours = entropy_range(counts, edges, (float(data.min()), float(data.max())), ThresholdSettings())
    assert ours == (float(ref[0]), float(ref[1]))


@pytest.mark.parametrize("kind", ["normal", "heavy-tailed", "skewed"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_percentile_matches_ort_exactly(kind, symmetric):
    data = _data(kind, np.random.default_rng(7))
    collector = HistogramCollector("percentile", symmetric, 2048, 128, 99.9, "same")
    collector.collect({"t": data})
    counts, edges = collector.histogram_dict["t"][:2]
    ref = collector.compute_percentile()["t"]
    settings = ThresholdSettings(percentile=99.9, symmetric=symmetric)
    ours = percentile_range(counts, edges, (float(data.min()), float(data.max())), settings)
    assert ours == (float(ref[0]), float(ref[1]))


def _simulated_mse(data: np.ndarray, low: float, high: float, levels: int = 255) -> float:
    """Quantize-dequantize the samples themselves on [low, high] (0 included, as ORT does)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / levels
    zero_point = np.round(-low / scale)
    q = np.clip(np.round(data / scale) + zero_point, 0, levels)
    return float(np.mean(((q - zero_point) * scale - data) ** 2))


@pytest.mark.parametrize("kind", ["heavy-tailed", "skewed"])
def test_mse_range_beats_minmax_on_the_samples_themselves(kind):
    data = _data(kind, np.random.default_rng(11))
    counts, edges, _ = _signed_histogram(data, 2048)
    observed = (float(data.min()), float(data.max()))
    low, high = mse_range(counts, edges, observed, ThresholdSettings())
    assert observed[0] <= low and high <= observed[1]
    assert _simulated_mse(data, low, high) < _simulated_mse(data, *observed)


def test_mse_keeps_the_range_of_uniform_data():
    flat = np.random.default_rng(3).uniform(-1, 1, size=20000).astype(np.float32)
    counts, edges, _ = _signed_histogram(flat, 2048)
    low, high = mse_range(counts, edges, (float(flat.min()), float(flat.max())), ThresholdSettings())
    assert low < -0.95 and high > 0.95


def test_mse_symmetric_range_is_symmetric_before_clamping():
    data = np.random.default_rng(4).normal(size=5000).astype(np.float32) * 2
    counts, edges, _ = _signed_histogram(data, 512)
    low, high = mse_range(counts, edges, (-100.0, 100.0), ThresholdSettings(symmetric=True))
    assert low == -high


def test_a_constant_tensor_never_gets_an_inverted_range():
    from dask_quant.tasks.histogram import HistogramSpec

    spec = HistogramSpec("sr", -2.5, 2.5, 2048)
    counts = spec.count(np.full(64, 2.5, np.float32))
    low, high = percentile_range(counts, spec.edges(), (2.5, 2.5), ThresholdSettings(percentile=99.999))
    assert low <= high and (low, high) == (2.5, 2.5)
