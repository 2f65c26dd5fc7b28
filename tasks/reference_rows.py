"""A fixed set of validation rows with their FP32 outputs, scored against model variants (the tune search).

The search scores dozens of variants of one model on the same rows: the rows
and their FP32 outputs are read and computed once (one task), and every
experiment task receives that value and runs only its own variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dask_quant.tasks.chunks import ChunkRef, read_feeds, read_labels
from dask_quant.tasks.feeding import Feeding
from dask_quant.tasks.sessions import ModelRef, fixed_batch, fresh_session, run_in_batches, session_for
from dask_quant.tasks.validate import ValidationStats, _cosines, chunk_outputs, compare_outputs

SLICE_ROWS = 64


@dataclass(frozen=True)
class ReferenceRows:
    """Feeds (samples on axis 0), FP32 outputs and labels (or None) of the validation rows `rows`."""

    rows: tuple[int, ...]
    feeds: dict[str, np.ndarray]
    fp32: np.ndarray
    labels: np.ndarray | None
    feeding: Feeding

    def score(self, model: ModelRef, output: str | None = None) -> ValidationStats:
        """The statistics of `model`'s outputs on these rows against FP32's (as validation computes them);
        the model's session is not cached (a variant is scored once)."""
        outputs = _run_sliced(fresh_session(model), output, self.feeds, self.feeding)
        return compare_outputs(self.fp32, outputs, self.labels, np.asarray(self.rows))


def _run_sliced(session, output: str | None, feeds: dict[str, np.ndarray], feeding: Feeding) -> np.ndarray:
    """One output over every row, SLICE_ROWS rows per run (a multiple of a fixed batch): the same slices
    whatever the caller, and a worker's memory bounded by them, not by how many rows are scored."""
    names = None if output is None else [output]
    batch = fixed_batch(session, feeding) or 1
    step = max(1, SLICE_ROWS // batch) * batch
    rows = len(next(iter(feeds.values())))
    parts = [
        run_in_batches(session, names, {k: v[i : i + step] for k, v in feeds.items()}, feeding)[0]
        for i in range(0, rows, step)
    ]
    return np.concatenate(parts)


def sample_cosines(chunk: ChunkRef, fp32: ModelRef, int8: ModelRef, output: str | None = None) -> np.ndarray:
    """Cosine of INT8 to FP32 outputs for each row of the chunk (1 where both are all zeros)."""
    pair = chunk_outputs(chunk, fp32, int8, None if output is None else (output,))
    a, b = (x.reshape(len(x), -1).astype(np.float64) for x in pair)
    cosines = np.ones(len(a))
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosines[~both_zero] = _cosines(a, b)[0]
    return cosines


def gather_rows(
    chunks: Sequence[ChunkRef], rows: Sequence[int], fp32: ModelRef, output: str | None = None
) -> ReferenceRows:
    """ReferenceRows of `rows` (sorted, of the chunks given): read from each chunk that holds some."""
    wanted = np.asarray(sorted(rows))
    feeds: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    for chunk in chunks:
        inside = wanted[(wanted >= chunk.start) & (wanted < chunk.stop)] - chunk.start
        if not len(inside):
            continue
        for name, array in read_feeds(chunk).items():
            feeds.setdefault(name, []).append(array[inside])
        chunk_labels = read_labels(chunk)
        if chunk_labels is not None:
            labels.append(chunk_labels[inside])
    joined = {name: np.concatenate(parts) for name, parts in feeds.items()}
    feeding = chunks[0].feeding
    outputs = _run_sliced(session_for(fp32), output, joined, feeding)
    return ReferenceRows(
        tuple(int(r) for r in wanted), joined, outputs, np.concatenate(labels) if labels else None, feeding
    )
