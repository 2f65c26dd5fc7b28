"""dask-quant as users get it: a wheel without the editable install, run where their own modules live.

The repository keeps `pipeline/`, `tasks/`, `cluster/` and `data/` at its top, but pyproject maps them
into ONE import package, `dask_quant`. These tests check that the mapping holds outside the source tree:
a built wheel holds only `dask_quant/...` (plus its .dist-info) and runs from a fresh venv, and a user's
own `pipeline.py`, `tasks.py` or `cluster.py` in the working directory (which `python -m` puts first on
sys.path) never shadows the package, neither in the client nor in real `dask scheduler`/`dask worker`
processes started there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from processes import dask_processes

REPO = Path(__file__).resolve().parents[2]
SHADOWS = ("pipeline.py", "tasks.py", "cluster.py")
# Subprocesses see neither the outer venv nor the source tree unless a test gives it to them.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _user_folder(folder: Path) -> Path:
    """A working directory holding modules named like the package's parts, each failing on import."""
    folder.mkdir()
    for name in SHADOWS:
        (folder / name).write_text('raise ImportError("user file imported")\n')
    return folder


def _run(*args, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def _published_models(out: Path) -> list[Path]:
    return sorted(out.glob("*/model.int8.onnx"))


def test_wheel_installs_one_package_and_runs(tmp_path):
    # Built from a copy so the build/ and .egg-info it writes stay out of the (shared) source tree.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "tests", "benchmarks")
    shutil.copytree(REPO, source, ignore=skip)
    wheels = tmp_path / "wheels"
    pip_wheel = ("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, source)
    built = _run(sys.executable, *pip_wheel)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("dask_quant-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    (dist_info,) = tops - {"dask_quant"}
    assert dist_info.startswith("dask_quant-") and dist_info.endswith(".dist-info"), tops
    assert "dask_quant/data/digits_cnn.onnx" in names

    fresh = tmp_path / "fresh"
    made = _run(sys.executable, "-m", "venv", fresh)
    assert made.returncode == 0, made.stderr
    python = fresh / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # The outer venv's dependencies as a plain sys.path entry: its editable-install .pth is not processed.
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    user = _user_folder(tmp_path / "user")
    assert _run(python, "-c", "import dask_quant", cwd=user).returncode != 0, "dask_quant importable before install"
    assert _run(python, "-c", "import onnxruntime, distributed", cwd=user).returncode == 0

    # pip sees the outer editable dask-quant's metadata through outer.pth; --ignore-installed keeps it from
    # even trying to uninstall that one (it refuses anyway: "outside environment").
    installed = _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel)
    assert installed.returncode == 0, installed.stderr
    where = _run(python, "-c", "import dask_quant.pipeline; print(dask_quant.pipeline.__file__)", cwd=user)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(fresh)

    helped = _run(python, "-m", "dask_quant", "--help", cwd=user)
    assert helped.returncode == 0, helped.stderr
    assert "Usage: dask-quant" in helped.stdout
    ran = _run(fresh / "bin" / "dask-quant", "run", "--out", tmp_path / "runs", "--workers", "1", cwd=user)
    assert ran.returncode == 0, ran.stderr
    assert len(_published_models(tmp_path / "runs")) == 1


def test_real_processes_in_directory_with_user_modules(tmp_path):
    user = _user_folder(tmp_path / "user")  # the scheduler, the worker and the job all start here
    with dask_processes(tmp_path, workers=1, cwd=user) as dask:
        job = ("-m", "dask_quant", "run", "--scheduler-file", dask.scheduler_file, "--out", tmp_path / "runs")
        proc = _run(sys.executable, *job, cwd=user)
        assert proc.returncode == 0, proc.stderr
        assert [process.poll() for process in (dask.scheduler, *dask.workers)] == [None, None]
    assert len(_published_models(tmp_path / "runs")) == 1
