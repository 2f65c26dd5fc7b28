"""Validation task: FP32 against INT8 on one chunk, as mergeable partial sums."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.chunks import ChunkRef, read_feeds, read_labels
from tasks.sessions import ModelRef, run_in_batches, session_for


@dataclass(frozen=True)
class ValidationStats:
    """Counts and sums over validation samples; `merge` adds them up.

    Metrics are taken on the model's first output, one row per sample:
    top-1 is the argmax over the flattened row.
    """

    samples: int = 0
    labelled: int = 0
    fp32_correct: int = 0
    int8_correct: int = 0
    top1_agree: int = 0
    max_abs_error: float = 0.0
    cosine_sum: float = 0.0

    def merge(self, other: ValidationStats) -> ValidationStats:
        return ValidationStats(
            self.samples + other.samples,
            self.labelled + other.labelled,
            self.fp32_correct + other.fp32_correct,
            self.int8_correct + other.int8_correct,
            self.top1_agree + other.top1_agree,
            max(self.max_abs_error, other.max_abs_error),
            self.cosine_sum + other.cosine_sum,
        )

    @property
    def agreement(self) -> float:
        return self.top1_agree / self.samples if self.samples else float("nan")

    @property
    def mean_cosine(self) -> float:
        return self.cosine_sum / self.samples if self.samples else float("nan")

    @property
    def fp32_accuracy(self) -> float | None:
        return self.fp32_correct / self.labelled if self.labelled else None

    @property
    def int8_accuracy(self) -> float | None:
        return self.int8_correct / self.labelled if self.labelled else None


@dataclass(frozen=True)
class ChunkValidation:
    """One validation chunk's identity and its statistics."""

    index: int
    start: int
    stop: int
    stats: ValidationStats


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dots = np.einsum("ij,ij->i", a, b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dots / norms, 0.0)
    return np.where(both_zero, 1.0, cos)


def compare_outputs(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None) -> ValidationStats:
    """Statistics of one batch of first outputs (samples on axis 0)."""
    a = fp32.reshape(len(fp32), -1).astype(np.float64)
    b = int8.reshape(len(int8), -1).astype(np.float64)
    top_a, top_b = a.argmax(axis=1), b.argmax(axis=1)
    labelled = 0 if labels is None else len(labels)
    flat_labels = None if labels is None else labels.reshape(len(labels))
    return ValidationStats(
        samples=len(a),
        labelled=labelled,
        fp32_correct=0 if flat_labels is None else int((top_a == flat_labels).sum()),
        int8_correct=0 if flat_labels is None else int((top_b == flat_labels).sum()),
        top1_agree=int((top_a == top_b).sum()),
        max_abs_error=float(np.abs(a - b).max()) if a.size else 0.0,
        cosine_sum=float(_cosines(a, b).sum()),
    )


def validate_chunk(chunk: ChunkRef, fp32: ModelRef, int8: ModelRef) -> ChunkValidation:
    """Run one chunk through both models (default graph optimisations, as deployed)."""
    feeds = read_feeds(chunk)
    out_fp32 = run_in_batches(session_for(fp32), None, feeds)[0]
    out_int8 = run_in_batches(session_for(int8), None, feeds)[0]
    stats = compare_outputs(out_fp32, out_int8, read_labels(chunk))
    return ChunkValidation(chunk.index, chunk.start, chunk.stop, stats)
