"""The validation graph: anchor chunks' outputs computed once and shared; the same statistics as each chunk alone."""

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
    original = validate.chunk_outputs

    def counted(chunk, *args, **kwargs):
        calls.append(chunk.index)
        return original(chunk, *args, **kwargs)

    monkeypatch.setattr(validate, "chunk_outputs", counted)
    monkeypatch.setattr(graphs, "chunk_outputs", counted)
    graph = graphs.validation_graph(chunks, ref, ref, anchors)
    # Each chunk's outputs are computed once: by its own task, or, for an anchor chunk, by the task the anchors join.
    runs = [key for key in graph.dask if isinstance(key, tuple) and key[0].startswith("chunk_outputs-")]
    assert len(runs) == anchors
    assert sum(str(key).startswith("join_anchors-") for key in graph.dask) == (anchors > 0)
    (shared,) = dask.compute(graph, scheduler="sync")
    assert sorted(calls) == list(range(len(chunks)))
    monkeypatch.undo()
    alone = [validate.validate_chunk(chunk, ref, ref, chunks[:anchors]) for chunk in chunks]
    assert [c.stats for c in shared] == [c.stats for c in alone]
    assert sum(c.stats.neighbour_queries for c in shared) == (300 if anchors else 0)
