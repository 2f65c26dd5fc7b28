"""`run`: the chain of public stages prepare -> calibrate -> quantize -> validate -> publish.

Several methods share one calibration: the range pass (and the histogram
pass, if any method needs it) runs once, then each method is quantized,
validated and published as its own run, identical to a run of that method alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from dask_quant.pipeline import results, storage_options
from dask_quant.pipeline.advice import explain
from dask_quant.pipeline.chunking import auto_chunk, budget_sessions, thread_memory
from dask_quant.pipeline.config import Metric, QuantConfig, RunConfig
from dask_quant.pipeline.failures import killed_worker_message
from dask_quant.pipeline.gate import start_checks
from dask_quant.pipeline.gptq import prepared_targets
from dask_quant.pipeline.guard import collapse_warning
from dask_quant.pipeline.methods import Method
from dask_quant.pipeline.presets import preset_line
from dask_quant.pipeline.progress import Progress
from dask_quant.pipeline.qparams import QParam
from dask_quant.pipeline.remote_out import RemoteOut
from dask_quant.pipeline.selection import control_flow_note, left_in_control_flow
from dask_quant.pipeline.smoothing import excluding_smoothing
from dask_quant.pipeline.stages.calibrate import Calibration, calibrate
from dask_quant.pipeline.stages.prepare import PREPARED_DIR, Prepared, prepare
from dask_quant.pipeline.stages.publish import write_run
from dask_quant.pipeline.stages.quantize import quantize
from dask_quant.pipeline.stages.smooth import smooth, smoothed_activations
from dask_quant.pipeline.stages.validate import validate_each
from dask_quant.pipeline.workarea import WorkArea
from dask_quant.tasks.checkpoint import Source
from dask_quant.tasks.digest import model_bytes
from dask_quant.tasks.errors import DaskQuantError, InputError
from dask_quant.tasks.latency import Latency
from dask_quant.tasks.range_stats import RangeStats
from dask_quant.tasks.storage import is_url
from dask_quant.tasks.validate import ValidationStats


@dataclass(frozen=True)
class RunResult:
    """What a run produced; `run_dir` holds the files."""

    run_id: str
    run_dir: Path | str  # a URL when --out is one
    stats: RangeStats
    qparams: list[QParam]
    validation: ValidationStats | None
    fp32_bytes: int
    int8_bytes: int
    dashboard: str | None
    workers: int
    timings: dict[str, float] = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)  # per-layer error rows, worst SQNR first
    latency: Latency | None = None
    metric: Metric | None = None  # which validation metrics lead
    output: str | None = None  # the model output whose metrics lead
    other_outputs: tuple[tuple[str, Metric, ValidationStats], ...] = ()  # every other output compared
    quant: QuantConfig | None = None  # what the quantizer was asked for


class Laps:
    """Seconds spent per stage, for run.json."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def restart(self) -> None:
        self._clock = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._clock, 4)
        self._clock = now


@contextmanager
def client_scope(config: RunConfig, client) -> Iterator:
    from dask_quant.cluster.connect import cluster_client, require_workers
    from dask_quant.cluster.environment import check_workers

    if client is not None:
        require_workers(client, config.cluster.connect_timeout)
        check_workers(client)
        budget_sessions(client)
        storage_options.share(client, config.storage)
        yield client  # the caller's client: never closed here
        return
    with cluster_client(config.cluster) as own:
        check_workers(own)
        budget_sessions(own)
        storage_options.share(own, config.storage)
        yield own


def decide_chunking(config: RunConfig, prepared: Prepared, auto: bool, client, log) -> tuple:
    """(config, prepared, run.json's chunking) with the rows per chunk decided: with `auto` (--chunk-size auto,
    the config's None), from the model's activations and the memory of `client`'s workers, said in `log`."""
    if not auto:
        return config, prepared, {"auto": False, "rows": prepared.chunk_size}
    chosen = auto_chunk(prepared.row_bytes, thread_memory(client), prepared.fixed_batch)
    log(chosen.describe())
    return replace(config, chunk_size=chosen.rows), replace(prepared, chunk_size=chosen.rows), chosen.record()


def _has_dashboard(client) -> bool:
    try:
        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except (OSError, AttributeError):
        return False


