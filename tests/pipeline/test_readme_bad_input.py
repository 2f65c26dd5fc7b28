"""The README's bad-input table lists every tested case, with the message the test expects."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_bad_input import CASES as RUN_CASES  # noqa: E402
from test_parquet_inputs import CASES as PARQUET_CASES  # noqa: E402

CASES = {**RUN_CASES, **{f"Parquet: {name}": case for name, case in PARQUET_CASES.items()}}

README = HERE.parents[1] / "README.md"
TESTED_ELSEWHERE = {  # tests/cluster/*, tests/tasks/test_sessions.py, test_bad_input's own functions
    "model ONNX Runtime refuses (found on a worker)",
    "--resume with --out at a URL",  # test_bad_input's OUT_AT_A_URL: --out given twice would take the last
    "--out at a URL without its backend",
    "--out at a URL runs cannot be published to",
    "model at a URL with external data",  # tests/pipeline/test_remote_out.py
    "store without credentials (found on the client or a worker)",  # tests/cluster/test_object_storage.py
    "NaN or infinity in the data (found on a worker)",
    "output directory not writable",
    "TLS scheduler without --tls-ca-file",
    "unreachable scheduler",
    "scheduler with no workers",
    "not a run directory (dask-quant report)",
    "workers without compatible packages",
    "activation overflowing to infinity (found on a worker)",  # tests/cluster/test_exported_models.py, as below
    "values ONNX Runtime fails on (found on a worker)",
    "labels outside the classes (found on a worker)",
    "gate: quantizer inserted nothing",
    "gate: weights left in FP32",
    "gate: INT8 model ONNX Runtime cannot load",  # tests/pipeline/test_gate.py, as the next
    "gate: INT8 outputs not finite",
    "array header that does not match its bytes",  # tests/tasks/test_npy_io.py, as the next
    "corrupt .npz (zip structure or CRC)",  # and tests/pipeline/test_corrupt_data.py
    "data file changed during the run (found on a worker)",  # tests/pipeline/test_files_that_change.py
    "model over 2 GiB below opset 13",  # tests/cluster/test_large_models.py
    "per-channel below opset 13 with --no-prepare",  # tests/cluster/test_exported_models.py, as the next
    "an infinite tensor the model itself makes (found on a worker)",
    "Parquet: lists of another size than the input's (found on a worker)",  # tests/pipeline/test_parquet_inputs.py
    "lead output validation cannot compare",  # tests/cluster/test_exported_models.py, as the next
    "external data file missing",
    "external data outside the model's folder",
    "an output that is an input passed through",
    "leading with an output whose rows are not samples (found on a worker)",
}


def _table() -> dict[str, str]:
    text = README.read_text()
    section = text[text.index("## Bad input") :]
    section = section[: section.index("\n## ", 1)]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {name.strip(): message.strip().strip("`") for name, message in rows[1:]}


def test_every_case_is_in_the_table_with_its_message():
    table = _table()
    assert set(table) == set(CASES) | TESTED_ELSEWHERE
    for name, (_, expected) in CASES.items():
        assert expected in table[name], (name, expected)
    assert len(table) >= 15
