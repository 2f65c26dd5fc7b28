"""--chunk-size auto: rows from the activations of one row and a worker thread's memory."""

from __future__ import annotations

import pytest
from models import digits_paths

from dask_quant.pipeline.chunking import MAX_ROWS, MEMORY_SHARE, activation_bytes_per_row, auto_chunk
from dask_quant.pipeline.cli_options import chunk_rows
from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.stages.prepare import prepare
from dask_quant.tasks.errors import InputError

MODEL, CALIB, _ = digits_paths()
MiB = 2**20


@pytest.mark.parametrize(
    ("row_bytes", "memory", "batch", "rows"),
    [
        (8 * MiB, 300 * MiB, None, int(300 * MEMORY_SHARE // 8)),  # 9 rows of 8 MiB in a quarter of 300 MiB
        (8 * MiB, 300 * MiB, 4, 8),  # whole batches of the size the model fixes
        (8 * MiB, 300 * MiB, 16, 16),  # at least one batch, even above the share
        (600 * MiB, 300 * MiB, None, 1),  # at least one row
        (1024, 1 << 30, None, MAX_ROWS),  # a small model: the most auto chooses
        (1024, 1 << 30, 3, 66),  # ... rounded up to whole batches, as the fixed default was
        (None, 1 << 30, None, MAX_ROWS),  # shapes unknown
        (8 * MiB, None, None, MAX_ROWS),  # no memory limit
    ],
)
def test_auto_chunk_rows(row_bytes, memory, batch, rows):
    assert auto_chunk(row_bytes, memory, batch).rows == rows


def test_activation_bytes_of_one_row_come_from_the_prepared_shapes(tmp_path):
    prepared = prepare(RunConfig(model=MODEL, calib=CALIB, out=tmp_path))
    # conv 16x8x8 + relu, conv 32x4x4 + relu, ..., logits 10: float32 each (the digits CNN's value_info)
    assert prepared.row_bytes == activation_bytes_per_row(prepared.proto) and 1000 < prepared.row_bytes < 100_000
    assert prepare(RunConfig(model=MODEL, calib=CALIB, prepare=False)).row_bytes is None  # no shapes as given
    prepared.discard()


@pytest.mark.parametrize(("given", "rows"), [("auto", None), ("AUTO", None), (None, None), ("12", 12)])
def test_chunk_size_option(given, rows):
    assert chunk_rows(given) == rows


def test_a_chunk_size_that_is_neither_rows_nor_auto_is_refused():
    with pytest.raises(InputError, match="--chunk-size 'many': pass a number of rows or auto"):
        chunk_rows("many")
