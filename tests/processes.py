"""Run the real `dask-quant` entry point in a child process."""

from __future__ import annotations

import subprocess
import sys


def dask_quant(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`dask-quant ARGS...` as a user would run it; the timeout only guards against a hang."""
    command = [sys.executable, "-m", "pipeline.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
