"""Clip ranges from histograms: percentile, entropy (KL), MSE. Pure numpy.

Each function takes a tensor's merged histogram, its bin edges and the exact
observed (min, max), and returns the (low, high) range to quantize with,
clamped to what was observed. The methods follow ONNX Runtime's histogram
calibrators (onnxruntime.quantization.calibrate.HistogramCollector) so their
thresholds can be compared bin for bin; the entropy search does the same
arithmetic with array operations instead of Python loops over bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_quant.tasks.entropy_search import entropy_window

_MSE_STEPS = 64  # candidates per end
_MSE_ROUNDS = 2  # alternate low/high searches


@dataclass(frozen=True)
class ThresholdSettings:
    """What a threshold search needs besides the histogram."""

    percentile: float = 99.999
    num_quantized_bins: int = 128
    symmetric: bool = False
    levels: int = 255  # qmax - qmin of the activation type


def clamp(low: float, high: float, observed: tuple[float, float]) -> tuple[float, float]:
    """The range cut to what was observed; the observed range itself when the cut misses it entirely
    (a constant tensor sits inside one bin, whose edge can fall below its value)."""
    low, high = max(low, observed[0]), min(high, observed[1])
    return (low, high) if low <= high else observed


def percentile_range(counts, edges, observed, settings: ThresholdSettings) -> tuple[float, float]:
    """Cut (100 - percentile)% of the values: from |x| when symmetric, half from each tail otherwise."""
    cdf = np.cumsum(counts / counts.sum())
    if settings.symmetric:  # counts are of |x| on [0, max|x|]
        edge = float(edges[np.searchsorted(cdf, settings.percentile / 100.0)])
        return clamp(-edge, edge, observed)
    tail = (100.0 - settings.percentile) / 200.0
    left = float(edges[np.searchsorted(cdf, tail)])
    right = float(edges[np.searchsorted(cdf, 1.0 - tail)])
    return clamp(left, right, observed)


def _rounding_error(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Mean squared distance to the nearest multiple of `scale` of values spread evenly over [a, b].

    F(x), the integral of that squared distance from -scale/2 to x, is
    m * scale**3 / 12 + (r**3 + scale**3 / 8) / 3 for x = m * scale + r.
    """

    def integral(x):
        m = np.round(x / scale)
        r = x - m * scale
        return m * scale**3 / 12.0 + (r**3 + scale**3 / 8.0) / 3.0

    width = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (integral(b) - integral(a)) / width
    centre_error = ((a + b) / 2 - scale * np.round((a + b) / (2 * scale))) ** 2
    return np.where(width > 0, mean, centre_error)


def _expected_errors(counts, lefts, rights, lows, highs, levels: int) -> np.ndarray:
    """Expected squared error of the histogram quantized on each candidate [low, high] (rows)."""
    centres = (lefts + rights) / 2.0
    lows, highs = lows[:, None], highs[:, None]
    scale = (highs - lows) / levels
    clipped = (centres - np.clip(centres, lows, highs)) ** 2
    inside = (centres >= lows) & (centres <= highs)
    error = np.where(inside, _rounding_error(lefts, rights, scale), clipped)
    return error @ counts


def mse_range(counts, edges, observed, settings: ThresholdSettings) -> tuple[float, float]:
    """The clip range that minimises the expected squared quantization error.

    Values are taken as spread evenly within their bin. Inside [low, high] a
    value costs its squared distance to the nearest grid point (0 is on the
    grid, as ORT's zero point puts it there); outside, its squared distance to
    the range. Each end moves towards 0 on a grid of 64 steps; the ends are
    searched in turn (one search with low = -high when symmetric).
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    lefts, rights = edges[:-1], edges[1:]
    low, high = min(observed[0], 0.0), max(observed[1], 0.0)
    if high == low:
        return observed
    steps = np.linspace(1.0, 0.0, _MSE_STEPS + 1)[:-1]
    if settings.symmetric:
        bounds = max(-low, high) * steps
        best = int(np.argmin(_expected_errors(counts, lefts, rights, -bounds, bounds, settings.levels)))
        return clamp(-float(bounds[best]), float(bounds[best]), observed)
    low_candidates, high_candidates = low * steps, high * steps
    for _ in range(_MSE_ROUNDS):
        errors = _expected_errors(counts, lefts, rights, low_candidates, np.full(steps.size, high), settings.levels)
        low = float(low_candidates[int(np.argmin(errors))])
        errors = _expected_errors(counts, lefts, rights, np.full(steps.size, low), high_candidates, settings.levels)
        high = float(high_candidates[int(np.argmin(errors))])
    return clamp(low, high, observed)


def entropy_range(counts, edges, observed, settings: ThresholdSettings) -> tuple[float, float]:
    """TensorRT-style KL search (tasks.entropy_search), clamped to the observed range."""
    low, high = entropy_window(counts, edges, settings.num_quantized_bins)
    return clamp(low, high, observed)

