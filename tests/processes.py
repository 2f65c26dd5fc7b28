"""Real processes: the `dask-quant` entry point, and `dask scheduler` / `dask worker` on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def _command(args) -> list[str]:
    return [sys.executable, "-m", "dask_quant", *map(str, args)]


def dask_quant(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`dask-quant ARGS...` as a user would run it; the timeout only guards against a hang."""
    return subprocess.run(_command(args), capture_output=True, text=True, timeout=timeout)


def start_dask_quant(*args) -> subprocess.Popen:
    """`dask-quant ARGS...` in the background, its stdout and stderr piped."""
    return subprocess.Popen(_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_calibration(job: subprocess.Popen) -> None:
    """Read the job's stderr until its calibration stage has started."""
    for line in job.stderr:
        if "calibrating" in line:
            return


@dataclass
class DaskProcesses:
    scheduler_file: Path
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]
    tls_args: tuple[str, ...]


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A throw-away CA and one certificate for 127.0.0.1 signed by it (openssl CLI)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=dask-quant test CA",
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    )
    return {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what}"
            raise TimeoutError(msg)
        time.sleep(0.2)


@contextmanager
def dask_processes(folder: Path, workers: int = 2, tls: dict[str, Path] | None = None, cwd: Path | None = None):
    """`dask scheduler` and `workers` x `dask worker --no-nanny`, every port on 127.0.0.1; stopped on exit.

    Under --no-dashboard their HTTP servers (health, metrics) still start, on
    0.0.0.0 unless given a --dashboard-address: they get a loopback one.
    """
    scheduler_file = folder / "scheduler.json"
    tls_args: tuple[str, ...] = ()
    if tls:
        tls_args = ("--tls-ca-file", str(tls["ca"]), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"]))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": cwd}
    http = ("--no-dashboard", "--dashboard-address", "127.0.0.1:0")
    scheduler = subprocess.Popen(
        [
            BIN / "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *http,
            "--protocol",
            "tls" if tls else "tcp",
            "--scheduler-file",
            str(scheduler_file),
            *tls_args,
        ],
        **quiet,
    )
    started: list[subprocess.Popen] = []
    try:
        _wait_for(scheduler_file.exists, "the scheduler file")
        for _ in range(workers):
            started.append(
                subprocess.Popen(
                    [
                        BIN / "dask",
                        "worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        *http,
                        *tls_args,
                    ],
                    **quiet,
                )
            )
        yield DaskProcesses(scheduler_file, scheduler, started, tls_args)
    finally:
        # Workers first, while their scheduler still answers: a worker whose scheduler went away first spends
        # its close waiting on it (the exported-model tests' teardown took 21 s).
        for group in (started, [scheduler]):
            for process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in group:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
