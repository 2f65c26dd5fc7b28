"""Parquet calibration and validation data: the same statistics as the same rows in .npz for any chunking,
and every bad dataset refused up front with one line (exit 2, nothing written)."""

from __future__ import annotations

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from models import digits_paths, load_arrays

from dask_quant.pipeline.cli import main
from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.graph import calibration_graph
from dask_quant.pipeline.stages.prepare import dataset_chunks, prepare
from dask_quant.tasks.chunks import read_feeds, read_labels

MODEL, CALIB, VAL = digits_paths()


def _flat(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(len(values), -1).ravel()), values[0].size)


def _tensor(values: np.ndarray) -> pa.Array:
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values))


def _write(folder, columns: dict[str, np.ndarray], parts=3, row_group=11, encode=_tensor):
    """`columns` split over `parts` files of a hive-partitioned folder."""
    rows = len(next(iter(columns.values())))
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    for part, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        part_rows = {n: v[start:stop] for n, v in columns.items()}
        table = pa.table({n: encode(v) if v.ndim > 1 else pa.array(v) for n, v in part_rows.items()})
        (folder / f"part={part}").mkdir(parents=True)
        pq.write_table(table, folder / f"part={part}" / "rows.parquet", row_group_size=row_group)
    return folder


def _stats(prepared, chunk_size: int):
    chunks = dataset_chunks(prepared.calib, chunk_size)
    (stats,) = dask.compute(calibration_graph(chunks, prepared.model, prepared.tensors, 4), scheduler="sync")
    return stats


@pytest.mark.parametrize("encode", [_tensor, _flat], ids=["tensor", "flat-list"])
def test_parquet_gives_the_statistics_of_the_same_rows_in_npz(tmp_path, encode):
    calib = _write(tmp_path / "calib", load_arrays(CALIB, ["input"]), encode=encode)
    npz = prepare(RunConfig(model=MODEL, calib=CALIB, prepare=False))
    parquet = prepare(RunConfig(model=MODEL, calib=calib, prepare=False))
    assert parquet.calib.rows == npz.calib.rows
    baseline = _stats(npz, 64)
    for chunk_size in (64, 37, 300):
        assert _stats(parquet, chunk_size) == baseline


def test_parquet_validation_rows_and_labels(tmp_path, residual):
    model, _, val = residual
    arrays = load_arrays(val, ["image", "extra"])
    arrays["labels"] = np.arange(len(arrays["image"])) % 5
    folder = _write(tmp_path / "val", arrays, parts=2, row_group=6, encode=_flat)  # image stored flat: reshaped
    prepared = prepare(RunConfig(model=model, calib=folder, val=folder, prepare=False))
    assert prepared.val.labels == "labels" and prepared.calib.labels is None
    for chunk in dataset_chunks(prepared.val, 7):
        feeds = read_feeds(chunk)
        assert feeds["image"].shape == (chunk.rows, 3, 6, 6)
        for name in ("image", "extra"):
            assert np.array_equal(feeds[name], arrays[name][chunk.start : chunk.stop])
        assert np.array_equal(read_labels(chunk), arrays["labels"][chunk.start : chunk.stop])


def _digits(tmp_path, **columns):
    values = {"input": load_arrays(CALIB, ["input"])["input"][:40], **columns}
    return _write(tmp_path / "bad", {k: v for k, v in values.items() if v is not None}, parts=2)


def _table_file(tmp_path, table):
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    return path


def _schemas_differ(tmp_path):
    folder = _digits(tmp_path)
    table = pa.table({"input": _tensor(np.zeros((4, 1, 8, 8), np.float64))})
    pq.write_table(table, folder / "part=1" / "more.parquet")
    return folder


def _duplicated(tmp_path):
    images = _tensor(np.zeros((4, 1, 8, 8), np.float32))
    return _table_file(tmp_path, pa.Table.from_arrays([images, images], names=["input", "input"]))


def _labels_in_later_files_only(tmp_path):
    folder = _digits(tmp_path)
    pq.write_table(pa.table({"input": _tensor(np.zeros((4, 1, 8, 8), np.float32)), "labels": [0, 1, 2, 3]}),
                   folder / "part=1" / "more.parquet")  # fmt: skip
    return folder


