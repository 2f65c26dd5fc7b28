"""Validation task: FP32 against INT8 on one chunk, as mergeable partial sums.

Metrics are taken on every model output that has one row per sample (chosen by
pipeline.metrics; the lead one first), one flattened row per sample. Labels and
nearest-neighbour agreement apply to the lead output. Every metric is computed;
the run's --metric only chooses which ones lead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from dask_quant.tasks.checkpoint import Checkpoints, cached
from dask_quant.tasks.chunks import ChunkRef, chunk_content, read_feeds, read_labels
from dask_quant.tasks.errors import InputError, Refused
from dask_quant.tasks.exact_sum import exact_sum, to_float
from dask_quant.tasks.row_identity import DIFFERENT_ROWS, row_identity, same_row
from dask_quant.tasks.sessions import ModelRef, run_in_slices, session_for


@dataclass(frozen=True)
class ValidationStats:
    """Counts and sums over validation samples; `merge` adds them up.

    Counts, maxima, minima and the exact sums (`cosine_sum`, `squared_error`,
    `signal`, integers as in tasks.exact_sum) are identical for any chunking:
    the same rows in any pieces merge to the same statistics.
    """

    samples: int = 0
    labelled: int = 0
    fp32_correct: int = 0
    int8_correct: int = 0
    top1_agree: int = 0
    max_abs_error: float = 0.0
    cosine_sum: int = 0  # sum of the samples' cosines, exact
    min_cosine: float = 1.0
    elements: int = 0
    squared_error: int = 0  # sum (fp32 - int8)**2, exact
    signal: int = 0  # sum fp32**2, exact
    neighbour_agree: int = 0  # queries whose nearest anchor is the same under both models
    neighbour_queries: int = 0
    zero_pairs: int = 0  # samples whose outputs are all zero under both models: no cosine, not counted as 1
    # Whether every sample's output row is the same (row_identity): one row for INT8 and not for FP32 means
    # the INT8 output no longer depends on the input (collapsed). Rows, not their sums: a classifier's
    # softmax gives every confident sample one-hot INT8 rows of one sum, whichever class it picks.
    fp32_row: str | None = None
    int8_row: str | None = None
    # The same for FP32's top-1 (row_identity of each sample's argmax): a collapse must lose a decision.
    fp32_top: str | None = None
    nan_cosines: int = 0  # samples whose cosine is NaN (outputs not finite): the mean cosine is NaN then
    non_finite: int = 0  # elements where FP32 or INT8 is inf or NaN, left out of squared_error and signal
    int8_non_finite: int = 0  # of those, elements where INT8 is inf or NaN and FP32 is finite: a broken model

    def merge(self, other: ValidationStats) -> ValidationStats:
        return ValidationStats(
            self.samples + other.samples,
            self.labelled + other.labelled,
            self.fp32_correct + other.fp32_correct,
            self.int8_correct + other.int8_correct,
            self.top1_agree + other.top1_agree,
            _nan_max(self.max_abs_error, other.max_abs_error),
            self.cosine_sum + other.cosine_sum,
            _nan_min(self.min_cosine, other.min_cosine),
            self.elements + other.elements,
            self.squared_error + other.squared_error,
            self.signal + other.signal,
            self.neighbour_agree + other.neighbour_agree,
            self.neighbour_queries + other.neighbour_queries,
            self.zero_pairs + other.zero_pairs,
            same_row(self.fp32_row, other.fp32_row),
            same_row(self.int8_row, other.int8_row),
            same_row(self.fp32_top, other.fp32_top),
            self.nan_cosines + other.nan_cosines,
            self.non_finite + other.non_finite,
            self.int8_non_finite + other.int8_non_finite,
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ValidationStats:
        """TypeError for what these fields cannot hold (a file written by an older version: a float sum)."""
        for key in ("cosine_sum", "squared_error", "signal"):
            if type(data.get(key, 0)) is not int:
                msg = f"{key} must be an exact sum (an integer), got {type(data[key]).__name__}"
                raise TypeError(msg)
        return cls(**data)  # an older version's fields (sum ranges) are a TypeError: computed again

    @property
    def collapsed(self) -> bool:
        """INT8 outputs are the same for every sample while FP32's are not, and FP32's differ in what matters:
        their top-1 (where a sample has more than one value). An offset can hold INT8's cosine near 1 while
        every sample gets one output; but a classifier whose every sample is confidently one class has
        one-hot INT8 rows, all the same, while FP32's probabilities differ in their last digits only."""
        if self.samples < 2 or not self.int8_row or self.fp32_row != DIFFERENT_ROWS:
            return False
        return self.elements == self.samples or self.fp32_top == DIFFERENT_ROWS

    @property
    def agreement(self) -> float:
        return self.top1_agree / self.samples if self.samples else float("nan")

    @property
    def mean_cosine(self) -> float:
        compared = self.samples - self.zero_pairs
        return to_float(self.cosine_sum) / compared if compared and not self.nan_cosines else float("nan")

    @property
    def fp32_accuracy(self) -> float | None:
        return self.fp32_correct / self.labelled if self.labelled else None

    @property
    def int8_accuracy(self) -> float | None:
        return self.int8_correct / self.labelled if self.labelled else None

    @property
    def mse(self) -> float:
        """Over the elements both models give finite values for."""
        finite = self.elements - self.non_finite
        return to_float(self.squared_error) / finite if finite else float("nan")

    @property
    def sqnr_db(self) -> float:
        if self.squared_error == 0:
            return math.inf
        return 10 * math.log10(to_float(self.signal) / to_float(self.squared_error)) if self.signal else -math.inf

    @property
    def neighbour_agreement(self) -> float | None:
        return self.neighbour_agree / self.neighbour_queries if self.neighbour_queries else None


