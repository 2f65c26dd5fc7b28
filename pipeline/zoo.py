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
import hashlib
import importlib
import io
import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dask_quant.cluster.config import ClusterConfig
from dask_quant.pipeline import zoo_compare, zoo_history, zoo_keys
from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.target import METRICS
from dask_quant.pipeline.zoo_manifest import Manifest, ZooModel, builtin_manifest, load_manifest
from dask_quant.tasks.errors import DaskQuantError, InputError

RUNS = "runs"
CACHE = ".zoo-cache"
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
        return [r for r in self.rows if r["status"] != "ok" or r["regression"] or r["nondeterministic"]]

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
        rows = [row for job in jobs for row in _rows(job, history, zoo_run_id)]
        fresh = [row for row in rows if not _already_recorded(row, night, history)]
        written = zoo_history.append_night(config.out, night, zoo_run_id, fresh)
        page = write_zoo_report(config.out) if zoo_history.read_history(config.out) else None
    for line in summary_lines(rows):
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
            job.files = _sources(model, config.out, lambda line, name=model.name: log(f"[{name}] {line}"))
            digests = {name: known_sha256(path) if path else None for name, path in job.files.items()}
        except DaskQuantError as exc:
            job.error = str(exc)
            log(f"[{model.name}] {job.error}")
            continue
        for method in model.methods:
            parts = zoo_keys.key_parts(model, method, digests, installed)
            job.parts[method.value] = parts
            earlier = _last_good(history, model.name, method.value, zoo_keys.job_key(parts))
            if earlier is not None and not config.force:
                job.reuse[method.value] = earlier
        reused = [m.value for m in model.methods if m.value in job.reuse]
        if reused:
            log(f"[{model.name}] reused (model, data, configuration and versions unchanged): {', '.join(reused)}")
    return jobs


def _sources(model: ZooModel, out: Path, log: Callable[[str], None]) -> dict[str, str | None]:
    """The model's files: from the manifest, or made by its builder (InputError with what to do)."""
    if model.builder is None:
        return {"model": str(model.model), "calib": str(model.calib), "val": model.val and str(model.val)}
    module_name, function_name = model.builder.split(":")
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except ImportError as exc:
        msg = (
            f"model {model.name!r}: its builder {model.builder} cannot be imported ({exc}); "
            "install what it needs (the built-in zoo's builders: pip install 'dask-quant[zoo]')"
        )
        raise InputError(msg) from None
    except AttributeError:
        msg = f"model {model.name!r}: module {module_name} has no function {function_name!r}; fix 'builder'"
        raise InputError(msg) from None
    folder = (out / CACHE / model.name).resolve()  # workers resolve paths from their own folder
    folder.mkdir(parents=True, exist_ok=True)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # a builder's prints join the log, not the command's output
            made = builder(folder)
    except DaskQuantError:
        raise
    except ImportError as exc:
        msg = (
            f"model {model.name!r}: its builder {model.builder} needs a package that is not installed ({exc}); "
            "the built-in zoo's builders: pip install 'dask-quant[zoo]'"
        )
        raise InputError(msg) from None
    except Exception as exc:  # a builder is user code: its failure is this model's error, not the zoo's  # noqa: BLE001
        msg = f"model {model.name!r}: its builder {model.builder} failed: {type(exc).__name__}: {exc}"
        raise InputError(msg) from None
    finally:
        for line in printed.getvalue().splitlines():
            log(f"builder: {line}")
    if not isinstance(made, dict):
        msg = f"model {model.name!r}: its builder {model.builder} returned {type(made).__name__}, not a dict of paths"
        raise InputError(msg)
    files = {name: made.get(name) and str(Path(made[name]).resolve()) for name in ("model", "calib", "val")}
    for name in ("model", "calib"):
        if not files[name] or not Path(files[name]).is_file():
            msg = f"model {model.name!r}: its builder {model.builder} returned no {name} file ({files[name]})"
            raise InputError(msg)
    return files


