"""The zoo's verdict on a night's rows, without running any model: what alerts, what a night compares with."""

from __future__ import annotations

import math

from dask_quant.pipeline.zoo_history import last_good
from dask_quant.pipeline.zoo_rows import is_alert, summary_lines


def _row(tmp_path, night: str, lead_value: float | None, key: str = "k", **fields) -> dict:
    run_dir = tmp_path / night
    run_dir.mkdir(exist_ok=True)
    (run_dir / "run.json").write_text("{}")
    return {
        "model": "m", "method": "minmax", "lead": "cosine", "key": key, "status": "ok", "error": None,
        "reused": False, "regression": False, "nondeterministic": False, "lead_value": lead_value,
        "lead_change": None, "previous_lead_value": None, "run_dir": str(run_dir), **fields,
    }  # fmt: skip


def test_a_broken_int8_model_alerts_every_night_and_is_no_baseline(tmp_path):
    """A NaN lead value is a broken INT8 model (collapsed, or inf/NaN where FP32 is finite): it alerts even
    on its first night and when reused, and later nights compare with the last night that was not broken."""
    good = _row(tmp_path, "n1", 0.99, key="a")
    broken = _row(tmp_path, "n2", math.nan, key="b")
    assert not is_alert(good) and is_alert(broken) and is_alert(broken | {"reused": True})
    assert is_alert(_row(tmp_path, "n3", None)) is False  # a metric that cannot be measured is no fault
    history = [good, broken]
    assert last_good(history, "m", "minmax") is good  # the baseline to compare with
    assert last_good(history, "m", "minmax", key="b") is broken  # reused as it is: it alerts again
    lines = summary_lines([broken])
    assert lines[1].endswith("BROKEN") and "its INT8 output collapsed or is inf/NaN" in lines[2]