@dataclass(frozen=True)
class ChunkValidation:
    """One validation chunk's identity and its statistics: of the lead output, and of each other output
    compared (in the order they were asked for)."""

    index: int
    start: int
    stop: int
    stats: ValidationStats
    others: tuple[ValidationStats, ...] = ()
    chunks: tuple[int, int, int] = field(default=(1, 0, 0), compare=False)  # computed, reused, discarded

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "start": self.start,
            "stop": self.stop,
            "stats": self.stats.to_json(),
            "others": [other.to_json() for other in self.others],
        }

    @classmethod
    def from_json(cls, data: dict) -> ChunkValidation:
        others = tuple(ValidationStats.from_json(other) for other in data["others"])
        return cls(data["index"], data["start"], data["stop"], ValidationStats.from_json(data["stats"]), others)


def _nan_max(a: float, b: float) -> float:
    """max, NaN if either is (as numpy's over a whole batch): Python's max keeps whichever came first."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _nan_min(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _cosines(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Cosine of each pair of rows in which either is non-zero, and how many pairs were both zero. A pair
    holding inf or NaN has no cosine: NaN, whichever it holds (a NaN norm would otherwise give 0, an inf one
    NaN)."""
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (norm_a == 0) & (norm_b == 0)
    with np.errstate(invalid="ignore"):  # inf / inf: NaN, set below anyway
        cosines = np.einsum("ij,ij->i", _unit_rows(a), _unit_rows(b))
    cosines[~(np.isfinite(norm_a) & np.isfinite(norm_b))] = np.nan
    return cosines[~both_zero], int(both_zero.sum())