def run(
    config: RunConfig,
    client=None,
    log: Callable[[str], None] = lambda _: None,
    progress: bool = False,
    interrupted: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Quantize `config.model` with `config.quant` on a Dask cluster and publish a run directory.

    Pass a distributed `Client` to use an existing cluster (it is never
    closed); otherwise a cluster is started from `config.cluster` and shut
    down at the end. `log` receives one line per stage (and, without
    `progress`, a progress line every few seconds of a long stage);
    `progress` draws a progress bar on the terminal instead. If
    `interrupted()` is true just before publishing, nothing is published and
    KeyboardInterrupt is raised; once it has answered false, the runs are
    published and the work area cleaned up whatever signal comes (the caller
    must not raise one from then on).
    """
    (result,) = run_methods(config, (config.quant.method,), client, log, progress, interrupted)
    return result


def run_methods(
    config: RunConfig,
    methods: Sequence[QuantConfig | Method | str],
    client=None,
    log: Callable[[str], None] = lambda _: None,
    progress: bool = False,
    interrupted: Callable[[], bool] = lambda: False,
) -> list[RunResult]:
    """`run` for each of `methods`, sharing one calibration (when any of them calibrates): each a QuantConfig
    (a sweep's entry: pipeline.config.entry_configs), or a method (config.quant with that method).

    Publishes one run directory per entry, in the order given; each holds
    what `run` with that configuration alone publishes.
    """
    from distributed import KilledWorker

    quants = list(
        dict.fromkeys(m if isinstance(m, QuantConfig) else replace(config.quant, method=m) for m in methods)
    )  # each checks its settings
    lap = Laps()
    bar = Progress(log, terminal=progress)
    names = [quant.label for quant in quants]
    with ExitStack() as stack:
        stack.enter_context(storage_options.applied(config.storage))
        remote = None
        if is_url(config.out):  # the client works in a folder of its own, then publishes there
            remote = RemoteOut(config.out)
            stack.callback(remote.close)
            remote.check()
        out = remote.local if remote is not None else config.out  # where the client writes
        models = out.absolute() / results.WORK / PREPARED_DIR
        run_dirs = [
            stack.enter_context(results.RunDirectory(out, results.new_run_id(config.model, name))) for name in names
        ]
        prepared = prepare(config, models)
        stack.callback(prepared.discard)  # each run directory keeps its own link to the prepared model
        auto = config.chunk_size is None  # decided once the workers' memory is known
        if not auto:
            config = replace(config, chunk_size=prepared.chunk_size)
        _check_guard_data(config, prepared)
        if config.smooth_quant is not None:
            smoothed_activations(prepared, config)  # bad input stays one line, before any cluster starts
        for quant in quants:
            if quant.uses_grams:
                prepared_targets(prepared, quant.exclude_nodes, quant.op_types)
        if remote is not None:
            prepared = remote.share(prepared)
        lap("prepare")
        work = WorkArea(config, prepared, quants, out)
        if config.resume:
            log(f"resuming: {work.count()} chunk checkpoints found in {work.folder}")
        stale = work.start()
        if stale:
            log(f"removed {stale} work areas of interrupted runs whose model or data changed or is gone")
        try:
            with client_scope(config, client) as dask_client:
                lap("cluster_start")
                cluster, dashboard = cluster_record(dask_client, log)
                log_preparation(prepared, log, quants)  # once the job is sure to run: bad input stays one line
                for preset in dict.fromkeys(quant.preset for quant in quants if quant.preset is not None):
                    log(preset_line(preset))
                config, prepared, chunking = decide_chunking(config, prepared, auto, dask_client, log)
                if config.smooth_quant is not None:
                    prepared = smooth(prepared, config, dask_client, log, bar, models)
                    stack.callback(prepared.discard)
                    quants = [excluding_smoothing(quant, prepared.proto) for quant in quants]
                calibration = calibrate(
                    prepared,
                    dask_client,
                    quants,
                    chunk_size=config.chunk_size,
                    split_every=config.split_every,
                    checkpoints=None if remote else work.checkpoints(config.resume),
                    log=log,
                    progress=bar,
                )
                lap("calibrate")
                made = []
                for quant, run_dir in zip(quants, run_dirs, strict=True):
                    own = Laps()
                    quantized = quantize(calibration, quant, run_dir.tmp / results.MODEL_FILE)
                    for line in explain(quantized.warnings, prepared.prepared):
                        log(line)
                    own("quantize")
                    if len(quants) > 1:  # a static entry's activations; the weights of one that quantizes only those
                        count = quantized.activations if quant.calibrated else len(quantized.qparams)
                        log(f"{quant.label}: quantized {count} {'activations' if quant.calibrated else 'weights'}")
                    made.append((quantized, own))
                # The gate's run on a worker (one task for every method, the FP32 model run once) shares the
                # cluster with validation; nothing is published before its verdict, which wins over
                # validation's own failure on a broken model.
                gates = start_checks(config, prepared, [quantized for quantized, _ in made], dask_client)
                made = [(quantized, gate, own) for (quantized, own), gate in zip(made, gates, strict=True)]
                lap.restart()  # each method's own laps hold its quantizer's time: count it once
                try:
                    validations = validate_each(
                        prepared,
                        [quantized for quantized, _, _ in made],
                        dask_client,
                        metric=config.metric,
                        chunk_size=config.chunk_size,
                        split_every=config.split_every,
                        log=log,
                        progress=bar,
                        per_layer=config.layers == "all",
                        checkpoints=None if remote else work.checkpoints(config.resume),
                    )
                except DaskQuantError:
                    for _, gate, _ in made:
                        gate.verdict()
                    raise
                for _, gate, _ in made:
                    gate.verdict()
                lap("validate")  # the methods' validations ran together
                made = [
                    (quantized, validation, own)
                    for (quantized, _, own), validation in zip(made, validations, strict=True)
                ]
            lap("cluster_stop")
            shared = calibration_record(calibration, names)
            for (quantized, validation, own), run_dir in zip(made, run_dirs, strict=True):
                own.restart()
                sections = {"cluster": cluster, "calibration": shared, "chunking": chunking}
                sections["timings_s"] = {**lap.timings, **own.timings}
                write_run(run_dir, config, prepared, quantized, validation, sections)
                own("write")
            if interrupted():
                raise KeyboardInterrupt
        except KilledWorker as error:
            work.discard()
            raise DaskQuantError(killed_worker_message(error, config, prepared)) from None
        except DaskQuantError:  # bad input found on a worker: its checkpoints are no use once it is fixed
            work.discard()
            raise
        except BaseException:  # interrupted, the cluster went away, a write failed: keep the work for --resume
            kept = work.count()
            if kept:
                log(f"kept {kept} chunk checkpoints in {work.folder}: run again with --resume to reuse them")
            else:
                work.discard()
            raise
        # Only after the cluster is down: an interrupt before this publishes nothing.
        finals = [run_dir.publish() for run_dir in run_dirs]
        made_runs = [
            run_result(run_dir.run_id, final, config, calibration, q, v, cluster, dashboard, lap.timings | own.timings)
            for run_dir, final, (q, v, own) in zip(run_dirs, finals, made, strict=True)
        ]
        if remote is not None:
            made_runs = [replace(result, run_dir=remote.publish(result.run_dir)) for result in made_runs]
    work.discard()
    guarded = config.min_cosine is not None or config.max_drop is not None  # the guard itself reports
    for result in made_runs if not guarded else ():
        warning = collapse_warning(result)
        if warning:
            log(warning)
    return made_runs


def log_preparation(prepared: Prepared, log: Callable[[str], None], quants: Sequence[QuantConfig] = ()) -> None:
    """What preparation did, and what the job's quantizations (`quants`) will leave FP32 in control flow."""
    if prepared.steps:
        log(f"prepared the model: {'; '.join(prepared.steps)}")
    owners = tuple(dict.fromkeys(owner for quant in quants for owner in left_in_control_flow(prepared.proto, quant)))
    if owners:
        log(f"note: {control_flow_note(owners)}; export the model without control flow to quantize them")
    for spec in (prepared.calib, prepared.val):
        if spec is not None and spec.compressed:
            log(
                f"note: {spec.path} is compressed: each chunk decompresses from the start of its array; "
                "numpy.savez (uncompressed) or .npy files are read directly"
            )


def _check_guard_data(config: RunConfig, prepared: Prepared) -> None:
    """The quality guard's flags need what they measure: validation data (with labels for --max-drop)."""
    if (config.min_cosine is not None or config.max_drop is not None) and prepared.val is None:
        msg = "--min-cosine/--max-drop judge the validation results: pass --val"
        raise InputError(msg)
    if config.max_drop is not None and prepared.val.labels is None:
        msg = f"--max-drop compares FP32 and INT8 accuracy: --val {prepared.val.path} has no labels; use --min-cosine"
        raise InputError(msg)


def cluster_record(client, log: Callable[[str], None]) -> tuple[dict, str | None]:
    """run.json's cluster record, and the dashboard link (live only while the run lasts)."""
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    dashboard = client.dashboard_link if _has_dashboard(client) else None
    if dashboard:
        log(f"dashboard: {dashboard}")
    return {"scheduler": client.scheduler.address, "workers": workers}, dashboard


def calibration_record(calibration: Calibration, methods: list[str]) -> dict:
    """run.json's calibration: the methods that shared it, and per pass the chunks computed, reused from
    checkpoints, and discarded (a checkpoint that failed its digests: recomputed, so also counted computed)."""
    passes = {"range_stats": calibration.stats}
    if calibration.histograms is not None:
        passes["histograms"] = calibration.histograms
    record = {
        "methods": methods,
        "passes": {name: dict(zip(Source.names(), value.chunks, strict=True)) for name, value in passes.items()},
    }
    if calibration.gptq:  # weight-only GPTQ: its Gram pass and the weights solved from it
        record["gptq"] = [
            {"bits": w.bits, "block_size": w.block_size, "weights_solved": len(w.nodes)} for w in calibration.gptq
        ]
    return record


def run_result(run_id, final: Path, config, calibration, quantized, validation, cluster, dashboard, timings):
    return RunResult(
        run_id,
        final,
        calibration.stats,
        list(quantized.qparams),
        validation.summary,
        model_bytes(config.model),
        model_bytes(final / results.MODEL_FILE),
        dashboard,
        cluster["workers"],
        timings,
        list(validation.layers),
        validation.latency,
        validation.metric,
        validation.output,
        validation.others,
        quantized.quant,
    )
