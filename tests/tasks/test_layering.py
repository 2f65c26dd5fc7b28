"""tasks/ must not import dask or distributed (it runs on workers as plain functions)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

TASKS = Path(__file__).resolve().parents[2] / "tasks"


def test_no_dask_import_in_tasks_source():
    offenders = []
    for path in TASKS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"dask", "distributed"}]
    assert offenders == []


def test_importing_every_task_module_loads_no_dask():
    modules = sorted(p.stem for p in TASKS.glob("*.py") if p.stem != "__init__")
    code = "import sys\n" + "".join(f"import tasks.{m}\n" for m in modules)
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
