"""Run every benchmark and regenerate their results: benchmarks/README.md and the README's table.

    python benchmarks/run_all.py

Each script runs in its own process, one after another (never two at once on
this 2-core machine). benchmarks/README.md gets the date, machine, commit and
every script's full output; the project README's block between the
`benchmarks:start` and `benchmarks:end` markers gets the lines that state a goal.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPTS = (
    "entropy_speed.py",
    "histogram_speed.py",
    "calibration_memory.py",
    "overhead_scaling.py",
    "tls_overhead.py",
    "end_to_end.py",
    "validation_speed.py",
    "rows_per_run.py",
    "whole_run.py",
    "smoothquant_minilm.py",
    "tune_vs_nncf.py",
    "profile_passes.py",
    "zoo_speed.py",
    "auto_chunks_memory.py",
    "large_model.py",
)
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False)
    return (proc.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _summary(line: str) -> bool:
    """Lines that state a goal, a failure, or a model's or method's end-to-end result."""
    starts = ("minmax ", "percentile ", "entropy ", "method ", "digits:", "minilm:", "detector:", "ceiling:")
    return "goal" in line or "FAILED" in line or line.startswith(starts)


def main() -> None:
    sys.path.insert(0, str(HERE))
    from common import machine_line

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = f"Measured {stamp}, commit {commit()}; {machine_line().removeprefix('machine: ')}."
    sections, goals = [], []
    for script in SCRIPTS:
        print(f"running {script} ...", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if not line.startswith("machine: ")]
        if proc.returncode:
            lines.append(f"FAILED (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        sections.append(f"## {script}\n\n```text\n" + "\n".join(lines) + "\n```\n")
        goals += [f"{script}: {line.strip()}" for line in lines if _summary(line)]
    (HERE / "README.md").write_text(
        "# Benchmark results\n\nRegenerate with `python benchmarks/run_all.py` (every script's docstring says "
        f"what it measures).\n\n{header}\n\n" + "\n".join(sections)
    )
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{START}\n{header}\n\n```text\n" + "\n".join(goals) + f"\n```\n{END}"
    readme.write_text(text[: text.index(START)] + block + text[text.index(END) + len(END) :])
    print("\n".join(goals))


if __name__ == "__main__":
    main()
