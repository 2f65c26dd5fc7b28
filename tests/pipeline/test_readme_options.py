"""Every option of `dask-quant run` is documented in the README, and the table lists no other."""

from __future__ import annotations

import re
from pathlib import Path

from dask_quant.pipeline.cli import run

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_option_table_matches_the_cli():
    cli = {opt for param in run.params for opt in param.opts + param.secondary_opts if opt.startswith("--")}
    table = [line for line in README.read_text().splitlines() if line.startswith("| `--")]
    documented = {opt for line in table for opt in re.findall(r"--[a-z0-9-]+", line.split("|")[1])}
    data_options = {"--calib", "--val"}  # described in the paragraph above the table
    assert documented == cli - data_options
    assert all(f"`{opt}" in README.read_text() or opt in README.read_text() for opt in data_options)