def _last_good(history: list[dict], model: str, method: str, key: str | None = None) -> dict | None:
    """The latest good row of (model, method) (with that key, if given) whose run directory still exists."""
    for row in reversed(history):
        if row["model"] != model or row["method"] != method or row["status"] != "ok":
            continue
        if key is not None and row["key"] != key:
            continue
        if key is not None and not (Path(row["run_dir"]) / "run.json").is_file():
            continue  # its files are gone: run it again
        return row
    return None


def jobs_at_once(jobs: int, requested: int | None = None) -> int:
    """How many models' jobs run at once: all of them, or `requested` (--jobs). All at once fills the
    workers while one model's client-side stages run (preparation, the quantizer, writing): the built-in
    zoo on two cores, warmed up and alternating, took 68.6 and 71.9 s one model at a time, 67.4 and 65.9 s
    two at once, 61.6 and 70.3 s all three at once."""
    return max(1, min(jobs, requested or jobs))


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
    run_config = RunConfig(
        model=Path(job.files["model"]),
        calib=Path(job.files["calib"]),
        val=job.files["val"] and Path(job.files["val"]),
        out=config.out / RUNS / name,
        chunk_size=job.model.chunk_size,
        metric=job.model.metric,
        quant=job.model.quant_for(methods[0]),
        cluster=config.cluster,
        prepare=job.model.prepare,
    )
    start = time.perf_counter()
    try:
        results = run_methods(run_config, methods, client, say, interrupted=interrupted)
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


def _rows(job: _Job, history: list[dict], zoo_run: str) -> Iterator[dict]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    versions = json.dumps(zoo_keys.versions(), sort_keys=True)
    for method in job.model.methods:
        parts = job.parts.get(method.value, {})
        row = {
            "model": job.model.name,
            "method": method.value,
            "lead": job.model.lead,
            "key": zoo_keys.job_key(parts) if parts else None,
            "key_parts": json.dumps(parts, sort_keys=True) if parts else None,
            "versions": versions,
            "zoo_run": zoo_run,
            "created_utc": created,
            "reused": False,
            "regression": False,
            "nondeterministic": False,
            "duration_s": round(job.seconds, 3),
        }
        if method.value in job.reuse:
            earlier = job.reuse[method.value]
            copied = ("lead_value", "mean_cosine", "agreement", "fp32_accuracy", "int8_accuracy", "sqnr_db")
            row |= {name: earlier[name] for name in (*copied, "worst_layer", "worst_layer_sqnr_db", "run_dir")}
            row |= {"status": "ok", "reused": True, "duration_s": 0.0, "qparams_sha256": earlier["qparams_sha256"]}
        elif method.value in job.results:
            row |= {"status": "ok", **_measured(job.results[method.value], job.model.lead)}
        else:
            row |= {"status": "error", "error": job.error or "not run"}
        yield _compared(row, job.model, history)


def _measured(result, lead: str) -> dict:
    """A RunResult's columns of the history."""
    stats = result.validation
    value = METRICS[lead][0](stats) if stats is not None else None
    worst = result.layers[0] if result.layers else None
    return {
        "lead_value": _number(value),
        "mean_cosine": _number(stats.mean_cosine) if stats else None,
        "agreement": _number(stats.agreement) if stats else None,
        "fp32_accuracy": _number(stats.fp32_accuracy) if stats else None,
        "int8_accuracy": _number(stats.int8_accuracy) if stats else None,
        "sqnr_db": _number(stats.sqnr_db) if stats else None,
        "worst_layer": worst and worst["tensor"],
        "worst_layer_sqnr_db": worst and _number(worst["sqnr_db"]),
        "run_dir": str(result.run_dir),
        "qparams_sha256": qparams_digest(result.qparams),
    }


def _number(value) -> float | None:
    return None if value is None else float(value)


