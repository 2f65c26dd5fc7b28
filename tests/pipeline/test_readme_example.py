"""The README's Python example, run as a user would: from a folder holding their own pipeline.py, tasks.py
and cluster.py, which must not shadow dask_quant's packages (on the client or on the workers it starts)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- example: tests/pipeline/test_readme_example.py runs this block -->")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_readme_python_example_runs_beside_users_modules(tmp_path):
    for name in ("pipeline", "tasks", "cluster"):
        (tmp_path / f"{name}.py").write_text('raise ImportError("the user\'s own module was imported")\n')
    (tmp_path / "example.py").write_text(readme_example())
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("minmax agreement ") and lines[1].startswith("entropy agreement ")
    assert "activations quantized, /8/Gemm kept in FP32" in lines[2]
    runs = sorted(p.name for p in (tmp_path / "dask-quant-runs").iterdir())
    assert len(runs) == 3 and (tmp_path / "again.int8.onnx").is_file()
