"""The tune search's finished experiments: trials.parquet, written again (atomically) after each one.

A trial is keyed by what it measured: the job (model, data, calibration and
quantization options, ranking rows) and the variant (which rows, which nodes
in FP32). `--resume` reads the work area's trials.parquet back and the search
asks it before running an experiment: a kill loses only experiments in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from dask_quant.pipeline.outputs import TRIALS
from dask_quant.pipeline.search import Experiment
from dask_quant.pipeline.target import Target
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.validate import ValidationStats


def stats_to_json(stats: ValidationStats) -> str:
    return json.dumps(stats.to_json())


def stats_from_json(text: str) -> ValidationStats:
    return ValidationStats.from_json(json.loads(text))


def experiment_key(job: str, experiment: Experiment) -> str:
    """Same job, same rows, same nodes in FP32: the same model scored on the same rows."""
    text = json.dumps([job, experiment.rows, sorted(experiment.reverted)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class TrialStore:
    """Finished experiments of one job, in `folder`/trials.parquet; with `resume`, those already there."""

    def __init__(self, folder: Path, job: str, target: Target, resume: bool) -> None:
        self.folder, self.job, self.target = Path(folder), job, target
        self.rows: list[dict] = []
        self.reused = self.computed = 0
        self._known: dict[str, ValidationStats] = {}
        self._resumed: set[str] = set()
        path = self.folder / TRIALS.name
        if resume and path.is_file():
            self._load()
        elif path.exists():
            path.unlink()

    def _load(self) -> None:
        try:
            table, _ = TRIALS.read(self.folder)
            rows = [{k: v for k, v in row.items() if k != "run_id"} for row in table.to_pylist()]
            known = {row["key"]: stats_from_json(row["stats_json"]) for row in rows}
        except (InputError, ValueError, TypeError, KeyError):
            return  # a damaged file: its experiments run again (nothing else depends on it)
        self.rows, self._known, self._resumed = rows, known, set(known)

    def get(self, experiment: Experiment) -> ValidationStats | None:
        """The experiment's statistics if this search or the one it resumes already has them; `reused`
        counts those of the resumed search (the put-back can ask for a model a step already scored)."""
        key = experiment_key(self.job, experiment)
        stats = self._known.get(key)
        if stats is not None and key in self._resumed:
            self._resumed.discard(key)
            self.reused += 1
        return stats

    def add(self, experiment: Experiment, stats: ValidationStats, seconds: float, worker: str) -> None:
        key = experiment_key(self.job, experiment)
        self._known[key] = stats
        self.computed += 1
        self.rows.append(
            {
                "key": key,
                "phase": experiment.phase,
                "group": experiment.group,
                "reverted": list(experiment.reverted),
                "reverted_count": len(experiment.reverted),
                "rows": experiment.rows,
                "samples": stats.samples,
                "metric": self.target.value(stats),
                "mean_cosine": stats.mean_cosine,
                "agreement": stats.agreement,
                "int8_accuracy": stats.int8_accuracy,
                "seconds": round(seconds, 4),
                "worker": worker,
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "stats_json": stats_to_json(stats),
            }
        )
        self.write(self.folder, "")

    def write(self, folder: Path, run_id: str) -> Path:
        """trials.parquet in `folder`, replaced in one step (a reader never sees half a file)."""
        staging = Path(folder) / f".trials-{os.getpid()}"
        staging.mkdir(parents=True, exist_ok=True)
        try:
            written = TRIALS.write(staging, run_id, self.rows)
            target = Path(folder) / TRIALS.name
            written.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
