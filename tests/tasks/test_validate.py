"""Validation partials: numpy as the oracle, and merged chunks equal one big batch (counts exactly)."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest

from dask_quant.tasks.errors import InputError
from dask_quant.tasks.row_identity import DIFFERENT_ROWS
from dask_quant.tasks.validate import ValidationStats, compare_outputs


def _oracle(a, b, labels):
    cos = [float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))) for x, y in zip(a, b, strict=False)]
    return {
        "agree": int((a.argmax(1) == b.argmax(1)).sum()),
        "fp32": int((a.argmax(1) == labels).sum()),
        "int8": int((b.argmax(1) == labels).sum()),
        "max_abs": float(np.abs(a.astype(np.float64) - b).max()),
        "cos": float(np.mean(cos)),
    }


def test_compare_outputs_matches_numpy():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(50, 10)).astype(np.float32)
    b = (a + rng.normal(scale=0.3, size=a.shape)).astype(np.float32)
    labels = rng.integers(0, 10, size=50)
    stats, want = compare_outputs(a, b, labels), _oracle(a.astype(np.float64), b.astype(np.float64), labels)
    assert (stats.top1_agree, stats.fp32_correct, stats.int8_correct) == (want["agree"], want["fp32"], want["int8"])
    assert stats.max_abs_error == want["max_abs"]
    assert np.isclose(stats.mean_cosine, want["cos"], rtol=1e-12)
    assert stats.samples == stats.labelled == 50


def test_merged_chunks_equal_whole_batch_field_for_field_for_any_pieces():
    """Every statistic merges exactly (the cosine sum too): rows scored in any pieces, merged in any order,
    give the statistics of one batch, so the search may split an experiment over its workers."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(31, 4)).astype(np.float32)
    b = (a + rng.normal(scale=0.5, size=a.shape)).astype(np.float32)
    labels = rng.integers(0, 4, size=31)
    rows = np.arange(31)
    whole = compare_outputs(a, b, labels, rows)
    for size in (1, 2, 7, 16):
        parts = [compare_outputs(a[i : i + size], b[i : i + size], labels[i : i + size], rows[i : i + size])
                 for i in range(0, 31, size)]  # fmt: skip
        assert reduce(ValidationStats.merge, parts, ValidationStats()) == whole
        assert reduce(ValidationStats.merge, reversed(parts), ValidationStats()) == whole
    assert ValidationStats.from_json(whole.to_json()) == whole


def test_a_nan_cosine_makes_the_mean_nan_in_any_merge():
    fp32 = np.array([[1.0, 0.0], [np.inf, 1.0], [0.0, 1.0]], np.float32)  # an overflow: its cosine is NaN
    int8 = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], np.float32)
    stats = compare_outputs(fp32, int8)
    assert stats.nan_cosines == 1 and np.isnan(stats.mean_cosine)
    assert np.isnan(compare_outputs(fp32[:1], int8[:1]).merge(compare_outputs(fp32[1:], int8[1:])).mean_cosine)
    assert compare_outputs(fp32[::2], int8[::2]).mean_cosine == 1.0


def test_statistics_of_an_older_version_with_a_float_cosine_sum_are_refused():
    """Checkpoints and trials written before the sum was exact are computed again, not mixed in."""
    data = compare_outputs(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)).to_json()
    with pytest.raises(TypeError, match="cosine_sum must be an exact sum"):
        ValidationStats.from_json({**data, "cosine_sum": 3.0})


def test_without_labels_accuracy_is_none():
    stats = compare_outputs(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), None)
    assert stats.fp32_accuracy is None and stats.agreement == 1.0 and stats.mean_cosine == 1.0


def test_all_zero_output_pairs_are_counted_apart_not_as_cosine_one():
    fp32 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
    int8 = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0], [0.0, 0.0]], np.float32)
    stats = compare_outputs(fp32, int8)
    assert stats.zero_pairs == 1  # row 0; a one-sided zero (rows 2, 3) has cosine 0
    assert stats.mean_cosine == 1 / 3 and stats.min_cosine == 0.0
    half = compare_outputs(fp32[:2], int8[:2]).merge(compare_outputs(fp32[2:], int8[2:]))
    assert half.zero_pairs == 1 and half.mean_cosine == stats.mean_cosine


