"""`dask-quant zoo run`: requantize every model of a manifest on one cluster, and keep the history.

Each model is one `run_methods` job (its methods share one calibration); the
jobs run at once, from threads of this process, on one Dask client, so the
cluster interleaves their tasks. A job whose content key already has a good
result in the history is not run again ("reused"); one that fails is recorded
with its error and does not stop the others. Every result is compared with
the last good one of the same model and method (pipeline.zoo_compare), and
the night's rows are appended to the history (pipeline.zoo_history).

    OUT/runs/MODEL/RUN_ID/    each job's run directories (as `dask-quant run` writes them)
    OUT/history/date=.../     the history
    OUT/.zoo-cache/MODEL/     what a model's builder made
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dask_quant.cluster.config import ClusterConfig
from dask_quant.pipeline import zoo_history, zoo_keys, zoo_rows
from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.zoo_manifest import Manifest, ZooModel, builtin_manifest, load_manifest
from dask_quant.pipeline.zoo_sources import made_files
from dask_quant.tasks.errors import DaskQuantError, InputError
from dask_quant.tasks.storage import is_url

RUNS = "runs"
LOCK = ".zoo.lock"
_NIGHT_FORMAT = "%Y-%m-%d"


@dataclass(frozen=True)
class ZooConfig:
    manifest: Path | None = None  # None: the built-in zoo
    out: Path = Path("dask-quant-zoo")
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    force: bool = False  # rerun jobs whose key has a good result
    night: str | None = None  # the history partition (YYYY-MM-DD); None: today (UTC)
    jobs: int | None = None  # models at once; None: all

    def __post_init__(self) -> None:
        if self.jobs is not None and self.jobs < 1:
            msg = f"--jobs must be at least 1, got {self.jobs}"
            raise InputError(msg)
        if is_url(self.out):
            msg = (
                f"--out {self.out}: the zoo keeps its history in a local folder (or one all workers see), where "
                "nights append under a lock; its models and data may be URLs"
            )
            raise InputError(msg)
        # Absolute: preparation moves the process's working directory while another model's thread runs.
        object.__setattr__(self, "out", Path(self.out).absolute())
        if self.night is not None:
            try:
                parsed = time.strptime(self.night, _NIGHT_FORMAT)
            except ValueError:
                msg = f"--night {self.night!r}: write the date as YYYY-MM-DD"
                raise InputError(msg) from None
            object.__setattr__(self, "night", time.strftime(_NIGHT_FORMAT, parsed))


@dataclass(frozen=True)
class ZooResult:
    night: str
    rows: tuple[dict, ...]  # this night's rows (also those not appended: already in the history)
    history_file: Path | None
    report: Path | None = None  # OUT/zoo.html

    @property
    def alerts(self) -> list[dict]:
        return [row for row in self.rows if zoo_rows.is_alert(row)]

    @property
    def exit_code(self) -> int:
        """1 when any job failed, regressed or was not deterministic (for cron and CI); else 0."""
        return 1 if self.alerts else 0


@dataclass
class _Job:
    """One model: its files, and per method its key and the good result that key already has."""

    model: ZooModel
    files: dict[str, str | None] = field(default_factory=dict)  # model/calib/val paths
    parts: dict[str, dict] = field(default_factory=dict)  # method -> key parts
    reuse: dict[str, dict] = field(default_factory=dict)  # method -> earlier good row
    error: str | None = None
    results: dict[str, object] = field(default_factory=dict)  # method -> RunResult
    seconds: float = 0.0

    @property
    def to_run(self) -> list:
        return [m for m in self.model.methods if m.value not in self.reuse]


def zoo_run(config: ZooConfig, client=None, log: Callable[[str], None] = print) -> ZooResult:
    """Requantize the manifest's models (InputError before anything runs if the manifest or --out is bad)."""
    from dask_quant.pipeline.results import check_writable
    from dask_quant.pipeline.zoo_report import write_zoo_report

    manifest = load_manifest(config.manifest or builtin_manifest())
    check_writable(config.out, "--out")
    night = config.night or time.strftime(_NIGHT_FORMAT, time.gmtime())
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # /proc, a read-only mount, a full disk
        msg = f"--out {config.out}: cannot create it ({exc.strerror}); choose another --out"
        raise InputError(msg) from None
    with _one_at_a_time(config.out, log):
        history = zoo_history.read_history(config.out)
        jobs = plan_jobs(manifest, config, history, log)
        _run_jobs([job for job in jobs if job.error is None and job.to_run], config, client, log)
        zoo_run_id = f"{night}-{time.strftime('%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        rows = [row for job in jobs for row in zoo_rows.rows(job, history, zoo_run_id)]
        fresh = [row for row in rows if not zoo_rows.already_recorded(row, night, history)]
        written = zoo_history.append_night(config.out, night, zoo_run_id, fresh)
        page = write_zoo_report(config.out) if zoo_history.read_history(config.out) else None
    for line in zoo_rows.summary_lines(rows):
        log(line)
    return ZooResult(night, tuple(rows), written, page)


