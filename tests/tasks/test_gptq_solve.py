"""GPTQ's solve (tasks.gptq.gptq_codes) against the Optimal Brain Quantization update it computes, written
the slow way: H^-1 of the rows not yet quantized inverted again at every step."""

from __future__ import annotations

import numpy as np
import pytest

from dask_quant.tasks.gptq import GPTQ_DAMPING, gptq_codes, packed_zero_points


def _problem(rows: int = 48, columns: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 12)) @ rng.normal(size=(12, rows))  # correlated inputs, as activations are
    weight = rng.normal(size=(rows, columns)).astype(np.float32)
    return x, weight, x.T @ x


def _obq(weight, hessian, bits: int, group_size: int):
    """Row by row: quantize row i on its group's grid (taken from the group's rows as they stand), then move
    its error onto the remaining rows F by w_F -= Hinv_F[:, i] / Hinv_F[i, i] * err, Hinv_F = (H_FF)^-1."""
    top = (1 << bits) - 1
    work = weight.astype(np.float64)
    h = hessian + GPTQ_DAMPING * np.mean(np.diag(hessian)) * np.eye(len(hessian))
    codes = np.zeros(work.shape, dtype=np.uint8)
    for i in range(len(work)):
        if i % group_size == 0:
            group = work[i : i + group_size]
            low, high = np.minimum(group.min(axis=0), 0), np.maximum(group.max(axis=0), 0)
            scale = (high - low) / top
            zero = np.round(-low / scale)
        codes[i] = np.clip(np.round(work[i] / scale) + zero, 0, top)
        error = work[i] - scale * (codes[i] - zero)
        inverse = np.linalg.inv(h[i:, i:])
        work[i:] -= np.outer(inverse[:, 0] / inverse[0, 0], error)
    return codes


@pytest.mark.parametrize(("group_size", "lazy"), [(16, 128), (16, 8), (32, 5), (48, 48)])
def test_the_codes_are_the_obq_update_computed_the_slow_way(group_size, lazy):
    _, weight, hessian = _problem()
    codes, scales, zeros = gptq_codes(weight, hessian, 4, group_size, lazy=lazy)
    expected = _obq(weight, hessian, 4, group_size)
    assert np.array_equal(codes, expected)
    assert scales.shape == zeros.shape == (-(-len(weight) // group_size), weight.shape[1])  # 48 rows: 2 groups of 32


def test_it_leaves_less_output_error_than_rounding_to_nearest():
    x, weight, hessian = _problem(rows=64, columns=16, seed=3)

    def error(h):
        codes, scales, zeros = gptq_codes(weight, h, 4, 32)
        dequantized = np.repeat(scales, 32, axis=0) * (codes - np.repeat(zeros, 32, axis=0).astype(np.float64))
        return float(np.mean((x @ dequantized - x @ weight) ** 2))

    # With H = I no row's error can go anywhere: round to nearest on the same grids.
    assert error(hessian) < 0.6 * error(np.eye(len(hessian)))


def test_onnx_runtimes_vendored_gptq_does_not_depend_on_h():
    """Why the solve is ours: ORT 1.32's gptq() spreads errors along a column of an upper triangular factor,
    where everything below the diagonal is zero, so its weights are the same for any H. If this starts to
    fail, ORT fixed it, and its solve could be used again."""
    from onnxruntime.quantization.neural_compressor.weight_only import gptq

    _, weight, hessian = _problem()
    ours = gptq(weight.copy(), hessian.copy(), 4, 16, "asym")
    identity = gptq(weight.copy(), np.eye(len(hessian)), 4, 16, "asym")
    assert np.array_equal(ours, identity)


def test_zero_points_pack_two_to_a_byte_row_by_row():
    zeros = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)  # 3 blocks a row: a spare nibble (8) per row
    assert packed_zero_points(zeros).tolist() == [[0x21, 0x83], [0x54, 0x86]]


def test_rows_the_calibration_never_excites_are_zero_and_a_singular_h_still_solves():
    _, weight, hessian = _problem()
    hessian[:, 5] = hessian[5, :] = 0  # input 5 was always zero
    codes, scales, zeros = gptq_codes(weight, hessian, 4, 16)
    dequantized = scales[0] * (codes[5].astype(np.float64) - zeros[0])
    assert np.allclose(dequantized, 0, atol=scales[0].max() / 2)
    singular = np.ones_like(hessian)  # rank one
    assert gptq_codes(weight, singular, 4, 16)[0].shape == weight.shape
