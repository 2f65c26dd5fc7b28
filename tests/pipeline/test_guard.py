"""The quality guard and the warning: what makes an INT8 model look broken."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.guard import collapse_warning, quality_failures
from dask_quant.tasks.validate import compare_outputs


def _result(fp32, int8, side=None):
    others = [] if side is None else [("side", None, compare_outputs(*side))]
    stats = compare_outputs(fp32, int8)
    return SimpleNamespace(run_id="r", validation=stats, other_outputs=others, layers=[])


def test_inf_or_nan_where_fp32_is_finite_is_broken_even_when_the_mean_cosine_is_nan():
    """A NaN cosine makes the mean NaN, which the cosine rule cannot judge: the non-finite values say it."""
    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(6, 4)).astype(np.float32)
    int8 = fp32 * np.float32(0.3) + rng.normal(size=fp32.shape).astype(np.float32)
    int8[5, 2] = np.nan
    result = _result(fp32, int8)
    assert np.isnan(result.validation.mean_cosine)
    assert "the INT8 output is inf or NaN in 1 values where FP32's is finite" in collapse_warning(result)
    guarded = RunConfig(model="m.onnx", calib="c.npy", min_cosine=0.5)
    assert any("inf or NaN in 1 values" in failure for failure in quality_failures(guarded, result))
    # The same -inf under both models (a mask on purpose) is not a fault.
    masked = fp32.copy()
    masked[:, 0] = -np.inf
    assert collapse_warning(_result(masked, masked.copy())) is None
    side = (fp32, np.tile(fp32[:1], (6, 1)))  # another output, collapsed
    assert "output 'side': the INT8 output is the same for every sample" in collapse_warning(_result(fp32, fp32, side))
