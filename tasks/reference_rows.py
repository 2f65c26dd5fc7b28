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
from dask_quant.tasks.sessions import ModelRef, run_in_slices, session_for
from dask_quant.tasks.validate import ValidationStats, _cosines, compare_outputs


@dataclass(frozen=True)
class ReferenceRows:
    """Feeds (samples on axis 0), FP32 outputs and labels (or None) of the validation rows `rows`: `fp32` of
    the lead output, `others` of each other output compared (pipeline.metrics), in order."""

    rows: tuple[int, ...]
    feeds: dict[str, np.ndarray]
    fp32: np.ndarray
    labels: np.ndarray | None
    feeding: Feeding
    others: tuple[np.ndarray, ...] = ()

    def score_session(self, session, names: tuple[str, ...] | None = None) -> tuple[ValidationStats, ...]:
        """The statistics of the outputs `names` (None: the first) of the model a `session` runs, on these rows
        against FP32's (as validation computes them), one per output."""
        return self.compare(run_in_slices(session, names, self.feeds, self.feeding))

    def compare(self, outputs: Sequence[np.ndarray]) -> tuple[ValidationStats, ...]:
        """The statistics of `outputs` (the lead output's, then the others', one row per row) against these
        rows' FP32 outputs: labels and row numbers go with the lead one, as in validation."""
        lead = compare_outputs(self.fp32, outputs[0], self.labels, np.asarray(self.rows))
        return (lead, *(compare_outputs(a, b) for a, b in zip(self.others, outputs[1:], strict=True)))

    def take(self, rows: Sequence[int]) -> ReferenceRows:
        """These rows' subset `rows` (row numbers, each one of them)."""
        at = np.searchsorted(np.asarray(self.rows), sorted(rows))
        labels = None if self.labels is None else self.labels[at]
        return ReferenceRows(
            tuple(self.rows[i] for i in at), {k: v[at] for k, v in self.feeds.items()}, self.fp32[at], labels,
            self.feeding, tuple(other[at] for other in self.others),
        )  # fmt: skip


def reference_chunk(chunk: ChunkRef, fp32: ModelRef, int8: ModelRef, names: tuple[str, ...] | None = None):
    """(ReferenceRows of the chunk's rows, the outputs `names` of `int8` on them): the search's reference rows
    and its baseline, from one read of the chunk."""
    feeds, feeding = read_feeds(chunk), chunk.feeding
    lead, *others = run_in_slices(session_for(fp32), names, feeds, feeding)
    rows = ReferenceRows(tuple(range(chunk.start, chunk.stop)), feeds, lead, read_labels(chunk), feeding, tuple(others))
    return rows, run_in_slices(session_for(int8), names, feeds, feeding)


def fp32_outputs(every: ReferenceRows, start: int, stop: int) -> list[np.ndarray]:
    """The FP32 outputs (the lead one, then the others) of rows start..stop of `every` (joined from
    reference_chunk's chunks): for the chunk of those rows, what validation's model_outputs computes (the
    same run_in_slices of the same session over the same feeds)."""
    rows = every.take(range(start, stop))
    return [rows.fp32, *rows.others]


def joined(parts: Sequence) -> tuple[ReferenceRows, list[np.ndarray]] | Refused:
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
        tuple(np.concatenate([r.others[j] for r in references]) for j in range(len(references[0].others))),
    )
    outputs = [np.concatenate([each[j] for _, each in parts]) for j in range(len(parts[0][1]))]
    return every, outputs


def baseline(both, every_output: bool = False) -> tuple[tuple[ValidationStats, ...], np.ndarray] | Refused:
    """The statistics of the INT8 outputs against FP32's on every row (one per output), and each row's cosine
    on the lead output, or its lowest over `every_output` (1 where both outputs are all zeros or no cosine
    can be had but for FP32's own inf; -inf where INT8 gives inf or NaN where FP32 is finite)."""
    if isinstance(both, Refused):
        return both
    every, outputs = both
    compared = zip((every.fp32, *every.others), outputs, strict=True) if every_output else [(every.fp32, outputs[0])]
    cosines = np.ones(len(every.fp32))
    for fp32, int8 in compared:
        a, b = (x.reshape(len(x), -1).astype(np.float64) for x in (fp32, int8))
        row = np.ones(len(a))
        both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
        row[~both_zero] = _cosines(a, b)[0]
        # A row without a cosine: the worst where INT8 made a value inf or NaN that FP32 has finite, else as
        # good as any (1: no error to find where FP32 has its own inf, a mask's -inf on purpose).
        undefined = np.isnan(row)
        broke = (np.isfinite(a) & ~np.isfinite(b)).any(axis=1)
        row[undefined] = np.where(broke, -np.inf, 1.0)[undefined]
        cosines = np.fmin(cosines, row)
    return every.compare(outputs), cosines


def subset_stats(both, rows: Sequence[int]) -> tuple[ValidationStats, ...]:
    """The statistics of the INT8 outputs against FP32's on `rows` (row numbers) only, one per output."""
    every, outputs = both
    at = np.searchsorted(np.asarray(every.rows), sorted(rows))
    return every.take(rows).compare([output[at] for output in outputs])


def first(both) -> ReferenceRows:
    return both[0]
