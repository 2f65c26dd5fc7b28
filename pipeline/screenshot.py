"""A PNG of a report page, taken by headless Chromium (so a person can look without a browser)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from dask_quant.tasks.errors import InputError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# No sync, no updates, no background traffic: the machine may have no network at all.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    msg = (
        "no Chromium found (looked for chromium, chromium-browser, google-chrome); on Debian: apt-get install chromium"
    )
    raise InputError(msg)


def run_headless(page: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Chromium, headless and offline, on a local page, with a throw-away profile."""
    with tempfile.TemporaryDirectory(prefix="dask-quant-chromium-") as profile:
        command = [browser(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def screenshot(page: Path, png: Path, width: int = 1100, height: int = 2000) -> Path:
    proc = run_headless(page, f"--window-size={width},{height}", f"--screenshot={png.resolve()}")
    if proc.returncode or not png.is_file():
        msg = f"Chromium could not take the screenshot (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
        raise InputError(msg)
    return png
