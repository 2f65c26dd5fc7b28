"""Row reads from .npy/.npz read exactly numpy's slice, and refuse what they cannot read safely."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dask_quant.tasks.chunks import ChunkRef, chunk_refs, read_feeds
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.npy_io import NPY_MEMBER, array_info, is_compressed, member_names, read_rows


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=(23, 3, 4)).astype(np.float32), "b": rng.integers(0, 9, size=(23,)).astype(np.int64)}


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "deflated"])
@pytest.mark.parametrize(("start", "stop"), [(0, 23), (0, 1), (5, 17), (22, 23), (20, 40)])
def test_npz_rows_equal_numpy_slice(tmp_path, arrays, save, start, stop):
    path = tmp_path / "d.npz"
    save(path, **arrays)
    assert member_names(str(path)) == ["a", "b"]
    assert is_compressed(str(path), "a") == (save is np.savez_compressed)
    for name, array in arrays.items():
        assert np.array_equal(read_rows(str(path), name, start, stop), array[start:stop])


def test_npy_rows_and_header(tmp_path, arrays):
    path = tmp_path / "d.npy"
    np.save(path, arrays["a"])
    info = array_info(str(path), NPY_MEMBER)
    assert info.shape == (23, 3, 4) and np.dtype(info.dtype) == np.float32
    assert np.array_equal(read_rows(str(path), NPY_MEMBER, 7, 9), arrays["a"][7:9])


def test_chunks_cover_rows_once(tmp_path, arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    chunks = chunk_refs(str(path), (("x", "a"),), 23, 5)
    assert [(c.start, c.stop) for c in chunks] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    joined = np.concatenate([read_feeds(c)["x"] for c in chunks])
    assert np.array_equal(joined, arrays["a"])


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "o.npy"
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=re.escape("holds Python objects")):
        read_rows(str(path), NPY_MEMBER, 0, 1)


def test_truncated_file_is_reported(tmp_path, arrays):
    path = tmp_path / "t.npy"
    np.save(path, arrays["a"])
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(InputError, match="truncated"):
        read_rows(str(path), NPY_MEMBER, 0, 23)


def test_chunk_ref_is_plain_picklable_data():
    import pickle

    ref = ChunkRef("x.npz", (("in", "in"),), 0, 4, 0, "labels")
    assert pickle.loads(pickle.dumps(ref)) == ref


def test_big_endian_rows_come_back_native(tmp_path, arrays):
    path = tmp_path / "be.npy"
    np.save(path, arrays["a"].astype(">f4"))
    rows = read_rows(str(path), NPY_MEMBER, 2, 5)
    assert rows.dtype == np.dtype("=f4") and np.array_equal(rows, arrays["a"][2:5])


@pytest.mark.parametrize(
    ("rows", "size", "bounds"),
    [
        (65, 64, [(0, 65)]),
        (129, 64, [(0, 64), (64, 129)]),
        (130, 64, [(0, 64), (64, 128), (128, 130)]),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),
        (1, 64, [(0, 1)]),
    ],
)
def test_a_last_row_left_alone_joins_the_chunk_before(rows, size, bounds):
    """ORT's one-row kernels can round differently: no chunk has one row unless asked (--chunk-size 1)."""
    chunks = chunk_refs("x.npy", (("input", NPY_MEMBER),), rows, size)
    assert [(c.start, c.stop) for c in chunks] == bounds
    assert [c.index for c in chunks] == list(range(len(bounds)))


def test_constants_keep_their_rank_zero(tmp_path):
    from dask_quant.tasks.feeding import Constant, Feeding
    from dask_quant.tasks.npy_io import read_whole

    path = tmp_path / "c.npz"
    np.savez(path, sr=np.array(16000.0, np.float32), table=np.arange(6, dtype=np.int64).reshape(2, 3))
    assert read_whole(str(path), "sr").shape == () and read_whole(str(path), "table").shape == (2, 3)
    feeds = Feeding(constants=(Constant.of("sr", np.array(2.0, np.float32)),)).to_model({})
    assert feeds["sr"].shape == () and feeds["sr"] == 2.0


def test_a_member_whose_header_claims_more_rows_is_refused_not_read_past_its_end(tmp_path):
    from dask_quant.tasks.errors import InputError
    from dask_quant.tasks.npy_io import array_info, read_rows

    path = tmp_path / "d.npz"
    np.savez(path, input=np.zeros((10, 4), np.float32), other=np.full((10, 4), 3e37, np.float32))
    data = path.read_bytes()
    claim = b"(10, 4)"
    assert data.count(claim) == 2
    path.write_bytes(data.replace(claim, b"(20, 4)", 1))  # same length: only the header lies
    message = r"\[input\]: its header says shape \(20, 4\) \(320 bytes of data\), but it holds 160"
    with pytest.raises(InputError, match=message):
        array_info(str(path), "input")
    with pytest.raises(InputError, match=message):
        read_rows(str(path), "input", 10, 20)
