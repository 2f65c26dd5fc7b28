"""From merged statistics to the range each activation is quantized with.

Pure functions of (statistics, config): no session, no path, no client.
"""

from __future__ import annotations

from pipeline.config import Method, QuantConfig
from tasks.histogram import HistogramSpec
from tasks.range_stats import RangeStats
from tasks.thresholds import ThresholdSettings


def histogram_specs(stats: RangeStats, config: QuantConfig) -> tuple[HistogramSpec, ...]:
    """Pass-2 bins per tensor, fixed by its exact pass-1 range.

    Values are binned on [-T, T] with T = max(|min|, |max|), as ONNX Runtime's
    histogram calibrators do; symmetric percentile bins |x| on [0, T].
    """
    absolute = config.method is Method.PERCENTILE and config.symmetric
    specs = []
    for name, observed in stats.ranges:
        if observed.count == 0:
            continue
        bound = max(abs(observed.min), abs(observed.max))
        specs.append(HistogramSpec(name, 0.0 if absolute else -bound, bound, config.num_bins, absolute))
    return tuple(specs)


def threshold_settings(config: QuantConfig) -> ThresholdSettings:
    return ThresholdSettings(
        method=config.method.value,
        percentile=config.percentile,
        num_quantized_bins=config.num_quantized_bins,
        symmetric=config.symmetric,
        levels=config.activation_type.levels,
    )


def minmax_ranges(stats: RangeStats) -> dict[str, tuple[float, float]]:
    return {name: (r.min, r.max) for name, r in stats.ranges if r.count}