@contextlib.contextmanager
def _one_at_a_time(out: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Zoo runs on one output folder take turns: the second waits, then finds the first's results."""
    import fcntl

    with (out / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another zoo run is writing to {out}: waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def plan_jobs(manifest: Manifest, config: ZooConfig, history: list[dict], log) -> list[_Job]:
    from dask_quant.tasks.digest import known_sha256

    installed = zoo_keys.versions()
    jobs = []
    for model in manifest.models:
        job = _Job(model)
        jobs.append(job)
        try:
            job.files = made_files(model, config.out, lambda line, name=model.name: log(f"[{name}] {line}"))
            digests = {name: known_sha256(path) if path else None for name, path in job.files.items()}
        except DaskQuantError as exc:
            job.error = str(exc)
            log(f"[{model.name}] {job.error}")
            continue
        for method in model.methods:
            parts = zoo_keys.key_parts(model, method, digests, installed)
            job.parts[method.value] = parts
            earlier = zoo_history.last_good(history, model.name, method.value, zoo_keys.job_key(parts))
            if earlier is not None and not config.force:
                job.reuse[method.value] = earlier
        reused = [m.value for m in model.methods if m.value in job.reuse]
        if reused:
            log(f"[{model.name}] reused (model, data, configuration and versions unchanged): {', '.join(reused)}")
    return jobs


def jobs_at_once(jobs: int, requested: int | None = None) -> int:
    """How many models' jobs run at once: all of them, or `requested` (--jobs). All at once fills the
    workers while one model's client-side stages run (preparation, the quantizer, writing): the built-in
    zoo on two cores, warmed up and alternating, took 68.6 and 71.9 s one model at a time, 67.4 and 65.9 s
    two at once, 61.6 and 70.3 s all three at once."""
    return max(1, min(jobs, requested or jobs))


def job_config(job: _Job, out: Path, method, cluster: ClusterConfig) -> RunConfig:
    """The RunConfig of `job`'s model with `method`, publishing under `out`."""
    return RunConfig(
        model=job.files["model"],  # each a path or a URL: RunConfig makes a Path of a path
        calib=job.files["calib"],
        val=job.files["val"],
        out=out,
        chunk_size=job.model.chunk_size,
        metric=job.model.metric,
        quant=job.model.quant_for(method),
        cluster=cluster,
        prepare=job.model.prepare,
    )


def _run_jobs(jobs: list[_Job], config: ZooConfig, client, log) -> None:
    """The jobs on one client, `jobs_at_once` of them at a time (threads that wait on the cluster); errors stay
    with their job."""
    from dask_quant.cluster.connect import cluster_client

    if not jobs:
        return
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(cluster_client(config.cluster))
        at_once = jobs_at_once(len(jobs), config.jobs)
        names = ", ".join(f"{j.model.name} ({len(j.to_run)})" for j in jobs)
        log(f"requantizing {len(jobs)} model(s), {at_once} at a time: {names}")
        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="zoo") as pool:
            futures = [pool.submit(_run_job, job, config, client, log, stop.is_set) for job in jobs]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                stop.set()  # the jobs still running publish nothing
                raise


def _run_job(job: _Job, config: ZooConfig, client, log, interrupted) -> None:
    from dask_quant.pipeline.job import run_methods

    name = job.model.name

    def say(line: str) -> None:
        log(f"[{name}] {line}")

    methods = job.to_run
    run_config = job_config(job, config.out / RUNS / name, methods[0], config.cluster)
    start = time.perf_counter()
    try:
        results = run_methods(
            run_config, [job.model.quant_for(m) for m in methods], client, say, interrupted=interrupted
        )
    except DaskQuantError as exc:
        job.error = str(exc)
        say(f"failed: {job.error}")
    except Exception as exc:  # noqa: BLE001 - one model's failure is recorded; the others go on
        job.error = f"{type(exc).__name__}: {exc}"
        say(f"failed: {job.error}")
    else:
        job.results = {method.value: result for method, result in zip(methods, results, strict=True)}
        say(f"done in {time.perf_counter() - start:.1f} s")
    job.seconds = time.perf_counter() - start
