"""Per-chunk statistics kept on disk, keyed by content, so an interrupted run can resume.

A checkpoint's name is the sha256 of everything its value depends on (model
bytes, data file bytes and rows, the statistics asked for), so a checkpoint is
never reused for anything else, and a retried task rewrites the same file
(written to a temporary name, then renamed: readers never see half a file).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar


class Storable(Protocol):
    def to_json(self) -> dict: ...


T = TypeVar("T", bound=Storable)

SUFFIX = ".ckpt.json"


@dataclass(frozen=True)
class Checkpoints:
    """Where chunk checkpoints live (a folder every worker can reach), and whether to reuse them."""

    folder: str
    resume: bool = False

    def file(self, key: object) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return Path(self.folder) / f"{digest}{SUFFIX}"


def cached(
    checkpoints: Checkpoints | None, key: object, compute: Callable[[], T], load: Callable[[dict], T]
) -> tuple[T, bool]:
    """(`compute()`, False), or with resume (the value stored under `key`, True); stores what it computes."""
    if checkpoints is None:
        return compute(), False
    path = checkpoints.file(key)
    if checkpoints.resume and path.is_file():
        return load(json.loads(path.read_text())), True
    value = compute()
    # One write of the whole text (json.dump streams many small writes), to a name
    # unique to this process and thread: a retried task on another worker may write
    # the same checkpoint at the same time, and each rename is atomic.
    temporary = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    text = json.dumps(value.to_json())
    try:
        temporary.write_text(text)
    except FileNotFoundError:  # the first checkpoint of this folder
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text)
    try:
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return value, False
