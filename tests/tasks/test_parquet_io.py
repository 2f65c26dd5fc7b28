"""Parquet rows as workers read them: the rows asked for, equal to numpy's slice, whatever files and row
groups they lie in; bad values refused with one message."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dask_quant.tasks import parquet_io
from dask_quant.tasks.digest import identity, sha256_file, tree_files
from dask_quant.tasks.errors import InputError

ROWS = 53
VALUES = np.arange(ROWS * 6, dtype=np.float32).reshape(ROWS, 2, 3) - 100


def _column(kind: str, values: np.ndarray) -> pa.Array:
    if kind == "tensor":
        return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values))
    if kind == "nested":
        return pa.array(values.tolist(), type=pa.list_(pa.list_(pa.float32(), 3), 2))
    if kind == "flat":
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 6)
    return pa.array(values[:, 0, 0])  # "number": one value per row


def _dataset(folder, kind: str):
    """VALUES in three files of a hive-partitioned folder, row groups of 7 rows, plus files to skip."""
    bounds = [0, 20, 21, ROWS]
    for part, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        (folder / f"part={part}").mkdir(parents=True)
        table = pa.table({"x": _column(kind, VALUES[start:stop]), "y": pa.array(np.arange(start, stop))})
        pq.write_table(table, folder / f"part={part}" / "data.parquet", row_group_size=7)
    (folder / "_SUCCESS").write_text("")
    (folder / "part=0" / ".data.parquet.crc").write_bytes(b"\0")
    return folder


@pytest.mark.parametrize("kind", ["tensor", "nested", "flat", "number"])
def test_any_row_range_reads_what_numpy_slices(tmp_path, kind):
    folder = _dataset(tmp_path / "d", kind)
    expected = {"tensor": VALUES, "nested": VALUES, "flat": VALUES.reshape(ROWS, 6), "number": VALUES[:, 0, 0]}[kind]
    schema = pq.read_schema(tree_files(folder)[0])
    info = parquet_io.column_info(schema.field("x").type, "x")
    assert info == parquet_io.ColumnInfo("<f4", expected.shape[1:])
    for start, stop in [(0, ROWS), (0, 1), (5, 9), (6, 8), (19, 22), (20, 21), (13, 50), (52, 53)]:
        rows = parquet_io.read_rows(str(folder), "x", start, stop)
        assert rows.dtype == np.float32 and rows.shape == expected[start:stop].shape
        assert np.array_equal(rows, expected[start:stop]), (start, stop)
    assert np.array_equal(parquet_io.read_rows(str(folder), "y", 17, 30), np.arange(17, 30))


def test_a_single_file_is_a_dataset(tmp_path):
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"x": _column("tensor", VALUES)}), path, row_group_size=10)
    assert parquet_io.parquet_files(path) == [str(path)]
    assert np.array_equal(parquet_io.read_rows(str(path), "x", 9, 31), VALUES[9:31])


def test_rows_past_the_end_are_an_error(tmp_path):
    folder = _dataset(tmp_path / "d", "number")
    with pytest.raises(InputError, match="rows 50..60 are not all there"):
        parquet_io.read_rows(str(folder), "x", 50, 60)


def test_null_values_are_refused_where_they_are(tmp_path):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"x": pa.array([1.0, None, 3.0], pa.float32())}), path, write_statistics=False)
    with pytest.raises(InputError, match=r"nulls.parquet\[x\] \(row group 0\): 1 null value"):
        parquet_io.read_rows(str(path), "x", 0, 3)
    lists = tmp_path / "null-lists.parquet"
    column = pa.array([[1.0, 2.0], None], type=pa.list_(pa.float32(), 2))
    pq.write_table(pa.table({"x": column}), lists, write_statistics=False)
    with pytest.raises(InputError, match="null value"):
        parquet_io.read_rows(str(lists), "x", 0, 2)


@pytest.mark.parametrize(
    ("arrow_type", "message"),
    [
        (pa.string(), "not numbers"),
        (pa.struct([("a", pa.float32())]), "not numbers"),
        (pa.fixed_shape_tensor(pa.float32(), [2, 3], permutation=[1, 0]), "permutation"),
    ],
)
def test_columns_that_are_not_fixed_shape_numbers_are_refused(arrow_type, message):
    with pytest.raises(InputError, match=message):
        parquet_io.column_info(arrow_type, "where")


def test_variable_length_lists_are_read_when_every_row_has_one_length(tmp_path):
    path = tmp_path / "lists.parquet"
    rows = VALUES.tolist()  # nested lists: what DuckDB's FLOAT[3][2] and Spark's arrays are in Parquet
    pq.write_table(pa.table({"x": pa.array(rows, pa.list_(pa.list_(pa.float32())))}), path, row_group_size=10)
    assert parquet_io.column_info(pq.read_schema(path).field("x").type, "x").dims == (None, None)
    assert np.array_equal(parquet_io.read_rows(str(path), "x", 7, 29), VALUES[7:29])
    uneven = tmp_path / "uneven.parquet"
    pq.write_table(pa.table({"x": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))}), uneven)
    with pytest.raises(InputError, match=r"lists of different lengths \(2 and 1\)"):
        parquet_io.read_rows(str(uneven), "x", 0, 2)


def test_lists_of_another_length_in_the_next_row_group_are_one_error(tmp_path):
    """A chunk across two row groups whose plain lists differ in length (each group even by itself)."""
    path = tmp_path / "lengths.parquet"
    with pq.ParquetWriter(path, pa.schema([("x", pa.list_(pa.float32()))])) as writer:
        for length in (63, 65):
            writer.write_table(pa.table({"x": pa.array([[1.0] * length] * 10, pa.list_(pa.float32()))}))
    with pytest.raises(InputError, match=r"rows 5..15 hold values of shapes \(63,\) and \(65,\)"):
        parquet_io.read_rows(str(path), "x", 5, 15)


def test_files_follow_in_the_order_pyarrow_dataset_lists_them(tmp_path):
    import pyarrow.dataset as ds

    for name in ("part/x.parquet", "part-1.parquet", "a=2/y.parquet", "a=10/z.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"x": [1.0]}), tmp_path / name)
    assert parquet_io.parquet_files(tmp_path) == sorted(ds.dataset(tmp_path, format="parquet").files)


def test_a_file_that_is_not_parquet_is_one_error(tmp_path):
    folder = _dataset(tmp_path / "d", "number")
    (folder / "part=2" / "notes.txt").write_text("not parquet")
    with pytest.raises(InputError, match=r"notes.txt: not a readable Parquet file .*write it again"):
        parquet_io.read_rows(str(folder), "x", 0, ROWS)


def test_a_folder_fingerprint_follows_its_data_files_only(tmp_path):
    folder = _dataset(tmp_path / "d", "number")
    digest, stamp = sha256_file(folder), identity(folder)
    (folder / "_SUCCESS").write_text("written by another job")
    assert (sha256_file(folder), identity(folder)) == (digest, stamp)
    pq.write_table(pa.table({"x": _column("number", VALUES[:3] + 1)}), folder / "part=1" / "data.parquet")
    assert sha256_file(folder) != digest and identity(folder) != stamp
