"""Parameters are identical for any chunk size, chunk order and merge-tree shape."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import digits_paths

from dask_quant.pipeline.config import QuantConfig, RunConfig
from dask_quant.pipeline.graph import calibration_graph, histogram_graph, layer_graph
from dask_quant.pipeline.ranges import activation_ranges, histogram_specs
from dask_quant.pipeline.stages.prepare import dataset_chunks, prepare
from dask_quant.pipeline.stages.quantize import tensors_data
from dask_quant.tasks.chunks import ChunkRef

MODEL, CALIB, _ = digits_paths()
PREPARED = prepare(RunConfig(model=MODEL, calib=CALIB, prepare=False))  # the model as given: no files


def _stats(chunks: list[ChunkRef], split_every: int):
    (stats,) = dask.compute(calibration_graph(chunks, PREPARED.model, PREPARED.tensors, split_every), scheduler="sync")
    return stats


def _uneven_chunks(cuts: list[int]) -> list[ChunkRef]:
    whole = dataset_chunks(PREPARED.calib, PREPARED.calib.rows)[0]
    bounds = sorted({0, PREPARED.calib.rows, *cuts})
    return [
        ChunkRef(whole.path, whole.members, start, stop, index)
        for index, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]


BASELINE = _stats(dataset_chunks(PREPARED.calib, PREPARED.calib.rows), split_every=2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(1, PREPARED.calib.rows - 1), max_size=12),
    split_every=st.integers(2, 9),
    random=st.randoms(use_true_random=False),
)
def test_any_chunking_order_and_tree_gives_identical_parameters(cuts, split_every, random):
    chunks = _uneven_chunks(cuts)
    random.shuffle(chunks)
    stats = _stats(chunks, split_every)
    assert stats == BASELINE
    ours = tensors_data(activation_ranges(stats, None, QuantConfig()), stats)
    base = tensors_data(activation_ranges(BASELINE, None, QuantConfig()), BASELINE)
    assert all(
        (ours[k].lowest.tobytes(), ours[k].highest.tobytes()) == (base[k].lowest.tobytes(), base[k].highest.tobytes())
        for k in base.keys()
    )


def test_graph_keys_are_deterministic():
    chunks = dataset_chunks(PREPARED.calib, 64)
    a = calibration_graph(chunks, PREPARED.model, PREPARED.tensors)
    b = calibration_graph(chunks, PREPARED.model, PREPARED.tensors)
    assert a.key == b.key


def _histogram_ranges(chunks: list[ChunkRef], split_every: int, quant: QuantConfig) -> dict:
    stats = _stats(chunks, split_every)
    specs = histogram_specs(stats, quant)
    graph = histogram_graph(chunks, PREPARED.model, PREPARED.tensors, specs, split_every)
    (histograms,) = dask.compute(graph, scheduler="sync")
    return activation_ranges(stats, histograms, quant)


HISTOGRAM_METHODS = {
    "entropy": QuantConfig(method="entropy"),
    "percentile": QuantConfig(method="percentile", percentile=99.9),
    "percentile-symmetric": QuantConfig(method="percentile", percentile=99.9, symmetric=True),
    "mse": QuantConfig(method="mse"),
}
HISTOGRAM_BASELINES = {
    name: _histogram_ranges(dataset_chunks(PREPARED.calib, PREPARED.calib.rows), 2, quant)
    for name, quant in HISTOGRAM_METHODS.items()
}


@pytest.mark.parametrize("method", sorted(HISTOGRAM_METHODS))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(1, PREPARED.calib.rows - 1), max_size=10),
    split_every=st.integers(2, 5),
    random=st.randoms(use_true_random=False),
)
def test_histogram_methods_give_identical_ranges_for_any_chunking(method, cuts, split_every, random):
    chunks = _uneven_chunks(cuts)
    random.shuffle(chunks)
    assert _histogram_ranges(chunks, split_every, HISTOGRAM_METHODS[method]) == HISTOGRAM_BASELINES[method]


@pytest.mark.parametrize("budget", [1, 20_000])
def test_histograms_do_not_depend_on_how_a_chunk_is_run_in_row_slices(budget, monkeypatch):
    from dask_quant.tasks import sessions

    monkeypatch.setattr(sessions, "EXPOSED_BYTES_PER_RUN", budget)
    chunks = dataset_chunks(PREPARED.calib, 64)
    for method in ("entropy", "percentile-symmetric"):
        assert _histogram_ranges(chunks, 3, HISTOGRAM_METHODS[method]) == HISTOGRAM_BASELINES[method]


def test_layer_errors_are_identical_for_any_chunking(tmp_path, monkeypatch):
    import onnx

    from dask_quant.pipeline.layers import layer_rows, quantized_layers
    from dask_quant.pipeline.stages.quantize import write_quantized_model
    from dask_quant.tasks import sessions
    from dask_quant.tasks.digest import sha256_file
    from dask_quant.tasks.sessions import ModelRef

    int8_path = tmp_path / "int8.onnx"
    ranges = tensors_data(activation_ranges(BASELINE, None, QuantConfig()), BASELINE)
    write_quantized_model(PREPARED.proto, ranges, QuantConfig(), int8_path)
    layers = quantized_layers(PREPARED.proto, onnx.load(str(int8_path)), dict(PREPARED.tensors))
    pairs = tuple((layer.tensor, layer.dequantized, layer.elem_type) for layer in layers)
    int8 = ModelRef(str(int8_path), sha256_file(int8_path))
    tables = []
    # The last case also runs each chunk in row slices of a few rows (tasks.sessions.exposed_runs).
    cases = ((300, 2, None), (17, 3, None), (64, 8, None), (64, 2, 50_000))
    for chunk_size, split_every, budget in cases:
        if budget:
            monkeypatch.setattr(sessions, "EXPOSED_BYTES_PER_RUN", budget)
        chunks = dataset_chunks(PREPARED.calib, chunk_size)
        (errors,) = dask.compute(layer_graph(chunks, PREPARED.model, (int8,), (pairs,), split_every), scheduler="sync")
        tables.append(layer_rows(layers, errors.values[0]))
    assert len(tables[0]) == 7
    assert all(table == tables[0] for table in tables[1:])

    # 198 rows in chunks of 197 leave row 197 alone; it joins the chunk before, because the INT8
    # model's one-row Gemm rounds differently (row 197 run alone moves /7/Relu by an INT8 step).
    first = tmp_path / "first198.npy"
    np.save(first, np.load(CALIB)[:198])
    rows = prepare(RunConfig(model=MODEL, calib=first, prepare=False)).calib
    graphs = [layer_graph(dataset_chunks(rows, size), PREPARED.model, (int8,), (pairs,)) for size in (198, 197)]
    pair = [layer_rows(layers, dask.compute(graph, scheduler="sync")[0].values[0]) for graph in graphs]
    assert pair[0] == pair[1]
