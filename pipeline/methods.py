"""The calibration methods: one table that everything else asks.

Per method: the settings it reads (everything else it ignores), whether it
needs the histogram pass, which histogram it reads, and the search that turns
statistics into a range. The CLI's choices and help, the configs' validation,
qparams.parquet's setting columns and the report all come from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from dask_quant.tasks import thresholds


class Method(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"
    MSE = "mse"


# The method-specific settings a QuantConfig carries (QuantConfig field names).
SETTINGS = ("percentile", "num_bins", "num_quantized_bins")


@dataclass(frozen=True)
class MethodInfo:
    """What a method is: its settings, its passes, and its range search (None: the exact observed range)."""

    summary: str
    settings: tuple[str, ...]
    search: Callable | None
    absolute_when_symmetric: bool = False  # symmetric variant histograms |x| on [0, max|x|]

    @property
    def histograms(self) -> bool:
        return self.search is not None


METHODS: dict[Method, MethodInfo] = {
    Method.MINMAX: MethodInfo("the exact observed min and max", (), None),
    Method.ENTROPY: MethodInfo(
        "the range whose quantized histogram loses least information (KL)",
        ("num_bins", "num_quantized_bins"),
        thresholds.entropy_range,
    ),
    Method.PERCENTILE: MethodInfo(
        "cut (100 - P)% of the values", ("percentile", "num_bins"), thresholds.percentile_range, True
    ),
    Method.MSE: MethodInfo("the range with the least expected squared error", ("num_bins",), thresholds.mse_range),
}


def info(method: Method) -> MethodInfo:
    return METHODS[Method(method)]


def parse_method(value: str | Method) -> Method:
    """The Method named by `value`; InputError naming the choices otherwise."""
    from dask_quant.tasks.errors import InputError

    try:
        return Method(value)
    except ValueError:
        msg = f"unknown method {value!r}; choose one of: {choices()}"
        raise InputError(msg) from None


def choices() -> str:
    return ", ".join(m.value for m in Method)


def cli_help() -> str:
    """--method's help text, one clause per method."""
    parts = "; ".join(f"{m.value}: {i.summary}" for m, i in METHODS.items())
    return f"How activation ranges are chosen ({parts}). Several, comma-separated, share one calibration."


def setting_values(quant) -> dict:
    """The method-specific settings of `quant`, None where its method has no such setting."""
    used = info(quant.method).settings
    return {name: (getattr(quant, name) if name in used else None) for name in SETTINGS}