CASES = {
    "duplicated column": (_duplicated, "2 columns named 'input'; a dataset needs one column per input"),
    "a column only some files have": (_labels_in_later_files_only, "column 'labels' is int64, but in"),
    "no such column": (lambda t: _digits(t, input=None, other=np.zeros((40, 3))), "no column named 'input'"),
    "wrong dtype": (
        lambda t: _table_file(t, pa.table({"input": _tensor(np.zeros((4, 1, 8, 8), np.float64))})),
        "dtype float64, but model input 'input' wants float32",
    ),
    "wrong shape": (
        lambda t: _table_file(t, pa.table({"input": _tensor(np.zeros((4, 1, 8, 9), np.float32))})),
        "differs from model input 'input' at axis 3 (9 != 8)",
    ),
    "flat list of the wrong size": (
        lambda t: _table_file(t, pa.table({"input": _flat(np.zeros((4, 65), np.float32))})),
        "lists of 65 values, but model input 'input' takes samples of 1x8x8 = 64 values",
    ),
    "null values": (
        lambda t: _table_file(t, pa.table({"input": pa.array([[0.0] * 64, None], type=pa.list_(pa.float32(), 64))})),
        "null value(s) in row group 0",
    ),
    "files with other schemas": (
        _schemas_differ,
        "more.parquet: column 'input' is extension<arrow.fixed_shape_tensor[value_type=double",
    ),
    "empty folder": (lambda t: (t / "empty").mkdir() or t / "empty", "a folder without data files"),
    "not parquet": (
        lambda t: (t / "x.parquet").write_bytes(b"PAR1 but not really") and t / "x.parquet",
        "not a readable Parquet file",
    ),
    "no rows": (
        lambda t: _table_file(t, pa.table({"input": _tensor(np.zeros((1, 1, 8, 8), np.float32))[:0]})),
        "holds no rows",
    ),
    "labels that are not classes": (
        lambda t: _digits(t, labels=np.zeros((40, 2))),
        "want one integer class per sample",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_parquet_dataset_is_one_line_and_exit_2(case, tmp_path):
    make, expected = CASES[case]
    data = make(tmp_path)
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", str(MODEL), "--calib", str(CALIB), "--val", str(data), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dask-quant: error: --val "), result.stderr
    assert expected in lines[0], lines[0]
    assert not out.exists()


def test_lists_of_another_size_than_the_input_are_found_on_a_worker(tmp_path):
    """Their length is not in the schema, and the client reads no rows: the worker that reads them stops
    the run with exit 2 and one error line, nothing written."""
    data = _table_file(tmp_path, pa.table({"input": pa.array([[1.0]] * 4, pa.list_(pa.float32()))}))
    out = tmp_path / "runs"
    args = ["run", str(MODEL), "--calib", str(data), "--out", str(out), "--workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dask-quant: error: ") and "Traceback" not in result.output
    assert "bad.parquet[input]: rows 0..4 hold 1 values each, but model input 'input' takes 1x8x8" in last
    assert not out.exists()


def test_the_readme_examples_write_calibration_sets_that_run(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"  ```python\n(  import numpy as np, pyarrow.*?)  ```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec("\n".join(line[2:] for line in block.splitlines()), {})  # noqa: S102
    for name in ("calib.parquet", "calib-duckdb.parquet"):
        prepared = prepare(RunConfig(model=MODEL, calib=tmp_path / name, prepare=False))
        (chunk,) = dataset_chunks(prepared.calib, 1000)
        assert read_feeds(chunk)["input"].shape == (1000, 1, 8, 8)
        assert _stats(prepared, 300) == _stats(prepared, 1000)


def test_nulls_in_another_column_whose_name_starts_alike_are_not_the_inputs(tmp_path):
    """Columns are matched by their own leaves, not by a dotted prefix ('input.mask' is not 'input')."""
    images = load_arrays(CALIB, ["input"])["input"][:4]
    table = pa.table({"input": _tensor(images), "input.mask": pa.array([1.0, None, 1.0, 1.0], pa.float32())})
    data = _table_file(tmp_path, table)
    prepared = prepare(RunConfig(model=MODEL, calib=data, prepare=False))
    assert prepared.calib.rows == 4


def test_a_dataset_rewritten_while_it_is_checked_is_refused(tmp_path, monkeypatch):
    from dask_quant.pipeline import parquet_inputs
    from dask_quant.tasks.errors import InputError

    folder = _digits(tmp_path)
    real = parquet_inputs.fingerprint

    def rewritten_first(path, where):  # another job writes a file between the footers and the fingerprint
        pq.write_table(pa.table({"input": _tensor(np.zeros((4, 1, 8, 8), np.float32))}), folder / "late.parquet")
        return real(path, where)

    monkeypatch.setattr(parquet_inputs, "fingerprint", rewritten_first)
    with pytest.raises(InputError, match="changed while it was being checked"):
        prepare(RunConfig(model=MODEL, calib=folder, prepare=False))
