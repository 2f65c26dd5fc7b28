"""Progress of a cluster stage, counted in chunks (or another unit: tune's experiments) done of total.

On a terminal: rich's progress bar (chunks, rate, time left), erased when the
stage ends. Elsewhere (a log file, CI, a scheduler's job output): one plain
line every `interval` seconds, so a long stage never looks hung.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

INTERVAL_S = 5.0


def _plain(label: str, done: int, total: int, elapsed: float, unit: str = "chunks") -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    left = f", ~{(total - done) / rate:.0f} s left" if rate > 0 and done < total else ""
    return f"{label}: {done}/{total} {unit} ({rate:.1f} {unit}/s{left})"


class Progress:
    """Reports one stage at a time: `track(done_events, total, label)`.

    `done_events` yields once per finished chunk; whoever feeds it decides
    when to stop early (a failed task).
    """

    def __init__(self, log: Callable[[str], None], terminal: bool, interval: float = INTERVAL_S) -> None:
        self.log = log
        self.terminal = terminal
        self.interval = interval

    def track(self, done_events: Iterable[object], total: int, label: str, unit: str = "chunks") -> None:
        if self.terminal:
            self._bar(done_events, total, label, unit)
        else:
            self._lines(done_events, total, label, unit)

    def _lines(self, done_events: Iterable[object], total: int, label: str, unit: str) -> None:
        start = last = time.monotonic()
        done = 0
        for _ in done_events:
            done += 1
            now = time.monotonic()
            if now - last >= self.interval and done < total:
                self.log(_plain(label, done, total, now - start, unit))
                last = now

    def _bar(self, done_events: Iterable[object], total: int, label: str, unit: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit + " {task.fields[rate]}"),
            TimeRemainingColumn(),
        )
        with Bar(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(label, total=total, rate="")
            start = time.monotonic()
            for done, _ in enumerate(done_events, 1):
                elapsed = time.monotonic() - start
                rate = f"({done / elapsed:.1f}/s)" if elapsed > 0 else ""
                bar.update(task, completed=done, rate=rate)