def qparams_digest(qparams) -> str:
    """A digest of every tensor's quantization parameters (what must not move under an unchanged key)."""
    plain = sorted((asdict(q) for q in qparams), key=lambda q: (q["tensor"], q["kind"]))
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()


def _compared(row: dict, model: ZooModel, history: list[dict]) -> dict:
    """`row` with its comparison to the last good result of the same model and method."""
    previous = _last_good(history, row["model"], row["method"])
    if row["status"] != "ok" or previous is None or row["reused"]:
        return row | {"previous_lead_value": previous and previous["lead_value"]}
    value, before = row["lead_value"], previous["lead_value"]
    row["previous_lead_value"] = before
    row["lead_change"] = None if value is None or before is None else value - before
    row["regression"] = zoo_compare.lead_regressed(value, before, model.max_drop)
    layers = zoo_compare.regressed_layers(row["run_dir"], previous["run_dir"], model.max_layer_sqnr_drop_db)
    row["regression"] = row["regression"] or bool(layers)
    row["regressed_layers"] = json.dumps(layers[: zoo_compare.MOVED_SHOWN], default=_json_number)
    same_key = row["key"] == previous["key"]
    parts, previous_parts = json.loads(row["key_parts"]), json.loads(previous["key_parts"])
    changed = [] if same_key else zoo_keys.changed_parts(parts, previous_parts)
    row["changed"] = json.dumps(changed)
    different = row["qparams_sha256"] != previous["qparams_sha256"] or not _same(value, before)
    row["nondeterministic"] = same_key and different
    if different:
        moved = zoo_compare.moved_tensors(row["run_dir"], previous["run_dir"])
        row["moved_tensors"] = json.dumps(moved[: zoo_compare.MOVED_SHOWN], default=_json_number)
    return row


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _json_number(value):
    return str(value)


def _already_recorded(row: dict, night: str, history: list[dict]) -> bool:
    """A reused result the same night already holds (a second run that night): no second row."""
    return row["reused"] and any(
        earlier["date"] == night
        and earlier["model"] == row["model"]
        and earlier["method"] == row["method"]
        and earlier["key"] == row["key"]
        and earlier["status"] == "ok"
        for earlier in history
    )


def summary_lines(rows: list[dict] | tuple[dict, ...]) -> list[str]:
    """The night as a table, then one line per alert with what changed."""
    lines = [f"{'model':<16} {'method':<11} {'status':<10} {'lead':<10} {'value':>8} {'change':>9}  note"]
    for row in rows:
        status = "error" if row["status"] != "ok" else "reused" if row["reused"] else "ok"
        value = "" if row.get("lead_value") is None else f"{row['lead_value']:.4f}"
        change = "" if row.get("lead_change") is None else f"{row['lead_change']:+.4f}"
        note = "REGRESSION" if row["regression"] else "NON-DETERMINISTIC" if row["nondeterministic"] else ""
        cells = f"{row['model']:<16} {row['method']:<11} {status:<10} {row['lead']:<10} {value:>8} {change:>9}"
        lines.append(f"{cells}  {note}")
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"{row['model']} {row['method']}: failed: {row['error']}")
        elif row["regression"] or row["nondeterministic"]:
            changed = json.loads(row.get("changed") or "[]")
            moved = [m["tensor"] for m in json.loads(row.get("moved_tensors") or "[]")]
            layers = [m["tensor"] for m in json.loads(row.get("regressed_layers") or "[]")]
            why = f"changed: {', '.join(changed)}" if changed else "nothing in its key changed"
            lines.append(
                f"{row['model']} {row['method']}: {row['lead']} {row['previous_lead_value']} -> {row['lead_value']}; "
                f"{why}; tensors moved: {', '.join(moved[:5]) or 'none'}"
                + (f"; layers whose SQNR fell: {', '.join(layers[:5])}" if layers else "")
            )
    return lines
