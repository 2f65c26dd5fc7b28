"""RangeStats obeys the merge laws, and chunking never changes the answer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_quant.tasks.errors import DaskQuantError, InputError
from dask_quant.tasks.merging import merge_all
from dask_quant.tasks.range_stats import RangeStats

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
tensor_values = st.lists(finite32, min_size=1, max_size=40).map(lambda v: np.array(v, dtype=np.float32))
stats_strategy = st.dictionaries(st.sampled_from(["a", "b", "c"]), tensor_values, max_size=3).map(RangeStats.of)


@given(stats_strategy, stats_strategy)
def test_merge_is_commutative(a, b):
    assert a.merge(b) == b.merge(a)


@given(stats_strategy, stats_strategy, stats_strategy)
def test_merge_is_associative(a, b, c):
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(stats_strategy)
def test_empty_is_identity(a):
    assert a.merge(RangeStats.empty()) == a == RangeStats.empty().merge(a)


@settings(max_examples=200)
@given(tensor_values, st.lists(st.integers(1, 40), min_size=1, max_size=10), st.randoms())
def test_any_chunking_and_order_equals_whole(values, cuts, random):
    whole = RangeStats.of({"t": values})
    bounds = sorted({min(c, len(values)) for c in cuts} | {0, len(values)})
    parts = [RangeStats.of({"t": values[i:j]}) for i, j in zip(bounds, bounds[1:], strict=False) if j > i]
    random.shuffle(parts)
    assert merge_all(parts) == whole
    assert whole.as_dict()["t"].min == float(values.min()) and whole.as_dict()["t"].count == len(values)


def test_signed_zero_does_not_depend_on_order():
    neg, pos = RangeStats.of({"t": np.array([-0.0], np.float32)}), RangeStats.of({"t": np.array([0.0], np.float32)})
    assert str(neg.merge(pos).as_dict()["t"].min) == str(pos.merge(neg).as_dict()["t"].min) == "0.0"


def test_nan_names_tensor_and_rows():
    with pytest.raises(InputError, match=r"NaN or infinite values in tensor 'x' \(rows 0\.\.4\)"):
        RangeStats.of({"x": np.array([1.0, np.nan, np.nan], np.float32)}, " (rows 0..4)")


def test_float16_ranges_keep_their_dtype_and_do_not_mix():
    half = RangeStats.of({"h": np.array([0.1, -2.5], np.float16)})
    assert half.as_dict()["h"].dtype == "float16" and half.as_dict()["h"].min == -2.5
    with pytest.raises(DaskQuantError, match="cannot merge ranges of dtype float16 and float32"):
        half.merge(RangeStats.of({"h": np.array([1.0], np.float32)}))
