"""Exact sums and per-layer error partials: chunking never changes a bit."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_quant.tasks.exact_sum import exact_sum, to_float
from dask_quant.tasks.layer_error import LayerError

floats64 = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@settings(max_examples=200)
@given(st.lists(floats64, max_size=50), st.integers(0, 50))
def test_exact_sum_is_the_exact_sum_rounded_once_and_splits_exactly(values, cut):
    array = np.array(values, dtype=np.float64)
    exact = sum((Fraction(v) for v in values), Fraction(0))
    assert to_float(exact_sum(array)) == float(exact)
    assert exact_sum(array[:cut]) + exact_sum(array[cut:]) == exact_sum(array)


tensors = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n),
        st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n),
    )
)


@given(tensors, st.integers(0, 40))
def test_layer_error_of_parts_merges_to_the_whole(pair, cut):
    x, y = (np.array(v, np.float32)[:, None] for v in pair)
    whole = LayerError.of(x, y)
    assert LayerError.of(x[:cut], y[:cut]).merge(LayerError.of(x[cut:], y[cut:])) == whole
    assert whole.samples == len(x) and whole.elements == x.size


def test_sqnr_and_cosine_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 32)).astype(np.float32)
    y = (x + rng.normal(scale=0.01, size=x.shape)).astype(np.float32)
    error = LayerError.of(x, y)
    a, b = x.astype(np.float64), y.astype(np.float64)
    assert math.isclose(error.sqnr_db, 10 * np.log10((a**2).sum() / ((a - b) ** 2).sum()), rel_tol=1e-12)
    assert math.isclose(error.cosine, (a * b).sum() / np.sqrt((a**2).sum() * (b**2).sum()), rel_tol=1e-12)
    assert error.max_abs_error == float(np.abs(a - b).max())
    assert LayerError.of(x, x).sqnr_db == math.inf


def test_a_tensor_without_batch_axis_counts_the_chunk_rows():
    """Attention scales are scalars: they have no rows of their own."""
    error = LayerError.of(np.float32(8.0).reshape(()), np.float32(8.0).reshape(()), rows=5)
    assert (error.samples, error.elements, error.noise) == (5, 1, 0)