def test_collapsed_int8_output_is_detected():
    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(6, 4)).astype(np.float32)
    assert compare_outputs(fp32, np.zeros_like(fp32)).collapsed
    assert compare_outputs(fp32, np.tile(fp32[:1], (6, 1))).collapsed
    assert not compare_outputs(fp32, fp32 * 0.9).collapsed
    assert not compare_outputs(np.tile(fp32[:1], (6, 1)), np.zeros_like(fp32)).collapsed  # FP32 constant too


def test_collapse_is_the_same_row_for_every_sample_in_any_pieces_not_the_same_sum():
    """A confident softmax quantized to steps of 1/255 gives one-hot rows, all of one sum whichever class
    each picks: not collapsed. The same row everywhere is, however the samples are split (-0.0 is 0.0)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 10)) * 8
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    one_hot = np.eye(10, dtype=np.float32)[probs.argmax(axis=1)] * np.float32(255 / 255)
    assert len(set(probs.argmax(axis=1))) > 1 and len(set(one_hot.sum(axis=1))) == 1
    assert not compare_outputs(probs, one_hot).collapsed
    same = np.tile(np.array([[0.5, 0.0, 2.0]], np.float32), (8, 1))
    same[3, 1] = -0.0
    varied = rng.normal(size=(8, 3)).astype(np.float32)
    for cut in range(1, 8):
        parts = [compare_outputs(varied[:cut], same[:cut]), compare_outputs(varied[cut:], same[cut:])]
        assert parts[0].merge(parts[1]).collapsed and parts[1].merge(parts[0]).collapsed
    # Every sample confidently one class: FP32's probabilities differ in their last digits, INT8's one-hot
    # rows are all the same: no decision is lost.
    sure = np.tile(np.array([[0.001, 0.998, 0.001]], np.float32), (8, 1))
    sure[:, 1] += np.arange(8, dtype=np.float32) * np.float32(1e-4)
    assert not compare_outputs(sure, np.tile(np.array([[0.0, 1.0, 0.0]], np.float32), (8, 1))).collapsed
    scalar = varied[:, :1]  # one value per sample: FP32's differ, INT8's do not
    assert compare_outputs(scalar, np.ones_like(scalar)).collapsed
    other = same.copy()
    other[7, 2] = 2.0001
    merged = compare_outputs(varied[:4], other[:4]).merge(compare_outputs(varied[4:], other[4:]))
    assert not merged.collapsed and merged.int8_row == DIFFERENT_ROWS


def test_labels_outside_the_classes_are_refused_with_the_sample():
    scores = np.zeros((3, 4), np.float32)
    expected = r"label 4 of sample 11 is not a class .* 4 values per sample \(classes 0..3\)"
    with pytest.raises(InputError, match=expected):
        compare_outputs(scores, scores, labels=np.array([0, 3, 4]), rows=np.array([9, 10, 11]))


def test_the_gate_counts_non_finite_int8_outputs_only_where_fp32_is_finite(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    from dask_quant.tasks import gate
    from dask_quant.tasks.chunks import chunk_refs
    from dask_quant.tasks.digest import sha256_file
    from dask_quant.tasks.gate import int8_problem, int8_problems
    from dask_quant.tasks.npy_io import NPY_MEMBER
    from dask_quant.tasks.sessions import ModelRef

    def model(name, op):  # Log of |x| (-inf at 0, as FP32 says) or of |x| - 10 (NaN where FP32 is finite)
        nodes = [
            helper.make_node("Abs", ["x"], ["a"]),
            helper.make_node(op, ["a", "ten"], ["b"]),
            helper.make_node("Log", ["b"], ["y"]),
        ]
        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
            initializer=[helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])],
        )
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return ModelRef(str(path), sha256_file(path))

    data = tmp_path / "x.npy"
    np.save(data, np.array([[0.0, 1.0], [2.0, 3.0]], np.float32))
    chunk = chunk_refs(str(data), (("x", NPY_MEMBER),), 2, 2)[0]
    fp32, same, broken = model("fp32", "Mul"), model("same", "Mul"), model("broken", "Sub")
    assert int8_problem(chunk, fp32, same) is None  # -inf where FP32 has it too
    assert "outputs NaN or infinite values ('y') on calibration rows 0..2" in int8_problem(chunk, fp32, broken)
    # A run's methods are gated in one task: each model's own verdict, the FP32 model run once.
    runs = []
    original = gate.run_in_batches
    monkeypatch.setattr(gate, "run_in_batches", lambda session, *a: runs.append(session) or original(session, *a))
    both = int8_problems(chunk, fp32, (same, broken))
    assert both[0] is None and "outputs NaN or infinite values ('y')" in both[1]
    assert len(runs) == 3


def test_values_an_output_gives_as_inf_or_nan_are_counted_apart_not_summed():
    """A model may output -inf on purpose (masked log-probabilities): the exact sums hold the finite
    elements, the others are counted, and merging pieces still gives the whole batch's statistics."""
    fp32 = np.array([[1.0, -np.inf, 2.0], [3.0, 4.0, 0.5], [1.0, 1.0, 1.0]], np.float32)
    int8 = np.array([[1.5, -np.inf, 2.0], [3.0, np.nan, 0.5], [1.0, 1.0, 1.25]], np.float32)
    stats = compare_outputs(fp32, int8)
    finite = np.isfinite(fp32) & np.isfinite(int8)
    assert stats.non_finite == 2 and stats.elements == 9
    assert stats.mse == float(np.mean((fp32[finite].astype(np.float64) - int8[finite]) ** 2))
    noise = ((fp32[finite] - int8[finite]) ** 2).sum()
    assert stats.sqnr_db == pytest.approx(10 * np.log10((fp32[finite] ** 2).sum() / noise))
    assert np.isnan(stats.mean_cosine) and stats.nan_cosines == 2  # the -inf row and the NaN row alike
    assert stats.int8_non_finite == 1  # the NaN INT8 gives where FP32 has 4.0 (the -inf is both models')
    parts = [compare_outputs(fp32[i : i + 1], int8[i : i + 1]) for i in range(3)]
    for merged in (reduce(ValidationStats.merge, p, ValidationStats()) for p in (parts, parts[::-1])):
        assert repr(merged) == repr(stats)  # NaN maxima and minima too, in any order


