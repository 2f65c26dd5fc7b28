"""From merged statistics to the range each activation is quantized with.

Pure functions of (statistics, config): no session, no path, no client.
"""

from __future__ import annotations

from dask_quant.pipeline.config import QuantConfig
from dask_quant.pipeline.methods import info
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.histogram import Histograms, HistogramSpec
from dask_quant.tasks.range_stats import RangeStats
from dask_quant.tasks.thresholds import ThresholdSettings


def histogram_specs(stats: RangeStats, config: QuantConfig) -> tuple[HistogramSpec, ...]:
    """Pass-2 bins per tensor that `config`'s method reads, fixed by the tensor's exact pass-1 range.

    Values are binned on [-T, T] with T = max(|min|, |max|), as ONNX Runtime's
    histogram calibrators do; symmetric percentile bins |x| on [0, T].
    Nothing for a method without histograms.
    """
    method = info(config.method)
    if not method.histograms:
        return ()
    absolute = method.absolute_when_symmetric and config.symmetric
    specs = []
    for name, observed in stats.ranges:
        if observed.count == 0:
            continue
        bound = max(abs(observed.min), abs(observed.max))
        specs.append(HistogramSpec(name, 0.0 if absolute else -bound, bound, config.num_bins, absolute))
    return tuple(specs)


def threshold_settings(config: QuantConfig) -> ThresholdSettings:
    return ThresholdSettings(
        percentile=config.percentile,
        num_quantized_bins=config.num_quantized_bins,
        symmetric=config.symmetric,
        levels=config.activation_type.levels,
    )


def activation_ranges(
    stats: RangeStats, histograms: Histograms | None, config: QuantConfig
) -> dict[str, tuple[float, float]]:
    """The (low, high) range of every calibrated activation under `config`'s method."""
    search = info(config.method).search
    if search is None:
        return {name: (r.min, r.max) for name, r in stats.ranges if r.count}
    import numpy as np

    observed = stats.as_dict()
    settings = threshold_settings(config)
    ranges = {}
    for spec in histogram_specs(stats, config):
        histogram = None if histograms is None else histograms.find(spec)
        if histogram is None:
            msg = (
                f"this calibration has no {spec.bins}-bin histogram of {spec.tensor!r} for method "
                f"{config.method.value}; calibrate with that method (and its --num-bins, --symmetric) first"
            )
            raise InputError(msg)
        seen = observed[spec.tensor]
        ranges[spec.tensor] = search(np.asarray(histogram.counts), spec.edges(), (seen.min, seen.max), settings)
    return ranges
