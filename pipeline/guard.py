"""The quality guard: did the INT8 model keep what the user needs?

--min-cosine and --max-drop make a run fail (exit 1) after it is published;
without them, a run whose INT8 outputs collapsed gets a loud warning. Either
names the worst layers, which are the ones to keep in FP32.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dask_quant.pipeline.config import RunConfig
    from dask_quant.pipeline.job import RunResult

COLLAPSED_COSINE = 0.9


def _worst_layers(result: RunResult) -> str:
    worst = result.layers[:3]
    if not worst:
        return ""
    names = ", ".join(f"{row['node'] or row['tensor']!r} ({row['sqnr_db']:.1f} dB)" for row in worst)
    return f"; worst layers: {names}; keep the nodes that make or feed them in FP32 with --exclude-nodes"


def quality_failures(config: RunConfig, result: RunResult) -> list[str]:
    """What --min-cosine / --max-drop found wrong with a published run (empty: it passed).

    With either flag, collapsed outputs fail too: an output offset by a constant keeps its cosine near 1
    even when the INT8 model no longer depends on its input.
    """
    stats, failures = result.validation, []
    if stats is None or (config.min_cosine is None and config.max_drop is None):
        return failures
    broken = [(None, stats), *((name, other) for name, _, other in result.other_outputs)]
    failures += [
        f"output {name!r}: {what}" if name else what
        for name, each in broken
        if (what := collapse_reason(each.collapsed, None, each.int8_non_finite)) is not None
    ]
    if config.min_cosine is not None and not stats.mean_cosine >= config.min_cosine:
        failures.append(f"mean cosine {stats.mean_cosine:.4f} is below --min-cosine {config.min_cosine}")
    if config.max_drop is not None and stats.fp32_accuracy is not None:
        drop = 100 * (stats.fp32_accuracy - stats.int8_accuracy)
        if drop > config.max_drop:
            failures.append(f"accuracy drops {drop:.2f} points, more than --max-drop {config.max_drop}")
    return [f"{result.run_id}: {failure}{_worst_layers(result)}" for failure in failures]


def collapse_reason(collapsed: bool, mean_cosine: float | None, int8_non_finite: int = 0) -> str | None:
    """Why the INT8 outputs look broken, or None (also read by the report, from run.json's summary)."""
    if int8_non_finite:
        return f"the INT8 output is inf or NaN in {int8_non_finite} values where FP32's is finite"
    if collapsed:
        return "the INT8 output is the same for every sample while FP32's is not"
    if mean_cosine is not None and not math.isnan(mean_cosine) and mean_cosine < COLLAPSED_COSINE:
        return f"mean cosine of INT8 to FP32 outputs is {mean_cosine:.3f}"
    return None


def collapse_warning(result: RunResult) -> str | None:
    """A loud warning when the INT8 outputs collapsed, the lead one or another (without a guard flag the
    run still succeeds)."""
    compared = [(None, result.validation), *((name, stats) for name, _, stats in result.other_outputs)]
    found = [
        (name, what)
        for name, stats in compared
        if stats is not None
        and (what := collapse_reason(stats.collapsed, stats.mean_cosine, stats.int8_non_finite)) is not None
    ]
    if not found:
        return None
    whats = "; ".join(f"output {name!r}: {what}" if name else what for name, what in found)
    return f"WARNING: {result.run_id}: the INT8 model looks broken: {whats}{_worst_layers(result)}"
