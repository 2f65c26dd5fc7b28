"""Log records of the libraries we call (ONNX Runtime's quantization tools log on the root logger)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Collect(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def captured_logs(level: int = logging.WARNING) -> Iterator[list[str]]:
    """Collect the messages logged at `level` or above while the block runs (they still reach other handlers)."""
    handler = _Collect(level)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler.messages
    finally:
        root.removeHandler(handler)
