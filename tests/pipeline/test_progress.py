"""Progress lines when stderr is not a terminal, and the one rule that counts chunks."""

from __future__ import annotations

from dask_quant.pipeline.inputs import DatasetSpec
from dask_quant.pipeline.progress import Progress
from dask_quant.pipeline.records import data_record


def test_plain_lines_report_chunks_done_of_total():
    lines: list[str] = []
    Progress(lines.append, terminal=False, interval=0.0).track(iter(range(4)), 4, "pass 1 (ranges)")
    assert [line.rsplit(" (", 1)[0] for line in lines] == [
        "pass 1 (ranges): 1/4 chunks",
        "pass 1 (ranges): 2/4 chunks",
        "pass 1 (ranges): 3/4 chunks",
    ]  # nothing once all are done: the next stage line follows
    assert all("chunks/s" in line for line in lines)


def test_no_line_before_the_interval_passes():
    lines: list[str] = []
    Progress(lines.append, terminal=False, interval=3600.0).track(iter(range(50)), 50, "validation")
    assert lines == []


def test_run_json_counts_chunks_as_the_tasks_do():
    """301 rows in chunks of 300: the lone last row joins the chunk before, so one chunk (not two)."""
    spec = DatasetSpec("calib.npz", (("input", "input"),), 301, "0" * 64)
    assert data_record(spec, 300)["chunks"] == 1
    assert data_record(spec, 100)["chunks"] == 3
