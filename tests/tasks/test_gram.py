"""GPTQ's Gram statistic: exact sums on a fixed grid, so any split of the rows and any merge order give the
same integers, and they are the Gram matrix of the rounded values exactly."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dask_quant.tasks.errors import InputError
from dask_quant.tasks.gram import GRID_BITS, MAX_ROWS, Gram, gram_sums, grid_exponents
from dask_quant.tasks.merging import merge_all

# Activations with a wide range per channel: outliers, values near zero, subnormals, exact zeros.
_values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32) | st.sampled_from(
    [0.0, 1e-40, -3e-38, 65504.0, -1e6, 0.5]
)


def _activations(rows: int, channels: int):
    return hnp.arrays(np.float32, (rows, channels), elements=_values)


def _gram(values: np.ndarray, exponents) -> Gram:
    return Gram.of(exponents, gram_sums(values, exponents), len(values), len(values))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), rows=st.integers(2, 120), channels=st.integers(1, 6))
@example(data=None, rows=64, channels=3)
def test_any_split_and_merge_order_gives_the_same_integers(data, rows, channels):
    if data is None:  # the explicit example: chunks of 7 against one of 64
        values = np.random.default_rng(0).standard_normal((rows, channels)).astype(np.float32) * 1e3
        cuts = list(range(7, rows, 7))
    else:
        values = data.draw(_activations(rows, channels))
        cuts = sorted(data.draw(st.sets(st.integers(1, rows - 1), max_size=8)))
    exponents = grid_exponents(np.abs(values.astype(np.float64)).max(axis=0))
    whole = _gram(values, exponents)
    parts = [_gram(part, exponents) for part in np.split(values, cuts)]
    assert merge_all(parts) == whole
    assert merge_all(parts[::-1]) == whole  # another order, another tree
    if len(parts) > 2:
        assert merge_all([merge_all(parts[:2]), merge_all(parts[2:])]) == whole


@settings(max_examples=40, deadline=None)
@given(values=_activations(9, 3))
def test_the_sums_are_the_exact_gram_matrix_of_the_rounded_values(values):
    """Against Python's exact rationals: every value put on its column's grid, then summed without rounding."""
    exponents = grid_exponents(np.abs(values.astype(np.float64)).max(axis=0))
    sums = gram_sums(values, exponents)
    units = [Fraction(2) ** (e - GRID_BITS) for e in exponents]
    on_grid = [[round(Fraction(float(v)) / units[k]) for k, v in enumerate(row)] for row in values]
    for i in range(3):
        for j in range(3):
            assert int(sums[i, j]) == sum(row[i] * row[j] for row in on_grid)
    # Each value moved by at most half a grid step: the float Gram matrix is close to numpy's of the values.
    ours = _gram(values, exponents).matrix()
    exact = values.astype(np.float64).T @ values.astype(np.float64)
    bound = np.ldexp(1.0, np.asarray(exponents))
    step = bound * 2.0**-GRID_BITS
    tolerance = len(values) * (np.outer(bound, step) + np.outer(step, bound)) + 1e-300
    assert (np.abs(ours - exact) <= tolerance).all()


def test_blocks_of_rows_stay_exact_past_a_float64_mantissa():
    """40 000 rows of the largest grid value: each block's float64 sum is exact, and so is their int64 total."""
    values = np.full((40_000, 2), 1.0, dtype=np.float32)
    values[:, 1] = -0.999999
    exponents = grid_exponents(np.abs(values.astype(np.float64)).max(axis=0))
    sums = gram_sums(values, exponents)
    assert exponents == (1, 0)  # 1.0 is below 2**1, 0.999999 below 2**0
    first = 1 << (GRID_BITS - 1)  # 1.0 in steps of 2**(1 - GRID_BITS)
    second = int(np.rint(np.ldexp(float(values[0, 1]), GRID_BITS)))
    assert sums[0, 0] == 40_000 * first**2 > 2**53
    assert sums[0, 1] == 40_000 * first * second


def test_grams_on_different_grids_or_past_the_row_limit_are_refused():
    a = Gram.of((0, 1), np.zeros((2, 2)), 10, 10)
    with pytest.raises(InputError, match="different grids"):
        a.merge(Gram.of((0, 2), np.zeros((2, 2)), 10, 10))
    with pytest.raises(InputError, match=f"at most {MAX_ROWS} rows"):
        a.merge(Gram.of((0, 1), np.zeros((2, 2)), MAX_ROWS, MAX_ROWS))
