"""Histograms on fixed edges: exact integer merges, whatever the chunking or order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_quant.tasks.errors import DaskQuantError
from dask_quant.tasks.histogram import Histogram, Histograms, HistogramSpec
from dask_quant.tasks.merging import merge_all

SPEC = HistogramSpec("t", -4.0, 4.0, 64)
values = st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=60).map(lambda v: np.array(v, np.float32))


def _of(array: np.ndarray, spec: HistogramSpec = SPEC) -> Histograms:
    return Histograms.of([Histogram.of(spec, spec.count(array))])


@given(values, values, values)
def test_merge_is_commutative_and_associative(a, b, c):
    ha, hb, hc = _of(a), _of(b), _of(c)
    assert ha.merge(hb) == hb.merge(ha)
    assert ha.merge(hb).merge(hc) == ha.merge(hb.merge(hc))
    assert ha.merge(Histograms()) == ha


@settings(max_examples=100)
@given(values, st.lists(st.integers(1, 59), max_size=8), st.randoms())
def test_any_chunking_equals_whole(array, cuts, random):
    bounds = sorted({0, len(array), *(min(c, len(array)) for c in cuts)})
    parts = [_of(array[i:j]) for i, j in zip(bounds, bounds[1:], strict=False) if j > i]
    random.shuffle(parts)
    merged = merge_all(parts)
    assert merged == _of(array)
    assert int(merged.find(SPEC).counts.sum()) == len(array)


def test_edges_are_the_ones_numpy_counts_with():
    rng = np.random.default_rng(0)
    data = rng.normal(size=1000).astype(np.float32)
    bound = float(np.abs(data).max())
    spec = HistogramSpec("x", -bound, bound, 2048)
    counts, edges = np.histogram(data, 2048, range=(np.float32(-bound), np.float32(bound)))
    assert spec.edges().dtype == np.float32 and np.array_equal(spec.edges(), edges)
    assert np.array_equal(spec.count(data), counts)


def test_a_tensor_can_have_a_signed_and_an_absolute_histogram():
    absolute = HistogramSpec("t", 0.0, 4.0, 64, absolute=True)
    data = np.array([-1.0, 2.0], np.float32)
    both = _of(data).merge(_of(data, absolute))
    assert both.find(SPEC).counts.sum() == both.find(absolute).counts.sum() == 2
    assert Histograms.from_json(both.to_json()) == both


def test_absolute_histogram_counts_magnitudes():
    spec = HistogramSpec("x", 0.0, 2.0, 4, absolute=True)
    assert spec.count(np.array([-2.0, -0.1, 0.1, 1.9], np.float32)).tolist() == [2, 0, 0, 2]


def test_histograms_on_other_edges_do_not_add():
    other = HistogramSpec("t", -2.0, 2.0, 64)  # same tensor and bin count, other edges
    with pytest.raises(DaskQuantError, match="different bin specs"):
        _of(np.zeros(3, np.float32)).merge(_of(np.zeros(3, np.float32), other))


def test_a_range_wider_than_float32_holds_still_counts_every_value():
    """Attention masks add -3.4e38: numpy refuses float32 edges for that range (so do ORT's calibrators)."""
    lowest = float(np.finfo(np.float32).min)
    data = np.array([lowest, -1.0, 0.0, 2.0, 3.0e38], np.float32)
    with pytest.raises(ValueError, match="Too many bins"), np.errstate(over="ignore", invalid="ignore"):
        np.histogram(data, 8, range=(np.float32(lowest), np.float32(3.0e38)))
    spec = HistogramSpec("mask", lowest, 3.0e38, 8)
    counts = spec.count(data)
    assert counts.sum() == len(data) and counts[0] == 1 and counts[-1] == 1
    assert np.all(np.isfinite(spec.edges())) and np.all(np.diff(spec.edges()) > 0)


def test_a_range_of_denormal_values_is_counted_on_float64_edges():
    values = np.array([1e-42, -3e-41, 2e-40, 0.0], np.float32)
    bound = float(np.abs(values).max())
    spec = HistogramSpec("t", -bound, bound, 2048)
    bins = [int(np.flatnonzero(spec.count(np.array([v], np.float32)))[0]) for v in np.sort(values)]
    assert spec.count(values).sum() == 4 and len(spec.edges()) == 2049  # numpy refused float32 edges here
    assert bins == sorted(bins) and bins[0] < bins[-1]  # each value in its place, in order