def _neighbour_agreement(a, b, rows: np.ndarray, anchors: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[int, int]:
    """How many samples have the same nearest anchor (cosine) under both models, itself excluded."""
    anchor_a, anchor_b, anchor_rows = anchors
    sim_a, sim_b = _unit_rows(a) @ _unit_rows(anchor_a).T, _unit_rows(b) @ _unit_rows(anchor_b).T
    itself = rows[:, None] == anchor_rows[None, :]
    sim_a[itself] = sim_b[itself] = -np.inf
    return int((sim_a.argmax(axis=1) == sim_b.argmax(axis=1)).sum()), len(a)


def compare_outputs(fp32, int8, labels=None, rows=None, anchors=None) -> ValidationStats:
    """Statistics of one batch of first outputs (samples on axis 0).

    `rows` are the samples' row numbers and `anchors` (FP32 outputs, INT8
    outputs, row numbers) a fixed reference set for nearest-neighbour agreement.
    """
    a = fp32.reshape(len(fp32), -1).astype(np.float64)
    b = int8.reshape(len(int8), -1).astype(np.float64)
    top_a, top_b = a.argmax(axis=1), b.argmax(axis=1)
    flat_labels = None if labels is None else labels.reshape(len(labels))
    if flat_labels is not None and len(flat_labels) and not 0 <= flat_labels.min() <= flat_labels.max() < a.shape[1]:
        bad = np.flatnonzero((flat_labels < 0) | (flat_labels >= a.shape[1]))
        msg = (
            f"label {int(flat_labels[bad[0]])} of sample {int(rows[bad[0]]) if rows is not None else bad[0]} is not "
            f"a class of the model's output, which has {a.shape[1]} values per sample (classes 0..{a.shape[1] - 1}); "
            "fix the labels, or pass --metric embedding/regression without labels"
        )
        raise InputError(msg)
    # Inf and NaN outputs are counted below (a model may output -inf on purpose), not warned about.
    with np.errstate(invalid="ignore", over="ignore"):
        cosines, zero_pairs = _cosines(a, b)
        diff = a - b
        errors, signals = diff**2, a * a
        largest = float(np.abs(diff).max()) if a.size else 0.0
    # Exact sums hold finite values only: an element inf or NaN under either model is counted apart, as
    # the per-layer pass does.
    finite = np.isfinite(errors) & np.isfinite(signals)
    agree, queries = (0, 0) if anchors is None else _neighbour_agreement(a, b, rows, anchors)
    return ValidationStats(
        samples=len(a),
        labelled=0 if labels is None else len(labels),
        fp32_correct=0 if flat_labels is None else int((top_a == flat_labels).sum()),
        int8_correct=0 if flat_labels is None else int((top_b == flat_labels).sum()),
        top1_agree=int((top_a == top_b).sum()),
        max_abs_error=largest,
        cosine_sum=exact_sum(cosines[~np.isnan(cosines)]),
        min_cosine=float(cosines.min()) if len(cosines) else 1.0,
        elements=a.size,
        squared_error=exact_sum(errors[finite]),
        signal=exact_sum(signals[finite]),
        neighbour_agree=agree,
        neighbour_queries=queries,
        zero_pairs=zero_pairs,
        fp32_row=row_identity(fp32.reshape(len(fp32), -1)),
        int8_row=row_identity(int8.reshape(len(int8), -1)),
        fp32_top=row_identity(top_a.reshape(-1, 1)),
        nan_cosines=int(np.isnan(cosines).sum()),
        non_finite=int(finite.size - np.count_nonzero(finite)),
        int8_non_finite=int(np.count_nonzero(np.isfinite(a) & ~np.isfinite(b))),
    )


def chunk_outputs(
    chunk: ChunkRef,
    fp32_known: list[np.ndarray] | None = None,
    *,
    fp32: ModelRef,
    int8s: tuple[ModelRef, ...],
    outputs: tuple[str, ...] | None = None,
) -> tuple[list[np.ndarray], ...]:
    """`outputs` of the FP32 model and of each of `int8s` over a chunk (default graph optimisations, as
    deployed), the FP32 model run once (not at all with `fp32_known`, see validate_against): per INT8 model,
    FP32 then INT8 of the first output (None: the model's first output), then FP32 and INT8 of each other one."""
    feeds = read_feeds(chunk)
    fp32_out = _known(chunk, fp32_known, outputs) or model_outputs(chunk, feeds, fp32, outputs)
    return tuple(_paired(fp32_out, model_outputs(chunk, feeds, int8, outputs)) for int8 in int8s)


def _known(chunk: ChunkRef, fp32_known: list[np.ndarray] | None, outputs: tuple[str, ...] | None) -> list | None:
    """`fp32_known` when it holds one array of the chunk's rows per output asked for, else None (computed)."""
    if fp32_known is None or len(fp32_known) != len(outputs or (None,)):
        return None
    return fp32_known if all(len(value) == chunk.rows for value in fp32_known) else None


def model_outputs(chunk: ChunkRef, feeds: dict, model: ModelRef, outputs: tuple[str, ...] | None) -> list[np.ndarray]:
    """`outputs` of one model over a chunk's `feeds` (None: its first output only)."""
    return run_in_slices(session_for(model), outputs, feeds, chunk.feeding)


def _paired(fp32_out: list[np.ndarray], int8_out: list[np.ndarray]) -> list[np.ndarray]:
    return [value for pair in zip(fp32_out, int8_out, strict=True) for value in pair]


def join_anchors(parts: list, start: int, stop: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...] | Refused:
    """Per INT8 model, the nearest-neighbour reference set from the chunk_outputs of the chunks covering
    rows [start, stop): both models' first outputs, one row per sample, and the row numbers."""
    refused = next((part for part in parts if isinstance(part, Refused)), None)
    if refused is not None:
        return refused
    rows = np.arange(start, stop)
    joined = []
    for model in range(len(parts[0])):
        fp32, int8 = (np.concatenate([p[model][i].reshape(len(p[model][i]), -1) for p in parts]) for i in (0, 1))
        joined.append((fp32.astype(np.float64), int8.astype(np.float64), rows))
    return tuple(joined)


def compare_chunk(
    chunk: ChunkRef, outputs: list[np.ndarray], reference=None, names: tuple[str, ...] | None = None
) -> ChunkValidation:
    """A chunk's statistics from one INT8 model's chunk_outputs, with the anchors' reference set (None: no
    nearest-neighbour agreement) for the first output; `names`: the outputs', for messages."""
    for position, value in enumerate(outputs):
        if len(value) != chunk.rows:  # rows that are not samples (a NonZero's, data-dependent)
            name = repr(names[position // 2]) if names else "the first output"
            msg = (
                f"output {name} has {len(value)} rows for the {chunk.rows} samples of rows {chunk.start}.."
                f"{chunk.stop} of {chunk.path}: its rows are not samples, so it cannot be compared sample by "
                "sample; pass --lead-output with an output that has one row per sample"
            )
            raise InputError(msg)
    rows = np.arange(chunk.start, chunk.stop)
    stats = compare_outputs(outputs[0], outputs[1], read_labels(chunk), rows, reference)
    others = tuple(compare_outputs(outputs[i], outputs[i + 1]) for i in range(2, len(outputs), 2))
    return ChunkValidation(chunk.index, chunk.start, chunk.stop, stats, others)


def compare_each(
    chunk: ChunkRef, outputs: tuple[list[np.ndarray], ...], references=None, names: tuple[str, ...] | None = None
) -> tuple[ChunkValidation, ...]:
    """compare_chunk for each INT8 model's chunk_outputs, with its reference set (None: none for any)."""
    references = references or (None,) * len(outputs)
    return tuple(compare_chunk(chunk, o, r, names) for o, r in zip(outputs, references, strict=True))


def validate_against(
    chunk: ChunkRef,
    references=None,
    fp32_known: list[np.ndarray] | None = None,
    *,
    fp32: ModelRef,
    int8s: tuple[ModelRef, ...],
    outputs: tuple[str, ...] | None = None,
    checkpoints: Checkpoints | None = None,
) -> tuple[ChunkValidation, ...]:
    """validate_chunk of each of `int8s`, with the anchors' reference sets given (one per model; None: no
    nearest-neighbour agreement), the FP32 model run at most once; with `checkpoints`, each model's kept on
    disk (and with resume, read back) under a key of everything it depends on.

    `fp32_known`: the FP32 model's `outputs` over this chunk as model_outputs computes them (the tune
    search's reference pass has them): then the FP32 model does not run again."""
    feeds = functools.cache(lambda: read_feeds(chunk))
    fp32_out = functools.cache(
        lambda: _known(chunk, fp32_known, outputs) or model_outputs(chunk, feeds(), fp32, outputs)
    )

    def compared(int8: ModelRef, reference) -> ChunkValidation:
        pairs = _paired(fp32_out(), model_outputs(chunk, feeds(), int8, outputs))
        return compare_chunk(chunk, pairs, reference, outputs)

    values = []
    for int8, reference in zip(int8s, references or (None,) * len(int8s), strict=True):
        anchors = None if reference is None else (int(reference[2][0]), len(reference[2]))
        key = ("validation", fp32.sha256, int8.sha256, chunk_content(chunk), chunk.labels, outputs, anchors)
        value, source = cached(
            checkpoints, key, functools.partial(compared, int8, reference), ChunkValidation.from_json
        )
        values.append(replace(value, chunks=source.counts))
    return tuple(values)


def validate_chunk(
    chunk: ChunkRef,
    fp32: ModelRef,
    int8: ModelRef,
    anchors: Sequence[ChunkRef] = (),
    outputs: tuple[str, ...] | None = None,
) -> ChunkValidation:
    """Run one chunk through both models (default graph optimisations, as deployed).

    With `anchors` (consecutive chunks of the validation set), also count
    nearest-neighbour agreement against their rows.
    """
    references = None
    if anchors:
        lead = outputs[:1] if outputs else None
        parts = [chunk_outputs(anchor, fp32=fp32, int8s=(int8,), outputs=lead) for anchor in anchors]
        references = join_anchors(parts, anchors[0].start, anchors[-1].stop)
    (validation,) = validate_against(chunk, references, fp32=fp32, int8s=(int8,), outputs=outputs)
    return validation
