"""A job's work area: the chunk checkpoints that let an interrupted run resume.

It lives in `OUT/.work/JOB/`, JOB being a digest of what the statistics depend
on (model, calibration data, chunking, quantization settings), so `--resume`
only ever finds checkpoints of the same job. A published run removes it.

`JOB/job.json` names the files the job read and their identity (size, mtime).
A work area whose files are gone or changed can never be resumed: the next
run in the same OUT removes it (interrupted runs of old data leaked before).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from dask_quant.pipeline.config import RunConfig, config_dict
from dask_quant.pipeline.results import WORK
from dask_quant.pipeline.stages.prepare import Prepared
from dask_quant.tasks.checkpoint import SUFFIX, Checkpoints
from dask_quant.tasks.digest import identity

MANIFEST = "job.json"


def _resumable(manifest) -> bool:
    """Whether every file a work area's job read is still there, unchanged."""
    try:
        files = json.loads(manifest.read_text())["files"]
        return all(list(identity(path)) == stamp for path, stamp in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


class WorkArea:
    def __init__(self, config: RunConfig, prepared: Prepared, quants=None, out: Path | None = None) -> None:
        quants = quants or [config.quant]
        key = [
            prepared.model.sha256,
            prepared.calib.sha256,
            config.chunk_size,
            [config_dict(replace(config, quant=q))["quant"] for q in quants],
            [list(t) for t in prepared.tensors],
        ]
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        self.root = Path(out or config.out).absolute() / WORK  # `out`: where the client writes, if not --out
        self.folder = self.root / digest

        self._sources = {
            "model": [prepared.source.path if prepared.source else prepared.model.path],
            "calib": [prepared.calib.path],
        }

    def start(self) -> int:
        """Write this job's manifest and remove the work areas no run can resume; how many were removed."""
        removed = 0
        for other in self.root.glob(f"*/{MANIFEST}") if self.root.is_dir() else ():
            if other.parent != self.folder and not _resumable(other):
                shutil.rmtree(other.parent, ignore_errors=True)
                removed += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        files = {path: list(identity(path)) for paths in self._sources.values() for path in paths}
        (self.folder / MANIFEST).write_text(json.dumps({"files": files}))
        return removed

    def checkpoints(self, resume: bool) -> Checkpoints:
        return Checkpoints(str(self.folder), resume=resume)

    def count(self) -> int:  # checkpoints only: the manifest is not one
        return len(list(self.folder.glob(f"*{SUFFIX}"))) if self.folder.is_dir() else 0

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        with suppress(OSError):  # other jobs' checkpoints may still be there
            self.root.rmdir()
