"""Per-layer error of the INT8 model: exact, mergeable partial sums per tensor.

For each quantized activation x (FP32 model) and y (the INT8 model's
dequantized tensor) a chunk contributes sum(x*x), sum(y*y), sum(x*y),
sum((x-y)**2), the count and max|x-y|. For float32 (and float16) tensors the
sums are exact (tasks.kernels: a product of two float32s is exact), and
sum((x-y)**2) = sum(x*x) + sum(y*y) - 2 sum(x*y) exactly; so SQNR and cosine
come out identical for any chunking, order or merge tree.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from dask_quant.tasks.checkpoint import Checkpoints, cached
from dask_quant.tasks.chunks import ChunkRef, chunk_content, read_feeds
from dask_quant.tasks.exact_sum import exact_sum, to_float
from dask_quant.tasks.histogram import Histogram, HistogramSpec
from dask_quant.tasks.merging import Each, add_counts, merge_by_name
from dask_quant.tasks.sessions import ModelRef, SessionSpec, exposed_runs, session_for


@dataclass(frozen=True)
class LayerError:
    """Exact sums (integers scaled by tasks.exact_sum.BASE_EXPONENT) for one tensor."""

    elements: int = 0
    samples: int = 0
    signal: int = 0  # sum x*x
    quantized: int = 0  # sum y*y
    product: int = 0  # sum x*y
    noise: int = 0  # sum (x-y)**2
    max_abs_error: float = 0.0
    histogram: Histogram | None = None  # of x, for the report
    non_finite: int = 0  # elements where x or y is inf or NaN, left out of the sums

    @classmethod
    def of(
        cls, x: np.ndarray, y: np.ndarray, histogram: Histogram | None = None, rows: int | None = None
    ) -> LayerError:
        """Sums over x and y, with x's `histogram` (counted by the caller: models compared with one FP32
        tensor share it); `samples` is `rows` (the slice's rows: some tensors, such as scalars, have no
        batch axis), by default len(x)."""
        if np.float64 in (x.dtype, y.dtype):
            signal, quantized, product, noise, largest, non_finite = _float64_sums(x, y)
        else:  # float32, and float16 values, which float32 holds exactly
            from dask_quant.tasks import kernels

            signal, quantized, product, largest, non_finite = kernels.product_sums(x, y)
            noise = signal + quantized - 2 * product  # exact: sum (x-y)**2 of the exact products
        return cls(
            elements=x.size,
            samples=len(x) if rows is None else rows,
            signal=signal,
            quantized=quantized,
            product=product,
            noise=noise,
            max_abs_error=largest,
            histogram=histogram,
            non_finite=non_finite,
        )

    def merge(self, other: LayerError) -> LayerError:
        return LayerError(
            self.elements + other.elements,
            self.samples + other.samples,
            self.signal + other.signal,
            self.quantized + other.quantized,
            self.product + other.product,
            self.noise + other.noise,
            max(self.max_abs_error, other.max_abs_error),
            _merge_optional(self.histogram, other.histogram),
            self.non_finite + other.non_finite,
        )

    def to_json(self) -> dict:
        sums = ("elements", "samples", "signal", "quantized", "product", "noise", "max_abs_error", "non_finite")
        histogram = None if self.histogram is None else self.histogram.to_json()
        return {**{name: getattr(self, name) for name in sums}, "histogram": histogram}

    @classmethod
    def from_json(cls, data: dict) -> LayerError:
        stored = data["histogram"]
        return cls(**{**data, "histogram": None if stored is None else Histogram.from_json(stored)})

    @property
    def sqnr_db(self) -> float:
        """10 log10(signal / noise); inf when the INT8 tensor is exact."""
        if self.noise == 0:
            return math.inf
        return 10.0 * math.log10(to_float(self.signal) / to_float(self.noise)) if self.signal else -math.inf

    @property
    def cosine(self) -> float:
        """Cosine similarity of the whole FP32 and INT8 tensors over the validation set."""
        norms = math.sqrt(to_float(self.signal)) * math.sqrt(to_float(self.quantized))
        return to_float(self.product) / norms if norms else 1.0


def _float64_sums(x: np.ndarray, y: np.ndarray) -> tuple[int, int, int, int, float, int]:
    """The sums for float64 tensors, whose products float64 cannot hold: each term is
    rounded per element (the same bits whatever the chunk), then summed exactly."""
    a, b = x.astype(np.float64).reshape(-1), y.astype(np.float64).reshape(-1)
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    diff = a - b
    largest = float(np.abs(diff).max()) if diff.size else 0.0
    return exact_sum(a * a), exact_sum(b * b), exact_sum(a * b), exact_sum(diff * diff), largest, int((~finite).sum())


def _merge_optional(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    if a is None or b is None:
        return a if b is None else b
    return a.merge(b)


@dataclass(frozen=True)
class LayerErrors:
    """LayerError per FP32 tensor name; `chunks` (computed, read from a checkpoint, discarded) as for
    RangeStats."""

    entries: tuple[tuple[str, LayerError], ...] = ()
    chunks: tuple[int, int, int] = field(default=(0, 0, 0), compare=False)

    def merge(self, other: LayerErrors) -> LayerErrors:
        return LayerErrors(merge_by_name(self.entries, other.entries), add_counts(self.chunks, other.chunks))

    def to_json(self) -> dict:
        return {"entries": [[name, error.to_json()] for name, error in self.entries]}

    @classmethod
    def from_json(cls, data: dict) -> LayerErrors:
        return cls(tuple((name, LayerError.from_json(error)) for name, error in data["entries"]))


def exposing_runs(
    chunk: ChunkRef, feeds: dict, fp32: ModelRef, int8s: tuple[ModelRef, ...], pairs_each: tuple
) -> list[tuple]:
    """(session, output names) of the FP32 model and of each of `int8s` with every tensor its `pairs_each`
    compares exposed (graph optimisations off), for tasks.sessions.exposed_runs; the FP32 model exposes what
    any of them compares; inputs the chunk feeds are not outputs."""
    given = {*feeds, *(c.name for c in chunk.feeding.constants)}
    fp32_exposed = tuple(sorted({(name, elem) for pairs in pairs_each for name, _, elem in pairs if name not in given}))
    int8_exposed = [tuple(sorted({(name, elem) for _, name, elem in pairs})) for pairs in pairs_each]
    return [
        (session_for(model, SessionSpec(expose=exposed, calibration=True)), [name for name, _ in exposed])
        for model, exposed in ((fp32, fp32_exposed), *zip(int8s, int8_exposed, strict=True))
    ]


def chunk_layer_errors(
    chunk: ChunkRef,
    fp32: ModelRef,
    int8s: tuple[ModelRef, ...],
    pairs_each: tuple[tuple[tuple[str, str, int], ...], ...],
    specs_each: tuple[tuple[HistogramSpec, ...], ...],
    checkpoints: Checkpoints | None = None,
) -> Each:
    """Per-layer sums over one chunk for each of `int8s` (an Each of LayerErrors), the FP32 model run once;
    a model's `pairs_each` are (FP32 tensor, INT8 dequantized tensor, elem type), its `specs_each` the bins
    of the FP32 tensors' histograms (values outside go to the end bins). With `checkpoints`, each model's
    kept on disk (and with resume, read back) as calibration's are.

    The models run with graph optimisations off so every compared tensor exists
    as written, as in ONNX Runtime's qdq_loss_debug.
    """
    every = functools.cache(lambda: _layer_errors(chunk, fp32, int8s, pairs_each, specs_each))
    values = []
    for i, (int8, pairs, specs) in enumerate(zip(int8s, pairs_each, specs_each, strict=True)):
        key = ("layer-errors", fp32.sha256, int8.sha256, chunk_content(chunk), pairs, specs)
        errors, source = cached(checkpoints, key, lambda i=i: every()[i], LayerErrors.from_json)
        values.append(replace(errors, chunks=source.counts))
    return Each(tuple(values))


def _layer_errors(chunk, fp32, int8s, pairs_each, specs_each) -> tuple[LayerErrors, ...]:
    feeds = read_feeds(chunk)
    bins_each = [{spec.tensor: spec for spec in specs} for specs in specs_each]
    totals = [LayerErrors() for _ in int8s]
    for rows, part, (reference, *quantized) in exposed_runs(
        exposing_runs(chunk, feeds, fp32, int8s, pairs_each), feeds, feeding=chunk.feeding
    ):
        reference.update(part)
        counted: dict[HistogramSpec, Histogram] = {}  # once per FP32 tensor and bins, whichever model asks

        for i, (pairs, bins, values) in enumerate(zip(pairs_each, bins_each, quantized, strict=True)):
            errors = {}
            for name, dq, _ in pairs:
                x = reference[name]
                errors[name] = LayerError.of(x, values[dq], _histogram(counted, bins.get(name), x), rows)
            totals[i] = totals[i].merge(LayerErrors(tuple(sorted(errors.items()))))
        del reference, quantized, part  # before the next slice runs (tasks.sessions.exposed_runs)
    return tuple(totals)


def _histogram(counted: dict, spec: HistogramSpec | None, x: np.ndarray) -> Histogram | None:
    """x's histogram on `spec`'s bins (None: none), counted once per slice in `counted`."""
    if spec is not None and spec not in counted:
        counted[spec] = Histogram.of(spec, spec.count(x))
    return None if spec is None else counted[spec]
