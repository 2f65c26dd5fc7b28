"""The INT8 model's check before it is published: ONNX Runtime loads it, and its outputs are finite."""

from __future__ import annotations

import functools

import numpy as np

from dask_quant.tasks.chunks import ChunkRef, read_feeds
from dask_quant.tasks.sessions import ModelRef, run_in_batches, session_for


def int8_problem(chunk: ChunkRef, fp32: ModelRef, model: ModelRef) -> str | None:
    """What is wrong with the INT8 model on one calibration chunk (default optimisations, as deployed), or None.

    Non-finite outputs count only where the FP32 model's are finite (a model may output -inf on purpose).
    """
    (problem,) = int8_problems(chunk, fp32, (model,))
    return problem


def int8_problems(chunk: ChunkRef, fp32: ModelRef, models: tuple[ModelRef, ...]) -> tuple[str | None, ...]:
    """int8_problem of each of `models` (a run's methods), the FP32 model run at most once."""
    feeds = functools.cache(lambda: read_feeds(chunk))
    reference = functools.cache(lambda: run_in_batches(session_for(fp32), None, feeds(), chunk.feeding))
    return tuple(_problem(chunk, feeds, reference, model) for model in models)


def _problem(chunk: ChunkRef, feeds, reference, model: ModelRef) -> str | None:
    from dask_quant.tasks.errors import DataError, InputError

    where = f"calibration rows {chunk.start}..{chunk.stop}"
    try:
        session = session_for(model)
    except InputError as exc:
        reason = str(exc).split("(", 1)[-1].rsplit(")", 1)[0]
        return f"cannot be loaded by ONNX Runtime ({reason})"
    try:
        outputs = run_in_batches(session, None, feeds(), chunk.feeding)
    except DataError as exc:
        return f"fails in ONNX Runtime on {where}, where the FP32 model runs ({exc})"
    # FP32 runs only where an INT8 output is not finite: one whose values are all finite cannot be newly so.
    bad = [
        meta.name
        for i, (meta, value) in enumerate(zip(session.get_outputs(), outputs, strict=True))
        if np.issubdtype(value.dtype, np.floating)
        and not np.isfinite(value).all()
        and _newly_non_finite(reference()[i], value)
    ]
    if bad:
        return f"outputs NaN or infinite values ({', '.join(map(repr, bad))}) on {where}, where FP32's are finite"
    return None


def _newly_non_finite(expected: np.ndarray, value: np.ndarray) -> bool:
    """INT8 values that are NaN or infinite where FP32's are finite (elementwise; an output whose shape
    depends on the values, such as NonZero's, as a whole)."""
    if value.shape != expected.shape:
        return bool(np.isfinite(expected).all() and not np.isfinite(value).all())
    return bool((np.isfinite(expected) & ~np.isfinite(value)).any())
