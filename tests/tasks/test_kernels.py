"""The compiled loops against their definitions: numpy's histogram, and exact rational sums."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dask_quant.tasks import kernels
from dask_quant.tasks.exact_sum import BASE_EXPONENT
from dask_quant.tasks.histogram import HistogramSpec
from dask_quant.tasks.layer_error import LayerError

any_float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def numpy_counts(spec: HistogramSpec, values: np.ndarray) -> np.ndarray:
    return kernels.numpy_count(values, spec.binning, spec.absolute)


@settings(max_examples=300)
@example(values=[], a=0.0, b=2.1120370454303643e-41, bins=2048, absolute=False)  # denormals: found by hypothesis
@given(
    st.lists(any_float32, max_size=300),
    finite32,
    finite32,
    st.sampled_from([1, 2, 7, 128, 2048]),
    st.booleans(),
)
def test_counts_are_numpys_bit_for_bit(values, a, b, bins, absolute):
    """Any values (NaN dropped, inf clipped, as numpy does), any range numpy accepts or we widen."""
    low, high = min(a, b), max(a, b)
    spec = HistogramSpec("t", low, high, bins, absolute)
    data = np.array(values, np.float32)
    # The edges and their neighbours are where an estimate can miss the bin.
    edges = spec.edges().astype(np.float32)
    with np.errstate(over="ignore"):
        below, above = np.nextafter(edges, np.float32(-np.inf)), np.nextafter(edges, np.float32(np.inf))
    data = np.concatenate([data, edges, below, above])
    assert np.array_equal(spec.count(data), numpy_counts(spec, data))


def test_counts_of_many_values_on_and_near_edges_are_numpys():
    rng = np.random.default_rng(1)
    for low, high, bins in [(-1.0, 6.0, 2048), (0.0, 1e-3, 128), (-3.4e38, 12.0, 128), (1000.0, 1000.5, 2048)]:
        spec = HistogramSpec("t", low, high, bins)
        edges = spec.edges()
        near = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)]).astype(np.float32)
        data = np.concatenate([near, rng.uniform(low, high, 100_000).astype(np.float32)])
        assert np.array_equal(spec.count(data), numpy_counts(spec, data)), (low, high, bins)


def exact(values) -> Fraction:
    return sum((Fraction(float(v)) for v in values), Fraction(0))


def scaled(total: int) -> Fraction:
    return Fraction(total, 1 << -BASE_EXPONENT)


pairs = st.integers(0, 60).flatmap(
    lambda n: st.tuples(st.lists(finite32, min_size=n, max_size=n), st.lists(finite32, min_size=n, max_size=n))
)


@settings(max_examples=300)
@given(pairs)
def test_product_sums_are_the_exact_rational_sums(pair):
    """Subnormals, zeros of either sign, float32's extremes: every product counts exactly."""
    x, y = (np.array(v, np.float32) for v in pair)
    xx, yy, xy, largest, skipped = kernels.product_sums(x, y)
    assert scaled(xx) == exact(a * a for a in map(Fraction, x.tolist()))
    assert scaled(yy) == exact(b * b for b in map(Fraction, y.tolist()))
    assert scaled(xy) == exact(Fraction(a) * Fraction(b) for a, b in zip(x.tolist(), y.tolist(), strict=True))
    assert largest == (float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) if len(x) else 0.0)
    assert skipped == 0
    noise = LayerError.of(x, y).noise
    differences = (Fraction(a) - Fraction(b) for a, b in zip(x.tolist(), y.tolist(), strict=True))
    assert scaled(noise) == sum((d * d for d in differences), Fraction(0))


def test_pairs_with_inf_or_nan_are_left_out_and_counted():
    x = np.array([1.0, np.inf, 2.0, np.nan], np.float32)
    y = np.array([1.5, 1.0, -np.inf, 3.0], np.float32)
    error = LayerError.of(x, y)
    assert error.non_finite == 3 and error.elements == 4
    assert scaled(error.signal) == 1 and scaled(error.noise) == Fraction(1, 4) and error.max_abs_error == 0.5


def test_float16_and_float64_tensors_are_summed_too():
    x16 = np.array([0.5, -2.0, 65504.0], np.float16)
    assert LayerError.of(x16, x16).signal == LayerError.of(x16.astype(np.float32), x16.astype(np.float32)).signal
    x64 = np.array([0.1, 0.2], np.float64)
    assert scaled(LayerError.of(x64, x64).signal) == Fraction(0.1 * 0.1) + Fraction(0.2 * 0.2)


def test_the_loops_still_compile_where_numba_finds_no_writable_cache_folder():
    """A worker in a read-only image: numba refuses cache=True there; the loops compile per process."""
    import subprocess
    import sys

    code = (
        "import numba.core.caching as caching; caching.CacheImpl._locator_classes = []; "
        "import numpy as np; from dask_quant.tasks.histogram import HistogramSpec; "
        "print(HistogramSpec('t', 0.0, 4.0, 4).count(np.array([0.5, 3.5, 9.0], np.float32)).tolist())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[1, 0, 0, 2]"
