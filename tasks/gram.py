"""GPTQ's statistic: the Gram matrix X^T X of each MatMul input over the calibration set, summed exactly.

X is the activation with its last axis (the one the MatMul contracts with its
weight's rows) as columns and every other axis as rows. Its Gram matrix is a
sum over rows, so chunks add up, but float sums depend on their order. Here
each value is first put on a fixed grid: column k, whose calibration abs-max is
below 2**e_k (the exact, mergeable SmoothQuant statistic, tasks.smoothing), is
rounded to a multiple of 2**(e_k - GRID_BITS). The rounded values are integers
of magnitude at most 2**GRID_BITS, so their products are at most 2**(2 * GRID_BITS)
and float64 sums them exactly over blocks of BLOCK_ROWS rows; the blocks add up
as int64. What is computed is therefore the exact Gram matrix of the rounded
activations: the same integers for any chunking, slicing, order, merge tree or
BLAS. The rounding moves a value by at most 2**-GRID_BITS of its column's bound
(a relative 1e-6 for the column's largest values, like float32 itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dask_quant.tasks.chunks import ChunkRef
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.merging import add_counts, merge_by_name
from dask_quant.tasks.sessions import ModelRef, exposed_slices

GRID_BITS = 20
BLOCK_ROWS = 1 << (53 - 2 * GRID_BITS)  # rows whose products float64 still sums exactly
MAX_ROWS = (1 << (63 - 2 * GRID_BITS)) - 1  # rows whose sums an int64 still holds


def grid_exponents(channel_max: np.ndarray) -> tuple[int, ...]:
    """e_k with channel_max[k] < 2**e_k (0 for an all-zero channel)."""
    return tuple(int(e) for e in np.frexp(np.asarray(channel_max, dtype=np.float64))[1])


@dataclass(frozen=True)
class Gram:
    """Sum over rows of x_i * x_j for one activation, on the grid of `exponents` (int64 counts of
    2**(e_i + e_j - 2 * GRID_BITS); the upper triangle, row by row, held as bytes so the value is immutable
    and half the size); `rows` the rows summed, `samples` the calibration samples they came from."""

    exponents: tuple[int, ...]
    raw: bytes
    rows: int
    samples: int

    @classmethod
    def of(cls, exponents: tuple[int, ...], sums: np.ndarray, rows: int, samples: int) -> Gram:
        upper = np.asarray(sums, dtype=np.int64)[np.triu_indices(len(exponents))]
        return cls(tuple(exponents), upper.tobytes(), rows, samples)

    @property
    def sums(self) -> np.ndarray:
        """The symmetric matrix of sums."""
        channels = len(self.exponents)
        full = np.zeros((channels, channels), dtype=np.int64)
        full[np.triu_indices(channels)] = np.frombuffer(self.raw, dtype=np.int64)
        return full + np.triu(full, 1).T

    def merge(self, other: Gram) -> Gram:
        if other.exponents != self.exponents:
            msg = "Gram matrices on different grids cannot be added (their channel maxima differ)"
            raise InputError(msg)
        rows = self.rows + other.rows
        if rows > MAX_ROWS:
            msg = (
                f"GPTQ's exact Gram matrix holds at most {MAX_ROWS} rows of one activation, and the calibration "
                f"set has more ({rows}); calibrate GPTQ on fewer samples"
            )
            raise InputError(msg)
        total = np.frombuffer(self.raw, dtype=np.int64) + np.frombuffer(other.raw, dtype=np.int64)
        return Gram(self.exponents, total.tobytes(), rows, self.samples + other.samples)

    def matrix(self) -> np.ndarray:
        """The Gram matrix as float64 (each entry rounded once)."""
        scale = np.ldexp(1.0, np.asarray(self.exponents) - GRID_BITS)
        return self.sums.astype(np.float64) * scale[:, None] * scale[None, :]

    def hessian(self) -> np.ndarray:
        """GPTQ's H = 2/n X^T X, n the samples (as ONNX Runtime's GPTQ scales it; the solve does not depend on
        the scale but for rounding)."""
        return self.matrix() * (2.0 / max(self.samples, 1))


@dataclass(frozen=True)
class Grams:
    """Gram per activation name, sorted; `chunks` counts how it was made (not its value)."""

    entries: tuple[tuple[str, Gram], ...] = ()
    chunks: tuple[int, int, int] = field(default=(0, 0, 0), compare=False)

    def merge(self, other: Grams) -> Grams:
        return Grams(merge_by_name(self.entries, other.entries), add_counts(self.chunks, other.chunks))

    def get(self, name: str) -> Gram:
        return dict(self.entries)[name]


def gram_sums(values: np.ndarray, exponents: tuple[int, ...]) -> np.ndarray:
    """The int64 Gram sums of `values` (rows x channels) on the grid of `exponents`."""
    on_grid = values.astype(np.float64)  # one copy, then rounded in place
    np.ldexp(on_grid, GRID_BITS - np.asarray(exponents), out=on_grid)
    np.rint(on_grid, out=on_grid)
    bound = float(1 << GRID_BITS)  # a value of a later pass a float ulp above its channel's bound stays in
    np.clip(on_grid, -bound, bound, out=on_grid)
    sums = np.zeros((len(exponents), len(exponents)), dtype=np.int64)
    for start in range(0, len(on_grid), BLOCK_ROWS):
        block = on_grid[start : start + BLOCK_ROWS]
        sums += (block.T @ block).astype(np.int64)  # integers below 2**53: exact in any order
    return sums


def chunk_grams(chunk: ChunkRef, model: ModelRef, tensors: tuple[tuple[str, int, tuple[int, ...]], ...]) -> Grams:
    """The Gram sums of every (name, elem type, grid exponents) in `tensors` over one chunk; the activations
    are exposed in row slices (tasks.sessions.exposed_runs), so a task holds one slice of them."""
    sums = {name: np.zeros((len(e), len(e)), dtype=np.int64) for name, _, e in tensors}
    rows = dict.fromkeys(sums, 0)
    for values in exposed_slices(chunk, model, tensors):
        for name, _, exponents in tensors:
            array = values.pop(name)
            if array.ndim == 0 or array.shape[-1] != len(exponents):
                msg = (
                    f"tensor {name!r} has shape {array.shape} on chunk rows {chunk.start}..{chunk.stop} of "
                    f"{chunk.path}, not {len(exponents)} channels on its last axis as its MatMul weight has"
                )
                raise InputError(msg)
            if not np.isfinite(array).all():  # pass 1's in-graph ReduceMax may have dropped a NaN
                msg = (
                    f"tensor {name!r} is NaN or infinite on chunk rows {chunk.start}..{chunk.stop} of {chunk.path}: "
                    "GPTQ needs finite activations; fix those samples, or keep the nodes that read it out "
                    "(--exclude-nodes)"
                )
                raise InputError(msg)
            flat = array.reshape(-1, len(exponents))
            rows[name] += len(flat)
            if rows[name] > MAX_ROWS:
                msg = (
                    f"GPTQ's exact Gram matrix holds at most {MAX_ROWS} rows of one activation, and {name!r} has more "
                    f"in one chunk ({chunk.path} rows {chunk.start}..{chunk.stop}); use a smaller --chunk-size"
                )
                raise InputError(msg)
            sums[name] += gram_sums(flat, exponents)
        del values  # before the next slice runs
    entries = ((name, Gram.of(e, sums[name], rows[name], chunk.rows)) for name, _, e in tensors)
    return Grams(tuple(sorted(entries)), (1, 0, 0))
