"""The validation graph: one anchor task shared by every chunk task, the same statistics as each alone."""

from __future__ import annotations


def test_validation_graph_computes_the_anchors_once_and_shares_them(tmp_path):
    import dask

    from dask_quant.pipeline.builtin import CALIB, MODEL, builtin_path
    from dask_quant.pipeline.graph import validation_graph
    from dask_quant.tasks.chunks import chunk_refs
    from dask_quant.tasks.digest import sha256_file
    from dask_quant.tasks.npy_io import NPY_MEMBER
    from dask_quant.tasks.sessions import ModelRef
    from dask_quant.tasks.validate import validate_chunk

    model, calib = builtin_path(MODEL), builtin_path(CALIB)
    ref = ModelRef(str(model), sha256_file(model))
    chunks = chunk_refs(str(calib), (("input", NPY_MEMBER),), 300, 60, sha256=sha256_file(calib))
    anchors = chunk_refs(str(calib), (("input", NPY_MEMBER),), 300, 120, sha256=sha256_file(calib))[0]
    graph = validation_graph(chunks, ref, ref, anchors)
    assert sum(str(key).startswith("anchor_outputs-") for key in graph.dask) == 1
    (shared,) = dask.compute(graph, scheduler="sync")
    alone = [validate_chunk(chunk, ref, ref, anchors) for chunk in chunks]  # each computing its own anchors
    assert [c.stats for c in shared] == [c.stats for c in alone]
    assert sum(c.stats.neighbour_queries for c in shared) == 300
