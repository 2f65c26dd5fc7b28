"""Checkpoints that cannot lie: any corruption or edit is discarded, recomputed and counted, never used."""

from __future__ import annotations

import json

import numpy as np
import pytest
from models import digits_paths

from dask_quant.tasks.calibrate import chunk_range_stats
from dask_quant.tasks.checkpoint import SUFFIX, Checkpoints
from dask_quant.tasks.chunks import chunk_refs
from dask_quant.tasks.digest import sha256_file
from dask_quant.tasks.npy_io import NPY_MEMBER
from dask_quant.tasks.sessions import ModelRef

MODEL, CALIB, _ = digits_paths()
TENSORS = (("input", 1), ("/1/Relu_output_0", 1))


def _edit_max(text):
    record = json.loads(text)
    record["value"]["ranges"][0][2] += 1.0
    return json.dumps(record)


def _empty_ranges(text):
    record = json.loads(text)
    record["value"]["ranges"] = []
    return json.dumps(record)


def _edit_count(text):
    record = json.loads(text)
    record["value"]["ranges"][0][3] += 1
    return json.dumps(record)


CORRUPTIONS = {
    "truncated": lambda text: text[: len(text) // 2],
    "garbage": lambda text: "\x00\xff garbage \x07" * 10,
    "empty": lambda text: "",
    "a JSON list": lambda text: "[1, 2, 3]",
    "another chunk's": None,  # the checkpoint of chunk 1 copied over chunk 0's
    "a changed max": _edit_max,
    "an empty ranges list": _empty_ranges,
    "a changed count": _edit_count,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_or_edited_checkpoint_is_discarded_and_recomputed(corruption, tmp_path):
    model = ModelRef(str(MODEL), sha256_file(MODEL))
    chunks = chunk_refs(str(CALIB), (("input", NPY_MEMBER),), 300, 100, sha256=sha256_file(CALIB))
    store = Checkpoints(str(tmp_path / "work"))
    fresh = chunk_range_stats(chunks[0], model, TENSORS, store)
    other = chunk_range_stats(chunks[1], model, TENSORS, store)
    assert fresh.chunks == (1, 0, 0) and other != fresh
    files = {path.read_text(): path for path in (tmp_path / "work").glob(f"*{SUFFIX}")}
    mine = next(path for text, path in files.items() if json.loads(text)["value"] == fresh.to_json())
    theirs = next(path for path in files.values() if path != mine)
    change = CORRUPTIONS[corruption]
    mine.write_text(theirs.read_text() if change is None else change(mine.read_text()))

    resumed = Checkpoints(store.folder, resume=True)
    again = chunk_range_stats(chunks[0], model, TENSORS, resumed)
    assert again == fresh and again.chunks == (1, 0, 1)  # recomputed and counted as discarded
    reused = chunk_range_stats(chunks[0], model, TENSORS, resumed)  # the rewritten checkpoint is good
    assert reused == fresh and reused.chunks == (0, 1, 0)
    assert np.isfinite([r.min for _, r in reused.ranges]).all()
