"""Ctrl-C or SIGTERM mid-run: exit 130, one line, nothing left under --out."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from models import digits_paths
from processes import start_dask_quant, wait_for_calibration

from dask_quant.pipeline.workarea import WORK

MODEL, CALIB, _ = digits_paths()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_writes_nothing(tmp_path, signum):
    big = tmp_path / "big.npy"
    np.save(big, np.tile(np.load(CALIB), (200, 1, 1, 1)))  # 60,000 rows: long enough to interrupt
    out = tmp_path / "runs"
    proc = start_dask_quant("run", MODEL, "--calib", big, "--chunk-size", "32", "--workers", "1", "--out", out)
    wait_for_calibration(proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr.strip().splitlines()[-1] == "dask-quant: error: interrupted; no run was published"
    assert "Traceback" not in stderr and stdout == ""
    assert not out.exists() or [p.name for p in out.iterdir()] == [WORK]  # at most checkpoints for --resume


def test_an_interrupt_python_could_only_ignore_is_raised_again(capfd):
    """A signal landing in a __del__ or gc callback (distributed runs one per collection) is not lost."""
    import sys
    import time

    from dask_quant.pipeline.cli import _Interrupts

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    saved, hook = {s: signal.getsignal(s) for s in signals}, sys.unraisablehook

    class RaisesWhenCollected:
        def __del__(self):
            raise KeyboardInterrupt

    try:
        _Interrupts().install()
        with pytest.raises(KeyboardInterrupt):
            RaisesWhenCollected()  # collected at once: Python can only report the exception
            time.sleep(2)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        sys.unraisablehook = hook
    assert "Exception ignored" not in capfd.readouterr().err


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_in_a_terminal_reaches_the_workers_but_prints_one_line(tmp_path, presses):
    """A terminal sends SIGINT to the whole process group: the workers ignore it (dask-quant shuts
    them down), and a second Ctrl-C stops at once, still with one line and no traceback."""
    import os
    import subprocess
    import time

    from processes import _command

    big = tmp_path / "big.npy"
    np.save(big, np.tile(np.load(CALIB), (200, 1, 1, 1)))
    out = str(tmp_path / "o")
    args = ["run", str(MODEL), "--calib", str(big), "--chunk-size", "32", "--workers", "2", "--out", out]
    proc = subprocess.Popen(_command(args), stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_calibration(proc)
    time.sleep(0.5)
    for _ in range(presses):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGINT), stderr
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert len(lines) <= 2 and lines[-1].startswith("dask-quant: error: interrupted"), lines


def test_a_signal_landing_while_the_run_is_published_is_reported_as_published(tmp_path, monkeypatch):
    import os
    import sys

    from click.testing import CliRunner

    from dask_quant.pipeline import results
    from dask_quant.pipeline.cli import main

    publish = results.RunDirectory.publish

    def publish_then_signal(self):
        final = publish(self)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the rename
        return final

    monkeypatch.setattr(results.RunDirectory, "publish", publish_then_signal)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    hook = sys.unraisablehook
    out = tmp_path / "runs"
    try:
        result = CliRunner().invoke(main, ["run", "--out", str(out), "--workers", "1"])
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        sys.unraisablehook = hook
    assert result.exit_code == 0, result.output
    assert "interrupted while publishing: the run was published and is complete" in result.stderr
    assert "no run was published" not in result.stderr
    assert [p.name for p in out.iterdir()][0].startswith("digits_cnn-minmax-") and not (out / WORK).exists()
