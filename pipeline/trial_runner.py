"""The tune search's `run` on a cluster: each experiment from the trial store when a resumed search has it,
else as tasks on the workers (one per piece of its rows), judged by the target and appended to the store as
it finishes."""

from __future__ import annotations

import time
from functools import reduce

from dask_quant.pipeline.compute import TASK_RETRIES
from dask_quant.pipeline.experiments import run_experiment
from dask_quant.pipeline.search import Experiment
from dask_quant.pipeline.trials import TrialStore
from dask_quant.tasks.validate import ValidationStats


class ClusterRunner:
    """The search's `run`: experiments from the trial store, or as tasks on the cluster.

    `rows` maps each row label to the reference rows on the cluster (a future), or to a tuple of them: pieces
    of those rows in order, each scored by a task of its own and merged (exactly: the statistics are the same
    for any pieces), so one experiment on every row keeps every worker busy."""

    def __init__(self, client, calibration, quant, rows: dict, names, store: TrialStore, deadline, progress):
        self.client, self.calibration, self.quant, self.rows = client, calibration, quant, rows
        self.names, self.store, self.deadline, self.progress = names, store, deadline, progress

    def _pieces(self, label: str) -> tuple:
        rows = self.rows[label]
        return rows if isinstance(rows, tuple) else (rows,)

    def __call__(self, experiments: list[Experiment]):
        from distributed import as_completed

        values = [self.store.get(e) for e in experiments]
        todo = [i for i, v in enumerate(values) if v is None]
        if not todo:
            return values
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return values
        futures, parts = {}, {}
        for i in todo:
            pieces = self._pieces(experiments[i].rows)
            parts[i] = [None] * len(pieces)
            for piece, rows in enumerate(pieces):
                future = self.client.submit(
                    run_experiment, self.calibration, self.quant, experiments[i].reverted, rows, self.names,
                    pure=False, retries=TASK_RETRIES,
                )  # fmt: skip
                futures[future] = (i, piece)
        label = experiments[todo[0]].phase
        pending = as_completed(futures, timeout=None)

        def finished():
            for future in pending:
                i, piece = futures[future]
                parts[i][piece] = future.result()  # (statistics per output, seconds, worker)
                if any(part is None for part in parts[i]):
                    continue
                outputs = tuple(
                    reduce(ValidationStats.merge, each, ValidationStats())
                    for each in zip(*(part[0] for part in parts[i]), strict=True)
                )
                seconds = sum(part[1] for part in parts[i])
                worker = ", ".join(dict.fromkeys(part[2] for part in parts[i]))
                stats = self.store.target.judge(outputs)  # the output the target holds or fails on
                self.store.add(experiments[i], stats, seconds, worker)
                values[i] = stats
                yield
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.client.cancel(list(futures))
                    return

        if self.progress is not None:
            self.progress.track(finished(), len(todo), f"tune {label}", "experiments")
        else:
            for _ in finished():
                pass
        return values
