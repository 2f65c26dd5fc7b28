"""Per-chunk statistics kept on disk, keyed by content, so an interrupted run can resume.

A checkpoint's name is the sha256 of everything its value depends on (model
bytes, data file bytes and rows, the statistics asked for), so a checkpoint is
never reused for anything else, and a retried task rewrites the same file
(written to a temporary name, then renamed: readers never see half a file).

A checkpoint cannot lie: it carries its key's digest and a digest of its own
content. One that is truncated, edited, empty, written for another key or not
loadable is discarded and recomputed (and counted), never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol, TypeVar


class Storable(Protocol):
    def to_json(self) -> dict: ...


T = TypeVar("T", bound=Storable)

SUFFIX = ".ckpt.json"


class Source(Enum):
    """Where a chunk's statistics came from."""

    COMPUTED = "computed"
    REUSED = "reused"
    DISCARDED = "discarded"  # a checkpoint was there but failed its digests: recomputed

    @staticmethod
    def names() -> tuple[str, str, str]:
        """What each place of `counts` counts (run.json's keys)."""
        return ("computed", "reused", "discarded")

    @property
    def counts(self) -> tuple[int, int, int]:
        """(computed, reused, discarded) for this one chunk: what statistics add up on merge."""
        return {Source.COMPUTED: (1, 0, 0), Source.REUSED: (0, 1, 0), Source.DISCARDED: (1, 0, 1)}[self]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _key_digest(key: object) -> str:
    return _digest(json.dumps(key, sort_keys=True, default=str))


@dataclass(frozen=True)
class Checkpoints:
    """Where chunk checkpoints live (a folder every worker can reach), and whether to reuse them."""

    folder: str
    resume: bool = False

    def file(self, key: object) -> Path:
        return Path(self.folder) / f"{_key_digest(key)}{SUFFIX}"


def _stored(path: Path, key: str, load: Callable[[dict], T]) -> T | None:
    """The value in the checkpoint at `path` if it passes both digests and loads; else None."""
    try:
        record = json.loads(path.read_text())
        content = json.dumps(record["value"], sort_keys=True)
        if record["key"] != key or record["digest"] != _digest(key + content):
            return None
        return load(record["value"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None  # unreadable, not JSON, not ours, or not a value `load` accepts


def cached(
    checkpoints: Checkpoints | None, key: object, compute: Callable[[], T], load: Callable[[dict], T]
) -> tuple[T, Source]:
    """`compute()`, or with resume the value checkpointed under `key`; stores what it computes.

    Returns the value and where it came from.
    """
    if checkpoints is None:
        return compute(), Source.COMPUTED
    path, key_digest = checkpoints.file(key), _key_digest(key)
    source = Source.COMPUTED
    if checkpoints.resume and path.is_file():
        value = _stored(path, key_digest, load)
        if value is not None:
            return value, Source.REUSED
        source = Source.DISCARDED
        path.unlink(missing_ok=True)
    value = compute()
    # One write of the whole text (json.dump streams many small writes), to a name
    # unique to this process and thread: a retried task on another worker may write
    # the same checkpoint at the same time, and each rename is atomic.
    temporary = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    content = json.dumps(value.to_json(), sort_keys=True)
    text = json.dumps({"key": key_digest, "digest": _digest(key_digest + content), "value": value.to_json()})
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
    return value, source
