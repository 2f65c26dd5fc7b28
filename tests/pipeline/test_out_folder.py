"""--out as users (and other runs) leave it: one clear line, never a traceback, nothing left behind."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from dask_quant.pipeline import results
from dask_quant.pipeline.report import write_report
from dask_quant.tasks.errors import InputError


@pytest.mark.parametrize("inner", [results.STAGING, results.WORK])
def test_staging_or_work_that_is_a_file_is_one_clear_error(inner, tmp_path):
    (tmp_path / inner).write_text("not a folder")
    with pytest.raises(InputError, match=rf"{inner} is not a folder; remove it"), results.RunDirectory(tmp_path, "r"):
        pass


def test_out_behind_a_dangling_symlink_is_one_clear_error(tmp_path):
    out = tmp_path / "runs"
    out.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"--out .*runs: cannot create"), results.RunDirectory(out, "r"):
        pass
    assert out.is_symlink() and not (tmp_path / "nowhere").exists()


def test_out_under_proc_is_one_clear_error():
    with pytest.raises(InputError, match=r"--out /proc/dask-quant-runs"), results.RunDirectory(
        Path("/proc/dask-quant-runs"), "r"
    ):
        pass


def test_a_very_long_model_name_gives_a_run_id_that_fits_a_file_name(tmp_path):
    run_id = results.new_run_id(Path("m" * 400 + ".onnx"), "minmax")
    with results.RunDirectory(tmp_path, run_id) as run:
        assert run.tmp.is_dir() and len(run_id.encode()) < 255


def test_staging_removed_by_a_concurrent_run_between_two_mkdirs_is_created_again(tmp_path, monkeypatch):
    real = Path.mkdir
    raced = []

    def mkdir(self, *args, **kwargs):
        if self.name == "r" and not raced:  # the other run just removed the empty .staging
            raced.append(self)
            raise FileNotFoundError(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with results.RunDirectory(tmp_path, "r") as run:
        assert raced and run.tmp.is_dir()


def test_report_on_a_corrupt_run_json_is_one_clear_error(tmp_path):
    (tmp_path / results.RUN_FILE).write_text('{"run_id": "x", "config": ')
    with pytest.raises(InputError, match=r"run.json: not a run.json dask-quant wrote \(JSONDecodeError\)"):
        write_report(tmp_path)
    (tmp_path / results.RUN_FILE).write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match=r"not a run.json dask-quant wrote \(TypeError\)"):
        write_report(tmp_path)


def test_tensor_names_with_dollar_signs_are_drawn_literally():
    from dask_quant.pipeline import plots

    rows = [
        {"tensor": "a$_$b", "op_type": "Conv", "sqnr_db": 12.0},  # both crash matplotlib's math parser
        {"tensor": "$\\nope{$", "op_type": "Add", "sqnr_db": 30.0},
    ]
    assert plots.sqnr_chart(rows)  # matplotlib would parse $...$ as math and fail on it


def test_a_row_column_missing_from_the_schema_is_an_error_not_a_silent_drop(tmp_path):
    from dask_quant.pipeline.outputs import LAYERS, ParquetFile
    from dask_quant.tasks.errors import DaskQuantError

    with pytest.raises(DaskQuantError, match=r"layers.parquet: the rows have columns its schema lacks: surprise"):
        ParquetFile(LAYERS.name, LAYERS.schema, list).write(tmp_path, "run", [{"tensor": "t", "surprise": 1}])
    assert not (tmp_path / LAYERS.name).exists()


def test_a_failed_run_leaves_a_sibling_run_in_a_parent_both_created(tmp_path):
    """Two runs into new sibling folders (the zoo's OUT/runs/A and OUT/runs/B): the one that fails removes
    the folders it created only while they are empty, never the other run's staging (rmtree did)."""
    from dask_quant.pipeline.results import RunDirectory

    parent = tmp_path / "runs"
    failing, working = RunDirectory(parent / "a", "run-a"), RunDirectory(parent / "b", "run-b")
    with contextlib.suppress(RuntimeError), failing:
        with working:
            (working.tmp / "model.int8.onnx").write_bytes(b"x")
            published = working.publish()
        raise RuntimeError
    assert (published / "model.int8.onnx").is_file()
    assert not (parent / "a").exists() and parent.is_dir()
