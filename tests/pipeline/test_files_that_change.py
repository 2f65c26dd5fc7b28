"""Files that change while a run reads them, and work areas no run can resume."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
from models import digits_paths

from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.graph import calibration_graph
from dask_quant.pipeline.stages.prepare import dataset_chunks, prepare
from dask_quant.pipeline.workarea import MANIFEST, WorkArea
from dask_quant.tasks.errors import InputError, Refused

MODEL, CALIB, _ = digits_paths()


def _calib(tmp_path, seed=0):
    path = tmp_path / "calib.npy"
    rows = np.load(CALIB)[:40]
    np.save(path, rows if seed == 0 else rows[::-1].copy())
    return path


def test_a_data_file_replaced_between_two_chunks_stops_the_run(tmp_path):
    path = _calib(tmp_path)
    prepared = prepare(RunConfig(model=MODEL, calib=path, prepare=False, out=tmp_path / "out"))
    chunks = dataset_chunks(prepared.calib, 20)
    (first,) = dask.compute(calibration_graph(chunks[:1], prepared.model, prepared.tensors), scheduler="sync")
    assert not isinstance(first, Refused)
    _calib(tmp_path, seed=1)  # same size, other rows: only the modification time tells
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000))
    (second,) = dask.compute(calibration_graph(chunks[1:], prepared.model, prepared.tensors), scheduler="sync")
    assert isinstance(second, Refused)
    with pytest.raises(InputError, match=r"the file changed since the run started"):
        second.raise_it()


def test_work_areas_of_changed_or_missing_data_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    old = _calib(tmp_path)
    config = RunConfig(model=MODEL, calib=old, prepare=False, out=out)
    interrupted = WorkArea(config, prepare(config))
    assert interrupted.start() == 0
    (interrupted.folder / "x.ckpt.json").write_text("{}")  # what an interrupted run keeps
    same = WorkArea(config, prepare(config))
    assert same.start() == 0 and interrupted.folder.is_dir()  # resumable: kept

    _calib(tmp_path, seed=1)
    os.utime(old, ns=(0, old.stat().st_mtime_ns + 1_000_000))
    changed = WorkArea(config, prepare(config))
    assert changed.folder != interrupted.folder
    assert changed.start() == 1 and not interrupted.folder.exists()
    assert (changed.folder / MANIFEST).is_file()
