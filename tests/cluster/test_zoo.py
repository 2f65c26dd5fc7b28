"""`zoo run`: every model x method on one cluster, reuse by content key, a history with no duplicates,
and regressions that exit 1 and name what moved."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from distributed import Client, LocalCluster
from processes import start_dask_quant

from dask_quant.pipeline.builtin import CALIB, MODEL, VAL, builtin_path
from dask_quant.pipeline.zoo import ZooConfig, zoo_run
from dask_quant.pipeline.zoo_history import read_history


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        yield c


def _data(folder, start: int, rows: int = 100):
    """Digits calibration and validation files of `rows` rows from `start` (other rows: other data)."""
    calib, val = np.load(builtin_path(CALIB)), np.load(builtin_path(VAL))
    np.save(folder / "calib.npy", calib[start : start + rows])
    np.savez(folder / "val.npz", input=val["input"][:rows], labels=val["labels"][:rows])
    return folder / "calib.npy", folder / "val.npz"


def _manifest(folder, models: dict[str, str]) -> object:
    """A manifest of digits models: name -> extra TOML lines (methods, quant options)."""
    text = ""
    for name, extra in models.items():
        data = folder / name
        data.mkdir(exist_ok=True)
        if not (data / "calib.npy").exists():
            _data(data, 0)
        text += (
            f'[[model]]\nname = "{name}"\nmodel = "{builtin_path(MODEL)}"\ncalib = "{name}/calib.npy"\n'
            f'val = "{name}/val.npz"\nchunk_size = 50\nlead = "cosine"\nmax_drop = 0.005\n{extra}\n'
        )
    (folder / "zoo.toml").write_text(text)
    return folder / "zoo.toml"


def _night(manifest, out, client, night, **options):
    lines = []
    result = zoo_run(ZooConfig(manifest, out, night=night, **options), client=client, log=lines.append)
    return result, lines


def _readme_block() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("## Nightly zoo") :]
    return re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 1)], flags=re.S)[0]


def test_a_zoo_reuses_what_did_not_change_and_reruns_what_did(tmp_path, client, monkeypatch):
    manifest = _manifest(tmp_path, {"a": 'methods = ["minmax", "entropy"]', "b": 'methods = ["minmax"]'})
    out = tmp_path / "dask-quant-zoo"
    first, _ = _night(manifest, out, client, "2026-01-01")
    assert first.exit_code == 0
    assert [(r["model"], r["method"], r["status"], r["reused"]) for r in first.rows] == [
        ("a", "minmax", "ok", False),
        ("a", "entropy", "ok", False),
        ("b", "minmax", "ok", False),
    ]
    assert all(0.99 < r["lead_value"] <= 1 for r in first.rows)

    again, lines = _night(manifest, out, client, "2026-01-01")  # the same night again: nothing new to record
    assert again.exit_code == 0 and again.history_file is None and all(r["reused"] for r in again.rows)
    assert not any("requantizing" in line for line in lines)

    _data(tmp_path / "b", 100)  # b's calibration data changes: only b runs again
    third, lines = _night(manifest, out, client, "2026-01-02")
    assert third.exit_code == 0
    assert [(r["model"], r["reused"]) for r in third.rows] == [("a", True), ("a", True), ("b", False)]
    assert [line for line in lines if "requantizing" in line] == ["requantizing 1 model(s), 1 at a time: b (1)"]
    assert json.loads(third.rows[2]["changed"]) == ["calib"]

    history = ds.dataset(out / "history", partitioning="hive").to_table().to_pandas()
    assert len(history) == 6  # 3 rows a night, the repeated night added none
    assert sorted(history["date"].astype(str).unique()) == ["2026-01-01", "2026-01-02"]
    assert not history.duplicated(["date", "model", "method"]).any()
    assert (out / "history" / "date=2026-01-01").is_dir() and len(list((out / "history").glob("*/part-*"))) == 2

    monkeypatch.chdir(tmp_path)  # the README's DuckDB query reads the history as a user would
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(_readme_block(), {})
    shown = printed.getvalue().splitlines()
    assert len(shown) == 7 and shown[0].split()[:4] == ["date", "model", "method", "status"]
    assert shown[-1].split()[:5] == ["2026-01-02", "b", "minmax", "ok", "False"]


def test_a_clipping_percentile_under_the_same_name_is_a_regression_that_names_what_moved(tmp_path, client):
    out = tmp_path / "out"
    good = _manifest(tmp_path, {"digits": 'methods = ["percentile"]\n[model.quant]\npercentile = 99.999'})
    assert _night(good, out, client, "2026-02-01")[0].exit_code == 0
    clipped = _manifest(tmp_path, {"digits": 'methods = ["percentile"]\n[model.quant]\npercentile = 60.0'})
    result, lines = _night(clipped, out, client, "2026-02-02")
    assert result.exit_code == 1
    (row,) = result.rows
    assert row["regression"] and not row["nondeterministic"]
    assert row["lead_change"] < -0.005
    assert json.loads(row["changed"]) == ["config"]
    moved = json.loads(row["moved_tensors"])
    assert moved and all(m["relative_scale_change"] > 0 for m in moved if "relative_scale_change" in m)
    assert moved[0]["tensor"] in lines[-1] and "changed: config" in lines[-1]
    assert "REGRESSION" in "\n".join(lines)
    marked = [r for r in read_history(out) if r["date"] == "2026-02-02"]
    assert [r["regression"] for r in marked] == [True]


def test_identical_reruns_are_deterministic_and_raise_no_alerts(tmp_path, client):
    """Ten nights recomputed from scratch (--force) on unchanged inputs: the same parameters every time."""
    manifest = _manifest(tmp_path, {"digits": 'methods = ["minmax"]'})
    out = tmp_path / "out"
    results = [_night(manifest, out, client, f"2026-03-{day:02d}", force=True)[0] for day in range(1, 11)]
    assert [r.exit_code for r in results] == [0] * 10
    rows = [r.rows[0] for r in results]
    assert not any(r["reused"] for r in rows)
    assert len({r["qparams_sha256"] for r in rows}) == 1 and len({r["lead_value"] for r in rows}) == 1
    assert not any(r["nondeterministic"] or r["regression"] for r in rows)


def test_a_failing_model_is_recorded_and_the_others_finish(tmp_path, client, monkeypatch):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    (tmp_path / "my_builders.py").write_text(
        "def digits(folder):\n"
        f"    print('made in', folder.name)\n    return {{'model': {str(builtin_path(MODEL))!r}, "
        f"'calib': {str(tmp_path / 'good' / 'calib.npy')!r}}}\n"
        "def failing(folder):\n    raise ValueError('no such weights')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    manifest = _manifest(tmp_path, {"good": 'methods = ["minmax"]'})
    text = manifest.read_text() + f'[[model]]\nname = "broken"\nmodel = "{broken}"\ncalib = "good/calib.npy"\n'
    text += '[[model]]\nname = "built"\nbuilder = "my_builders:digits"\n'
    text += '[[model]]\nname = "unbuilt"\nbuilder = "my_builders:failing"\n'
    manifest.write_text(text)
    result, lines = _night(manifest, tmp_path / "out", client, "2026-04-01")
    assert result.exit_code == 1
    statuses = [(r["model"], r["status"]) for r in result.rows]
    assert statuses == [("good", "ok"), ("broken", "error"), ("built", "ok"), ("unbuilt", "error")], result.rows
    assert "broken.onnx" in result.rows[1]["error"]
    assert "builder my_builders:failing failed: ValueError: no such weights" in result.rows[3]["error"]
    assert "[built] builder: made in built" in lines  # a builder's prints join the log
    assert [r["status"] for r in read_history(tmp_path / "out")] == ["ok", "error", "ok", "error"]


def test_two_zoo_runs_at_once_leave_one_history_without_duplicates(tmp_path):
    manifest = _manifest(tmp_path, {"a": 'methods = ["minmax"]', "b": 'methods = ["minmax"]'})
    out = tmp_path / "out"
    args = ("zoo", "run", "--manifest", manifest, "--out", out, "--workers", "1", "--night", "2026-05-01")
    jobs = [start_dask_quant(*args) for _ in range(2)]
    deadline = time.monotonic() + 240
    outputs = [job.communicate(timeout=max(1, deadline - time.monotonic())) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    assert sum("waiting for it to finish" in stderr for _, stderr in outputs) == 1
    history = ds.dataset(out / "history", partitioning="hive").to_table().to_pandas()
    assert sorted(zip(history["model"], history["reused"], strict=True)) == [("a", False), ("b", False)]


def test_the_zoo_page_shows_three_nights_in_headless_chromium(tmp_path, client):
    import shutil

    from dask_quant.pipeline.screenshot import BROWSERS, run_headless

    out = tmp_path / "out"
    manifest = _manifest(tmp_path, {"digits": 'methods = ["minmax"]'})
    pages = [_night(manifest, out, client, f"2026-06-0{day}")[0].report for day in (1, 2, 3)]
    assert pages == [out / "zoo.html"] * 3
    page = pages[0].read_text()
    assert "night of 2026-06-03" in page and "3 night(s) in the history, 2026-06-01 to 2026-06-03" in page
    assert page.count("<tr") == 2 and "reused" in page and 'href="runs/digits/' in page
    if not any(shutil.which(name) for name in BROWSERS):
        pytest.skip("no Chromium: the page is checked as text only")
    proc = run_headless(pages[0], "--virtual-time-budget=10000", "--dump-dom")
    assert proc.returncode == 0, proc.stderr
    assert 'data-images="ok 1"' in proc.stdout  # the trend chart decoded
    assert "Uncaught" not in proc.stderr
