"""A fixed set of validation rows with their FP32 outputs, scored against model variants (the tune search).

The search scores dozens of variants of one model on the same rows: the rows
and their FP32 outputs are read and computed once (one task per chunk, which
also runs the full INT8 model there: the search's baseline and the rows it
gets most wrong), and every experiment task receives that value and runs
only its own variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dask_quant.tasks.chunks import ChunkRef, read_feeds, read_labels
from dask_quant.tasks.errors import Refused
from dask_quant.tasks.feeding import Feeding
from dask_quant.tasks.sessions import ModelRef, fixed_batch, fresh_session, run_in_batches, session_for
from dask_quant.tasks.validate import ValidationStats, _cosines, compare_outputs

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
        return self.score_session(fresh_session(model), output)

    def score_session(self, session, output: str | None = None) -> ValidationStats:
        """score() of the model a `session` runs."""
        return self.compare(_run_sliced(session, output, self.feeds, self.feeding))

    def compare(self, outputs: np.ndarray) -> ValidationStats:
        """The statistics of `outputs` (one per row) against these rows' FP32 outputs."""
        return compare_outputs(self.fp32, outputs, self.labels, np.asarray(self.rows))

    def take(self, rows: Sequence[int]) -> ReferenceRows:
        """These rows' subset `rows` (row numbers, each one of them)."""
        at = np.searchsorted(np.asarray(self.rows), sorted(rows))
        labels = None if self.labels is None else self.labels[at]
        return ReferenceRows(
            tuple(self.rows[i] for i in at), {k: v[at] for k, v in self.feeds.items()}, self.fp32[at], labels,
            self.feeding,
        )  # fmt: skip


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


def reference_chunk(chunk: ChunkRef, fp32: ModelRef, int8: ModelRef, output: str | None = None):
    """(ReferenceRows of the chunk's rows, the outputs of `int8` on them): the search's reference rows and
    its baseline, from one read of the chunk."""
    feeds, feeding = read_feeds(chunk), chunk.feeding
    fp32_outputs = _run_sliced(session_for(fp32), output, feeds, feeding)
    rows = ReferenceRows(tuple(range(chunk.start, chunk.stop)), feeds, fp32_outputs, read_labels(chunk), feeding)
    return rows, _run_sliced(session_for(int8), output, feeds, feeding)


def joined(parts: Sequence) -> tuple[ReferenceRows, np.ndarray] | Refused:
    """reference_chunk's results of chunks in row order as one (or the first chunk's refusal)."""
    refused = [part for part in parts if isinstance(part, Refused)]
    if refused:
        return refused[0]
    references = [rows for rows, _ in parts]
    labels = [r.labels for r in references]
    every = ReferenceRows(
        tuple(row for r in references for row in r.rows),
        {name: np.concatenate([r.feeds[name] for r in references]) for name in references[0].feeds},
        np.concatenate([r.fp32 for r in references]),
        None if labels[0] is None else np.concatenate(labels),
        references[0].feeding,
    )
    return every, np.concatenate([outputs for _, outputs in parts])


def baseline(both: tuple[ReferenceRows, np.ndarray] | Refused) -> tuple[ValidationStats, np.ndarray] | Refused:
    """The statistics of the INT8 outputs against FP32's on every row, and each row's cosine (1 where both
    outputs are all zeros)."""
    if isinstance(both, Refused):
        return both
    every, outputs = both
    a, b = (x.reshape(len(x), -1).astype(np.float64) for x in (every.fp32, outputs))
    cosines = np.ones(len(a))
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosines[~both_zero] = _cosines(a, b)[0]
    return every.compare(outputs), cosines


def subset_stats(both: tuple[ReferenceRows, np.ndarray], rows: Sequence[int]) -> ValidationStats:
    """The statistics of the INT8 outputs against FP32's on `rows` (row numbers) only."""
    every, outputs = both
    at = np.searchsorted(np.asarray(every.rows), sorted(rows))
    return every.take(rows).compare(outputs[at])


def first(both: tuple[ReferenceRows, np.ndarray]) -> ReferenceRows:
    return both[0]
