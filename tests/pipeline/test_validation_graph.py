"""The validation graph: anchor chunks' outputs computed once and shared, the FP32 model run once per chunk
for every INT8 model; the same statistics as each chunk alone."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("anchors", [0, 2, 5])
def test_validation_graph_computes_the_anchors_once_and_shares_them(anchors, monkeypatch):
    import dask

    from dask_quant.pipeline import graph as graphs
    from dask_quant.pipeline.builtin import CALIB, MODEL, builtin_path
    from dask_quant.tasks import validate
    from dask_quant.tasks.chunks import chunk_refs
    from dask_quant.tasks.digest import sha256_file
    from dask_quant.tasks.npy_io import NPY_MEMBER
    from dask_quant.tasks.sessions import ModelRef

    model, calib = builtin_path(MODEL), builtin_path(CALIB)
    ref = ModelRef(str(model), sha256_file(model))
    chunks = chunk_refs(str(calib), (("input", NPY_MEMBER),), 300, 60, sha256=sha256_file(calib))
    calls = []
    original = validate.model_outputs

    def counted(chunk, *args, **kwargs):
        calls.append(chunk.index)
        return original(chunk, *args, **kwargs)

    monkeypatch.setattr(validate, "model_outputs", counted)
    graph = graphs.validation_graph(chunks, ref, (ref, ref), anchors)
    # Each chunk's outputs are computed once: by its own task, or, for an anchor chunk, by the task the anchors join.
    runs = [key for key in graph.dask if isinstance(key, tuple) and key[0].startswith("chunk_outputs-")]
    assert len(runs) == anchors
    assert sum(str(key).startswith("join_anchors-") for key in graph.dask) == (anchors > 0)
    (shared,) = dask.compute(graph, scheduler="sync")
    # Each chunk runs the FP32 model once and each of the two INT8 models once.
    assert sorted(calls) == sorted(3 * list(range(len(chunks))))
    monkeypatch.undo()
    alone = [validate.validate_chunk(chunk, ref, ref, chunks[:anchors]) for chunk in chunks]
    assert [c.stats for (c, _) in shared] == [c.stats for c in alone]
    assert [c.stats for (_, c) in shared] == [c.stats for c in alone]
    assert sum(c.stats.neighbour_queries for (c, _) in shared) == (300 if anchors else 0)


@pytest.mark.parametrize("anchors", [0, 2])
def test_fp32_outputs_the_reference_pass_has_are_not_computed_again(anchors, monkeypatch, tmp_path):
    """tune's final validation takes the FP32 outputs its reference pass computed over the same chunks: the
    FP32 model does not run, and every statistic is the one validation computes itself."""
    import shutil

    import dask

    from dask_quant.pipeline import graph as graphs
    from dask_quant.pipeline.builtin import CALIB, MODEL, builtin_path
    from dask_quant.tasks import validate
    from dask_quant.tasks.chunks import chunk_refs
    from dask_quant.tasks.digest import sha256_file
    from dask_quant.tasks.npy_io import NPY_MEMBER
    from dask_quant.tasks.reference_rows import fp32_outputs, joined, reference_chunk
    from dask_quant.tasks.sessions import ModelRef

    model, calib = builtin_path(MODEL), builtin_path(CALIB)
    fp32 = ModelRef(str(model), sha256_file(model))
    copy = tmp_path / "other.onnx"  # the model compared with FP32 (a copy: which of the two runs is what counts)
    shutil.copyfile(model, copy)
    int8 = ModelRef(str(copy), fp32.sha256)
    chunks = chunk_refs(str(calib), (("input", NPY_MEMBER),), 300, 60, sha256=sha256_file(calib))
    every, _ = joined([reference_chunk(chunk, fp32, int8) for chunk in chunks])  # as tune's reference pass
    known = [fp32_outputs(every, chunk.start, chunk.stop) for chunk in chunks]
    (computed,) = dask.compute(graphs.validation_graph(chunks, fp32, (int8,), anchors), scheduler="sync")
    ran = []
    original = validate.model_outputs
    monkeypatch.setattr(validate, "model_outputs", lambda c, feeds, m, o: ran.append(m) or original(c, feeds, m, o))
    graph = graphs.validation_graph(chunks, fp32, (int8,), anchors, fp32_known=known)
    (reused,) = dask.compute(graph, scheduler="sync")
    assert ran == [int8] * len(chunks)  # the INT8 model only
    assert [c.stats for (c,) in reused] == [c.stats for (c,) in computed]
    # Outputs that do not fit the chunk (another chunking's) are not taken: the FP32 model runs.
    ran.clear()
    short = [[value[:-1] for value in outputs] for outputs in known]
    dask.compute(graphs.validation_graph(chunks, fp32, (int8,), anchors, fp32_known=short), scheduler="sync")
    assert ran.count(fp32) == ran.count(int8) == len(chunks)


@pytest.mark.parametrize(("rows", "chunk_size"), [(128, 64), (129, 64), (24, 64), (5000, 64), (3, 64), (128, 1)])
def test_the_per_layer_pass_splits_a_small_set_into_enough_tasks_to_balance(rows, chunk_size):
    """A 128-row set in 64-row chunks made two long per-layer tasks the scheduler once put on one worker:
    the pass takes smaller chunks (at least LAYER_TASKS where the rows allow), never more than --chunk-size
    rows, never a lone row (ORT's one-row kernels), and a worker killed by one of them is named by its rows."""
    from types import SimpleNamespace

    from dask_quant.pipeline.failures import killed_worker_message
    from dask_quant.pipeline.inputs import DatasetSpec
    from dask_quant.pipeline.stages.validate import LAYER_TASKS, layer_chunks

    val = DatasetSpec("val.npz", (("input", "input"),), rows, "0" * 64)
    chunks = layer_chunks(val, chunk_size)
    sizes = [chunk.rows for chunk in chunks]
    assert [c.start for c in chunks] == [0, *[c.stop for c in chunks[:-1]]]
    assert chunks[-1].stop == rows
    assert max(sizes) <= chunk_size
    assert min(sizes) >= 2 or chunk_size == 1
    assert max(sizes) <= max(2, -(-rows // LAYER_TASKS)) + 1  # about LAYER_TASKS tasks, or 2-row ones
    fixed = layer_chunks(val, chunk_size - chunk_size % 3 or 3, fixed_batch=3)  # a model that fixes batch 3
    assert all(chunk.rows % 3 == 0 for chunk in fixed[:-1]) and fixed[-1].stop == rows

    error = SimpleNamespace(task=(f"chunk_layer_errors-{'0' * 8}", len(chunks) - 1), allowed_failures=3)
    prepared = SimpleNamespace(val=val, calib=None, fixed_batch=None)
    message = killed_worker_message(error, SimpleNamespace(chunk_size=chunk_size), prepared)
    assert message.startswith(f"chunk {len(chunks) - 1} (rows {chunks[-1].start}..{rows} of val.npz) killed 4 workers")
