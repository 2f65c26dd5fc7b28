"""A job's work area: the chunk checkpoints that let an interrupted run resume.

It lives in `OUT/.work/JOB/`, JOB being a digest of what the statistics depend
on (model, calibration data, chunking, quantization settings), so `--resume`
only ever finds checkpoints of the same job. A published run removes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import suppress
from dataclasses import replace

from dask_quant.pipeline.config import RunConfig, config_dict
from dask_quant.pipeline.results import WORK
from dask_quant.pipeline.stages.prepare import Prepared
from dask_quant.tasks.checkpoint import SUFFIX, Checkpoints


class WorkArea:
    def __init__(self, config: RunConfig, prepared: Prepared, quants=None) -> None:
        quants = quants or [config.quant]
        key = [
            prepared.model.sha256,
            prepared.calib.sha256,
            config.chunk_size,
            [config_dict(replace(config, quant=q))["quant"] for q in quants],
            [list(t) for t in prepared.tensors],
        ]
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        self.root = config.out.absolute() / WORK
        self.folder = self.root / digest

    def checkpoints(self, resume: bool) -> Checkpoints:
        return Checkpoints(str(self.folder), resume=resume)

    def count(self) -> int:
        return len(list(self.folder.glob(f"*{SUFFIX}"))) if self.folder.is_dir() else 0

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        with suppress(OSError):  # other jobs' checkpoints may still be there
            self.root.rmdir()
