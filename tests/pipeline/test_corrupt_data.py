"""Data files with random bytes changed or cut off: read right (as numpy reads them) or refused with
an InputError (exit 2, one line), never another exception, never other values than the file holds."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import digits_paths

from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.graph import calibration_graph
from dask_quant.pipeline.stages.prepare import dataset_chunks, prepare
from dask_quant.tasks.errors import InputError, Refused

MODEL, CALIB, _ = digits_paths()
ROWS = 20
PROBES = 150  # examples per file kind; the closing note reports their count


def _valid_bytes(kind: str, folder) -> bytes:
    rows = np.load(CALIB)[:ROWS]
    path = folder / f"valid.{kind.split('_')[0]}"
    if kind == "npy":
        np.save(path, rows)
    else:  # a second member after `input`: a read past input's end would land in it
        save = np.savez_compressed if kind == "npz_deflated" else np.savez
        save(path, input=rows, other=np.full((ROWS, 8), 7.0, np.float32))
    return path.read_bytes()


def _numpy_reads(path):
    """What numpy reads from the file, or None when numpy refuses it."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            return data["input"]
    except Exception:  # noqa: BLE001  (numpy raises many kinds on corrupt files; any means "refused")
        return None


@pytest.mark.parametrize("kind", ["npy", "npz", "npz_deflated"])
def test_mutated_data_is_read_as_numpy_reads_it_or_refused(kind, tmp_path_factory):
    folder = tmp_path_factory.mktemp(kind)
    valid = _valid_bytes(kind, folder)
    outcomes = {"refused": 0, "read": 0}

    @settings(max_examples=PROBES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        flips=st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)), max_size=4),
        cut=st.one_of(st.none(), st.integers(0, len(valid) - 1)),
    )
    def probe(flips, cut):
        data = bytearray(valid)
        for position, mask in flips:
            data[position] ^= mask
        path = folder / f"probe.{kind.split('_')[0]}"
        path.write_bytes(bytes(data[:cut] if cut is not None else data))
        try:
            prepared = prepare(RunConfig(model=MODEL, calib=path, prepare=False, chunk_size=7))
            graph = calibration_graph(dataset_chunks(prepared.calib, 7), prepared.model, prepared.tensors)
            (stats,) = dask.compute(graph, scheduler="sync")
            if isinstance(stats, Refused):  # a chunk's bad data, as pipeline.compute would raise it
                stats.raise_it()
        except InputError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
            return
        expected = _numpy_reads(path)
        assert expected is not None, "read a file numpy refuses"
        observed = stats.as_dict()["input"]
        assert (observed.min, observed.max, observed.count) == (
            float(expected.min()),
            float(expected.max()),
            expected.size,
        )
        outcomes["read"] += 1

    probe()
    print(kind, outcomes)  # the counts the closing note reports (pytest -s)
    assert outcomes["refused"] > 0 and sum(outcomes.values()) >= PROBES // 2, outcomes
