"""What `dask-quant tune` must reach: a validation metric and its bound (`--target "cosine>=0.99"`, `--max-drop`)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dask_quant.pipeline.guard import collapse_reason
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.validate import ValidationStats

# metric name -> (how to read it from ValidationStats, what it is)
METRICS = {
    "cosine": (lambda s: s.mean_cosine, "mean cosine of INT8 to FP32 outputs"),
    "agreement": (lambda s: s.agreement, "top-1 agreement of INT8 with FP32"),
    "accuracy": (lambda s: s.int8_accuracy, "INT8 accuracy (needs labels)"),
}


def metric_value(metric: str, stats: ValidationStats) -> float | None:
    """`metric` (a name in METRICS) on `stats`: None when it cannot be measured there (accuracy without
    labels); NaN when the INT8 model is broken there: its output collapsed (the same for every sample while
    FP32's differ: an offset can keep the cosine near 1, and a constant class scores its share of the labels)
    or inf/NaN where FP32's is finite. So no tune target holds on such a model, the search ranks it worst,
    and the zoo alerts."""
    value = METRICS[metric][0](stats)
    if value is None:
        return None
    return math.nan if stats.collapsed or stats.int8_non_finite else float(value)


_FORM = re.compile(r"^\s*(\w+)\s*>=\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Target:
    """`metric` >= `bound`, or with `max_drop` (points) accuracy at most that far below FP32's."""

    metric: str = "cosine"
    bound: float | None = 0.99
    max_drop: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            msg = f"--target: unknown metric {self.metric!r}; choose one of: {', '.join(METRICS)}"
            raise InputError(msg)
        if self.max_drop is not None and (self.metric != "accuracy" or not 0 <= self.max_drop <= 100):
            msg = f"--max-drop must be in [0, 100] accuracy points, got {self.max_drop}"
            raise InputError(msg)
        if self.bound is not None and not math.isfinite(self.bound):
            msg = f"--target: the bound must be a finite number, got {self.bound}"
            raise InputError(msg)

    @classmethod
    def parse(cls, text: str | None, max_drop: float | None = None) -> Target:
        """From `--target "NAME>=VALUE"` or `--max-drop P` (exactly one of them)."""
        if (text is None) == (max_drop is None):
            msg = 'tune needs exactly one of --target "cosine>=0.99" (or agreement, accuracy) and --max-drop POINTS'
            raise InputError(msg)
        if max_drop is not None:
            return cls("accuracy", None, max_drop)
        match = _FORM.match(text)
        if match is None:
            msg = f'--target {text!r}: write it as NAME>=VALUE, e.g. "cosine>=0.99"; names: {", ".join(METRICS)}'
            raise InputError(msg)
        try:
            bound = float(match.group(2))
        except ValueError:
            msg = f"--target {text!r}: {match.group(2)!r} is not a number"
            raise InputError(msg) from None
        return cls(match.group(1), bound)

    def value(self, stats: ValidationStats) -> float:
        """The metric on `stats` (metric_value; NaN where it cannot be measured or the model is broken)."""
        value = metric_value(self.metric, stats)
        return math.nan if value is None else value

    @property
    def floor(self) -> float:
        """The metric's lowest value: what a model without one (broken) counts as, for what a revert gains."""
        return -1.0 if self.metric == "cosine" else 0.0

    def shown(self, stats: ValidationStats) -> str:
        """The metric as the log shows it, saying why where value() is NaN for a broken model."""
        reason = collapse_reason(stats.collapsed, None, stats.int8_non_finite)
        return f"n/a ({reason})" if reason else f"{self.value(stats):.5f}"

    @property
    def every_output(self) -> bool:
        """Whether the target holds on every output compared (cosine), or on the lead one (its labels)."""
        return self.metric == "cosine"

    def judge(self, outputs: Sequence[ValidationStats]) -> ValidationStats:
        """Of the statistics of each output compared (the lead one first), those the target holds or fails on:
        for cosine, the output that scores lowest (NaN lowest; the first of equals), so a target met holds on
        every output; agreement and accuracy read the lead output, whose classes and labels they are."""
        if not self.every_output:
            return outputs[0]
        return min(outputs, key=lambda stats: -math.inf if math.isnan(self.value(stats)) else self.value(stats))

    def met(self, stats: ValidationStats) -> bool:
        value = self.value(stats)
        if self.max_drop is not None:
            return value >= stats.fp32_accuracy - self.max_drop / 100
        return value >= self.bound

    def describe(self) -> str:
        if self.max_drop is not None:
            return f"accuracy at most {self.max_drop:g} points below FP32's"
        return f"{self.metric}>={self.bound:g}"

    def needs_labels(self) -> bool:
        return self.metric == "accuracy"
