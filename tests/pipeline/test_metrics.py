"""Validation metrics per task: the automatic choice, and numpy as the oracle for each metric."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest
from onnx import TensorProto, helper

from dask_quant.pipeline.config import Metric
from dask_quant.pipeline.metrics import resolve_metric
from dask_quant.tasks.validate import ValidationStats, compare_outputs


def _model(op: str, output: str, dims: list):
    node = helper.make_node(op, ["x"], [output])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", *dims])],
    )
    return helper.make_model(graph)


@pytest.mark.parametrize(
    ("op", "output", "dims", "labels", "expected"),
    [
        ("Relu", "embedding", [8], True, Metric.CLASSIFICATION),
        ("Softmax", "y", [8], False, Metric.CLASSIFICATION),
        ("Relu", "logits", [8], False, Metric.CLASSIFICATION),
        ("Relu", "price", [1], False, Metric.REGRESSION),
        ("Relu", "embedding", [8], False, Metric.EMBEDDING),
        ("Relu", "tokens", ["seq", 8], False, Metric.EMBEDDING),
        ("Relu", "maps", [1, 160, 160], False, Metric.REGRESSION),  # a detector's dense map
        ("Sigmoid", "score", [1, 320, 320], False, Metric.REGRESSION),  # a text detector's score map
        ("Softmax", "prob", [21, 64, 64], False, Metric.REGRESSION),  # a segmenter's per-pixel classes
        ("Sigmoid", "score", [1], False, Metric.REGRESSION),  # one logit per sample: no top-1 to agree on
    ],
)
def test_automatic_metric(op, output, dims, labels, expected):
    assert resolve_metric(Metric.AUTO, _model(op, output, dims), has_labels=labels) is expected
    assert resolve_metric(Metric.REGRESSION, _model(op, output, dims), has_labels=labels) is Metric.REGRESSION


def _embeddings(rows: int, seed: int):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(rows, 16)).astype(np.float32)
    return a, (a + rng.normal(scale=0.3, size=a.shape)).astype(np.float32)


def test_regression_metrics_match_numpy_and_are_exact_for_any_chunking():
    a, b = _embeddings(50, 1)
    whole = compare_outputs(a, b)
    parts = reduce(ValidationStats.merge, (compare_outputs(a[i : i + 7], b[i : i + 7]) for i in range(0, 50, 7)))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert whole.mse == pytest.approx(((a64 - b64) ** 2).mean(), rel=1e-15)
    assert whole.sqnr_db == pytest.approx(10 * np.log10((a64**2).sum() / ((a64 - b64) ** 2).sum()), rel=1e-13)
    assert (parts.squared_error, parts.signal, parts.min_cosine) == (
        whole.squared_error,
        whole.signal,
        whole.min_cosine,
    )


def test_nearest_neighbour_agreement_matches_brute_force():
    a, b = _embeddings(60, 2)
    anchor_rows = np.arange(0, 20)
    anchors = (a[:20].astype(np.float64), b[:20].astype(np.float64), anchor_rows)

    def nearest(x, pool, row):
        sims = [
            (-np.inf if j == row else np.dot(x, p) / np.linalg.norm(x) / np.linalg.norm(p)) for j, p in enumerate(pool)
        ]
        return int(np.argmax(sims))

    expected = sum(nearest(a[i], a[:20], i) == nearest(b[i], b[:20], i) for i in range(60))
    stats = [
        compare_outputs(a[i : i + 13], b[i : i + 13], None, np.arange(i, min(i + 13, 60)), anchors)
        for i in range(0, 60, 13)
    ]
    merged = reduce(ValidationStats.merge, stats)
    assert (merged.neighbour_agree, merged.neighbour_queries) == (expected, 60)
    assert 0 < expected < 60  # the noise is large enough for the test to mean something
