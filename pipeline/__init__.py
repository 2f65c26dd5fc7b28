"""Client side of dask-quant: builds task graphs, runs them, writes results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["run"]

if TYPE_CHECKING:
    from pipeline.job import RunResult


def run(*args: Any, **kwargs: Any) -> RunResult:
    """Quantize a model; see `pipeline.job.run` (imported lazily: the CLI starts fast)."""
    from pipeline.job import run as _run

    return _run(*args, **kwargs)
