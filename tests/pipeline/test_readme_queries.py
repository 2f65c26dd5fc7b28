"""The README's query examples run as written against real run directories."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from models import digits_paths

from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.job import run

README = Path(__file__).resolve().parents[2] / "README.md"


def _query_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Querying results") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    from distributed import Client

    root = tmp_path_factory.mktemp("readme")
    model, calib, val = digits_paths()
    out = root / "dask-quant-runs"
    with Client(processes=False, n_workers=1, dashboard_address=":0") as client:
        for chunk_size in (50, 120):
            run(RunConfig(model=model, calib=calib, val=val, out=out, chunk_size=chunk_size), client)
    return root


@pytest.mark.parametrize("index", [0, 1], ids=["pandas", "duckdb"])
def test_readme_query_runs(index, runs_dir, monkeypatch):
    blocks = _query_blocks()
    assert len(blocks) == 2
    monkeypatch.chdir(runs_dir)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(blocks[index], f"README query {index}", "exec"), {})
    output = printed.getvalue()
    assert len(set(re.findall(r"digits_cnn-\S+", output))) == 2  # both runs appear
