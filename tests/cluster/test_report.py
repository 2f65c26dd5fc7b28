"""The report: made from a run directory, loads in headless Chromium with every chart, and a screenshot."""

from __future__ import annotations

import base64
import os
import re

import pytest
from click.testing import CliRunner
from distributed import Client
from models import digits_paths

from dask_quant.pipeline import results
from dask_quant.pipeline.cli import main
from dask_quant.pipeline.config import QuantConfig, RunConfig
from dask_quant.pipeline.job import run
from dask_quant.pipeline.report import REPORT_FILE
from dask_quant.pipeline.screenshot import BROWSERS, run_headless

MODEL, CALIB, VAL = digits_paths()


def _chromium_available() -> bool:
    import shutil

    return any(shutil.which(name) for name in BROWSERS)


needs_chromium = pytest.mark.skipif(
    not _chromium_available() and not os.environ.get("CI"),  # CI installs it: there a missing browser fails
    reason="Chromium is not installed (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    with Client(processes=False, n_workers=1, dashboard_address=":0") as client:
        config = RunConfig(model=MODEL, calib=CALIB, val=VAL, out=out, quant=QuantConfig(method="entropy"))
        return run(config, client=client).run_dir


def test_every_run_writes_a_self_contained_report(run_dir):
    page = (run_dir / REPORT_FILE).read_text()
    for heading in ("Per-layer error", "Activation histograms of the worst layers", "Configuration"):
        assert heading in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from anywhere
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5  # the SQNR chart and four histograms
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in images)
    assert "entropy" in page and "top-1 agreement" in page


@needs_chromium
def test_report_loads_in_headless_chromium_with_all_images(run_dir):
    proc = run_headless(run_dir / REPORT_FILE, "--virtual-time-budget=10000", "--dump-dom")
    assert proc.returncode == 0, proc.stderr
    assert 'data-images="ok 5"' in proc.stdout
    assert "Uncaught" not in proc.stderr


@needs_chromium
def test_report_command_rewrites_the_page_and_takes_a_screenshot(run_dir, tmp_path):
    shot = tmp_path / "report.png"
    result = CliRunner().invoke(main, ["report", str(run_dir), "--screenshot", str(shot)])
    assert result.exit_code == 0, result.output
    header = shot.read_bytes()[:24]
    assert header.startswith(b"\x89PNG") and int.from_bytes(header[16:20], "big") == 1100


def test_report_of_a_folder_that_is_not_a_run_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"dask-quant: error: {tmp_path}: not a dask-quant run directory (no {results.RUN_FILE}); "
        "pass a folder under --out"
    )