def test_an_exact_sum_refuses_values_no_integer_holds():
    from dask_quant.tasks.exact_sum import exact_sum

    with pytest.raises(ValueError, match="finite values only; 1 are inf or NaN"):
        exact_sum(np.array([1.0, np.inf]))


def test_a_row_the_int8_model_makes_nan_or_inf_ranks_among_the_worst():
    """The search's ranking rows are those with the lowest cosine under full INT8: a row whose INT8 output
    went NaN or inf has no cosine and must be picked first, not look perfect (or middling)."""
    from dask_quant.pipeline.tune import _ranking_rows
    from dask_quant.tasks.feeding import Feeding
    from dask_quant.tasks.reference_rows import ReferenceRows, baseline

    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(6, 4)).astype(np.float32)
    int8 = fp32 + np.float32(0.01) * rng.normal(size=fp32.shape).astype(np.float32)
    int8[4, 0], int8[3, 2] = np.nan, np.inf
    int8[1] = -fp32[1]  # a finite but bad row: cosine -1
    every = ReferenceRows(tuple(range(6)), {}, fp32, None, Feeding())
    (stats,), cosines = baseline((every, [int8]))
    assert stats.nan_cosines == 2 and np.isnan(stats.mean_cosine)
    assert np.isneginf(cosines[[3, 4]]).all() and cosines[1] == pytest.approx(-1)
    assert _ranking_rows(cosines, 3) == (1, 3, 4)
    # Where FP32 itself is not finite (a mask's -inf on purpose, kept by INT8), there is no error to find.
    fp32[0, 1] = int8[0, 1] = -np.inf
    every = ReferenceRows(tuple(range(6)), {}, fp32, None, Feeding())
    _, cosines = baseline((every, [int8]))
    assert cosines[0] == 1 and _ranking_rows(cosines, 3) == (1, 3, 4)
    int8[0, 2] = np.nan  # and INT8 breaks another value of that row: the worst again
    _, cosines = baseline((every, [int8]))
    assert np.isneginf(cosines[0]) and _ranking_rows(cosines, 3) == (0, 3, 4)
