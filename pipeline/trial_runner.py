"""The tune search's `run` on a cluster: each experiment from the trial store when a resumed search has it,
else as a task on the workers, judged by the target and appended to the store as it finishes."""

from __future__ import annotations

import time

from dask_quant.pipeline.compute import TASK_RETRIES
from dask_quant.pipeline.experiments import run_experiment
from dask_quant.pipeline.search import Experiment
from dask_quant.pipeline.trials import TrialStore


class ClusterRunner:
    """The search's `run`: experiments from the trial store, or as tasks on the cluster."""

    def __init__(self, client, calibration, quant, rows: dict, names, store: TrialStore, deadline, progress):
        self.client, self.calibration, self.quant, self.rows = client, calibration, quant, rows
        self.names, self.store, self.deadline, self.progress = names, store, deadline, progress

    def __call__(self, experiments: list[Experiment]):
        from distributed import as_completed

        values = [self.store.get(e) for e in experiments]
        todo = [i for i, v in enumerate(values) if v is None]
        if not todo:
            return values
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return values
        futures = {
            self.client.submit(
                run_experiment,
                self.calibration,
                self.quant,
                experiments[i].reverted,
                self.rows[experiments[i].rows],
                self.names,
                pure=False,
                retries=TASK_RETRIES,
            ): i
            for i in todo
        }
        label = experiments[todo[0]].phase
        pending = as_completed(futures, timeout=None)

        def finished():
            for future in pending:
                i = futures[future]
                outputs, seconds, worker = future.result()
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
