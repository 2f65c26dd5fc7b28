"""`tune`: calibrate once, then find which nodes must stay FP32 for a target metric (pipeline.search),
every experiment a task on the cluster, and publish the result as a run with its trials.

    prepare -> [smooth] -> calibrate -> quantize (all groups) -> rank rows -> search -> quantize -> validate
    -> publish (run directory + trials.parquet + run.json "tune")
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dask_quant.cluster.connect import on_each_worker
from dask_quant.pipeline import results, storage_options
from dask_quant.pipeline.compute import TASK_RETRIES
from dask_quant.pipeline.config import RunConfig, config_dict
from dask_quant.pipeline.experiments import warm_up
from dask_quant.pipeline.gate import start_checks
from dask_quant.pipeline.groups import NODE, Group, int8_share, quantizer_groups, weighted_nodes
from dask_quant.pipeline.guard import collapse_reason, collapse_warning
from dask_quant.pipeline.job import (
    Laps,
    RunResult,
    calibration_record,
    client_scope,
    cluster_record,
    decide_chunking,
    log_preparation,
    run_result,
)
from dask_quant.pipeline.progress import Progress
from dask_quant.pipeline.search import ALL, RANKING, WALK, Experiment, SearchResult, greedy_search
from dask_quant.pipeline.selection import scheme_op_types
from dask_quant.pipeline.smoothing import excluding_smoothing
from dask_quant.pipeline.stages.calibrate import calibrate
from dask_quant.pipeline.stages.prepare import dataset_chunks, prepare
from dask_quant.pipeline.stages.publish import write_run
from dask_quant.pipeline.stages.quantize import quantize
from dask_quant.pipeline.stages.smooth import smooth, smoothed_activations
from dask_quant.pipeline.stages.validate import validate
from dask_quant.pipeline.target import Target
from dask_quant.pipeline.trial_runner import ClusterRunner
from dask_quant.pipeline.trials import TrialStore
from dask_quant.pipeline.workarea import WorkArea
from dask_quant.tasks.errors import DaskQuantError, InputError, Refused, refusing
from dask_quant.tasks.reference_rows import (
    ReferenceRows,
    baseline,
    first,
    fp32_outputs,
    joined,
    reference_chunk,
    subset_stats,
)
from dask_quant.tasks.sessions import ModelRef
from dask_quant.tasks.storage import is_url
from dask_quant.tasks.validate import ValidationStats


@dataclass(frozen=True)
class TuneConfig:
    """The search's own options (the job's are a RunConfig)."""

    target: Target
    ranking_samples: int = 64  # validation rows the ranking scores: those the full INT8 model gets most wrong
    time_budget: float | None = None  # seconds; then the best model so far is published
    speculate: int | None = None  # steps of the walk scored at once (None: the cluster's threads); never a decision
    patience: int = 4  # groups in a row that do not help before the walk ranks again
    isolated: bool = False  # also score each group quantized alone (first round; the report's dots)
    # Validation rows the walk scores its steps on, evenly spaced (None: a quarter of them, at least twice
    # ranking_samples; 0: every row); a step meeting the target there is then scored on every row.
    walk_samples: int | None = None

    def __post_init__(self) -> None:
        if self.ranking_samples < 1:
            msg = f"--ranking-samples must be at least 1, got {self.ranking_samples}"
            raise InputError(msg)
        if self.walk_samples is not None and self.walk_samples < 0:
            msg = f"--walk-samples must be 0 (every row) or more, got {self.walk_samples}"
            raise InputError(msg)
        if self.time_budget is not None and self.time_budget <= 0:
            msg = f"--time-budget must be positive, got {self.time_budget:g} s"
            raise InputError(msg)


@dataclass(frozen=True)
class TuneResult:
    run: RunResult
    search: SearchResult
    groups: tuple[Group, ...]
    trials_computed: int
    trials_reused: int


def _job_key(config: RunConfig, prepared, ranking_rows: tuple[int, ...], walk_rows: tuple[int, ...]) -> str:
    key = [
        list(walk_rows),
        prepared.model.sha256,
        prepared.calib.sha256,
        prepared.val.sha256,
        config.chunk_size,
        config_dict(config)["quant"],
        list(ranking_rows),
        prepared.compared,  # the target holds on each of them
    ]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _ranking_rows(cosines: np.ndarray, samples: int) -> tuple[int, ...]:
    """The `samples` rows (numbered from 0) with the lowest cosine under full INT8 (ties: lower row first),
    sorted."""
    order = np.lexsort((np.arange(len(cosines)), cosines))[:samples]
    return tuple(sorted(int(r) for r in order))


def _walk_rows(rows: int, tuning: TuneConfig) -> tuple[int, ...]:
    """The rows the walk scores its steps on, evenly spaced over the validation set (so they stand for all of
    it, where the ranking rows are its worst); () when that would be every row."""
    size = tuning.walk_samples
    if size is None:
        size = max(2 * tuning.ranking_samples, -(-rows // 4))
    if size == 0 or size >= rows:
        return ()
    return tuple(i * rows // size for i in range(size))


# The fewest rows an experiment on every validation row gives a task of their own: each piece builds the
# variant again (0.4 s of MiniLM's 3 s for 256 rows).
PIECE_ROWS = 32


def _pieces(rows: int, threads: int) -> list[range]:
    """The validation rows (numbered from 0) in contiguous pieces, one per thread while each has PIECE_ROWS
    rows: an experiment on every row is scored piece by piece on all the workers at once."""
    count = max(1, min(threads, rows // PIECE_ROWS))
    return [range(rows * k // count, rows * (k + 1) // count) for k in range(count)]


def _threads(client) -> int:
    """Every worker thread of the cluster: how many walk steps are worth scoring at once."""
    return max(1, sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values()))


class _FullInt8(NamedTuple):
    """The full INT8 model on every validation row: the search's baseline and its ranking rows."""

    outputs: tuple[ValidationStats, ...]  # one per output compared, the lead one first
    cosines: np.ndarray  # per row, the lowest over the outputs the target holds on (the ranking rows' order)
    seconds: float
    where: str


def _reference(client, chunks, prepared, int8: ModelRef, target, bar: Progress) -> tuple[object, object, _FullInt8]:
    """(every validation row with its FP32 outputs, as a future on the cluster; that and the full INT8
    model's outputs, a future; the full INT8 model on them, each row's cosine on the outputs `target` holds
    on): one pass of both models over the chunks."""
    from distributed import as_completed

    start = time.perf_counter()
    parts = [
        client.submit(refusing, reference_chunk, c, prepared.model, int8, prepared.compared, pure=False,
                      retries=TASK_RETRIES)
        for c in chunks
    ]  # fmt: skip
    bar.track(as_completed(parts), len(parts), "reference rows and full INT8")
    both = client.submit(joined, parts, pure=False)
    scored = client.submit(baseline, both, target.every_output, pure=False).result()
    if isinstance(scored, Refused):
        scored.raise_it()
    where = f"{len(parts)} chunks on {len(client.scheduler_info(n_workers=-1)['workers'])} workers"
    return client.submit(first, both, pure=False), both, _FullInt8(*scored, time.perf_counter() - start, where)


def tune(
    config: RunConfig,
    tuning: TuneConfig,
    client=None,
    log: Callable[[str], None] = lambda _: None,
    progress: bool = False,
    interrupted: Callable[[], bool] = lambda: False,
) -> TuneResult:
    """Search the nodes to keep in FP32 until `tuning.target` holds, and publish the best model found."""
    if config.val is None:
        msg = "tune scores every variant on validation data: pass --val"
        raise InputError(msg)
    if is_url(config.out) or is_url(config.model):
        where = f"--out {config.out}" if is_url(config.out) else f"MODEL {config.model}"
        msg = f"{where}: tune works with local paths (or ones all workers see) so far; run takes URLs"
        raise InputError(msg)
    lap = Laps()
    bar = Progress(log, terminal=progress)
    target = tuning.target
    deadline = None if tuning.time_budget is None else time.monotonic() + tuning.time_budget
    with ExitStack() as stack:
        stack.enter_context(storage_options.applied(config.storage))
        run_dir = stack.enter_context(
            results.RunDirectory(config.out, results.new_run_id(config.model, f"{config.quant.label}-tuned"))
        )
        prepared = prepare(config)
        stack.callback(prepared.discard)
        auto = config.chunk_size is None  # decided once the workers' memory is known
        if not auto:
            config = replace(config, chunk_size=prepared.chunk_size)
        if target.needs_labels() and prepared.val.labels is None:
            msg = f"--target {target.describe()} needs labels: --val {prepared.val.path} has none; use cosine"
            raise InputError(msg)
        if config.smooth_quant is not None:
            smoothed_activations(prepared, config)
        lap("prepare")
        work = WorkArea(config, prepared)
        work.start()
        store = None
        try:
            with client_scope(config, client) as dask_client:
                lap("cluster_start")
                cluster, dashboard = cluster_record(dask_client, log)
                log_preparation(prepared, log, [config.quant])
                config, prepared, chunking = decide_chunking(config, prepared, auto, dask_client, log)
                if config.smooth_quant is not None:
                    prepared = smooth(prepared, config, dask_client, log, bar)
                    stack.callback(prepared.discard)
                    config = replace(config, quant=excluding_smoothing(config.quant, prepared.proto))
                checkpoints = work.checkpoints(config.resume)
                calibration = calibrate(
                    prepared, dask_client, [config.quant], chunk_size=config.chunk_size,
                    split_every=config.split_every, checkpoints=checkpoints, log=log, progress=bar,
                )  # fmt: skip
                lap("calibrate")
                calibration_future = dask_client.scatter(calibration, broadcast=True)
                # The workers ready themselves for the experiments while this process writes the full model.
                warming = on_each_worker(dask_client, warm_up, calibration_future, config.quant)
                full = quantize(calibration, config.quant, work.folder / "full.int8.onnx")
                op_types = scheme_op_types(config.quant)
                groups = quantizer_groups(
                    _load(full.path), prepared.proto, op_types, config.quant.exclude_nodes, config.quant.fp32_outputs,
                    replaced=not config.quant.calibrated,  # dynamic and weight-only replace the nodes they quantize
                )  # fmt: skip
                if not groups:
                    msg = f"{config.model}: ONNX Runtime's quantizer quantized no node, so there is nothing to tune"
                    raise InputError(msg)
                chunks = dataset_chunks(prepared.val, config.chunk_size)
                int8 = ModelRef(str(full.path), full.sha256)
                every, both, full_int8 = _reference(dask_client, chunks, prepared, int8, target, bar)
                ranking = _ranking_rows(full_int8.cosines, tuning.ranking_samples)
                walk = _walk_rows(prepared.val.rows, tuning)
                shared = {ALL: every, RANKING: dask_client.submit(ReferenceRows.take, every, ranking, pure=False)}
                if walk:
                    shared[WALK] = dask_client.submit(ReferenceRows.take, every, walk, pure=False)
                threads = _threads(dask_client)
                pieces = _pieces(prepared.val.rows, threads)
                if len(pieces) > 1:
                    shared[ALL] = tuple(dask_client.submit(ReferenceRows.take, every, p, pure=False) for p in pieces)
                store = TrialStore(work.folder, _job_key(config, prepared, ranking, walk), target, config.resume)
                if store.rows:
                    log(f"resuming: {len(store.rows)} finished experiments found in {work.folder}")
                first_experiment = Experiment("baseline", (), None, ALL)
                if store.get(first_experiment) is None:  # scored with the reference rows
                    store.add(first_experiment, target.judge(full_int8.outputs), full_int8.seconds, full_int8.where)
                for rows, label in ((ranking, RANKING), (walk, WALK)):  # and so on the ranking's and walk's rows
                    subset = Experiment("baseline", (), None, label)
                    if rows and store.get(subset) is None:
                        outputs = dask_client.submit(subset_stats, both, rows, pure=False).result()
                        store.add(subset, target.judge(outputs), 0.0, full_int8.where)
                kinds = Counter(g.kind for g in groups)
                compared = len(prepared.compared or (None,))
                each = f" on each of {compared} outputs" if target.every_output and compared > 1 else ""
                log(
                    f"tune: {len(groups)} quantizer groups ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
                    f"target {target.describe()}{each}; ranking on the {len(ranking)} validation rows full INT8 gets "
                    "most wrong, " + (f"walking on {len(walk)} evenly spaced ones" if walk else "walking on every one")
                )
                runner = ClusterRunner(
                    dask_client, calibration_future, config.quant, shared, prepared.compared, store, deadline, bar
                )
                search = greedy_search(
                    {g.name: g.nodes for g in groups},
                    target,
                    runner,
                    speculate=tuning.speculate or threads,
                    # One model at a time on every row when its pieces keep every thread busy.
                    speculate_every_row=tuning.speculate or max(1, threads // len(pieces)),
                    patience=tuning.patience,
                    restore=frozenset(weighted_nodes(prepared.proto, groups)),
                    walk_rows=WALK if walk else ALL,
                    isolated=tuning.isolated,
                    log=log,
                )
                lap("search")
                del warming
                log(
                    f"tune: {search.stopped}; {len(search.groups)} of {len(groups)} groups ({len(search.reverted)} "
                    "nodes) in FP32, "
                    f"{target.metric} {target.shown(search.baseline)} -> {target.shown(search.final)}"
                )
                # The node groups are the quantized nodes (a shared group can also name an unquantized writer).
                if {n for g in groups if g.kind == NODE for n in g.nodes} <= set(search.reverted):
                    base = search.baseline
                    broken = collapse_reason(base.collapsed, None, base.int8_non_finite)
                    # A lower target cannot accept a broken model: say what broke instead.
                    advice = (
                        f"the fully quantized model is broken ({broken}), which no target accepts"
                        if broken
                        else "set a lower target"
                    )
                    msg = (
                        f"tune: {target.describe()} {'held only' if search.met else 'was not reached even'} with "
                        f"every quantized node in FP32, so there is no INT8 model to publish; {advice}"
                    )
                    raise DaskQuantError(msg)
                quantized = quantize(calibration, config.quant, run_dir.tmp / results.MODEL_FILE, search.reverted)
                # The gate's run shares the cluster with validation (as in run); its verdict wins over
                # validation's own failure on a broken model, and nothing is published before it.
                (gate,) = start_checks(config, prepared, [quantized], dask_client)
                try:
                    validation = validate(
                        prepared, quantized, dask_client, metric=config.metric, chunk_size=config.chunk_size,
                        split_every=config.split_every, log=log, progress=bar, per_layer=config.layers == "all",
                        # The reference pass ran the FP32 model over these very chunks.
                        fp32_known=[dask_client.submit(fp32_outputs, every, c.start, c.stop) for c in chunks],
                    )  # fmt: skip
                except DaskQuantError:
                    gate.verdict()
                    raise
                gate.verdict()
                lap("validate")
            lap("cluster_stop")
            store.write(run_dir.tmp, run_dir.run_id)
            sections = {
                "cluster": cluster,
                "chunking": chunking,
                "calibration": calibration_record(calibration, [config.quant.label]),
                "timings_s": lap.timings,
                "tune": _tune_record(
                    tuning,
                    search,
                    groups,
                    store,
                    _load(run_dir.tmp / results.MODEL_FILE),
                    len(walk) or prepared.val.rows,
                    prepared,
                ),  # fmt: skip
            }
            write_run(run_dir, config, prepared, quantized, validation, sections)
            if interrupted():
                raise KeyboardInterrupt
        except DaskQuantError:
            work.discard()
            raise
        except BaseException:  # interrupted, out of memory, the cluster went away: keep the work for --resume
            if store is not None and store.rows:
                log(f"kept {len(store.rows)} finished experiments in {work.folder}: run again with --resume")
            raise
        final = run_dir.publish()
    work.discard()
    run = run_result(run_dir.run_id, final, config, calibration, quantized, validation, cluster, dashboard, lap.timings)
    warning = collapse_warning(run)  # an output the target does not read, as run warns of it
    if warning:
        log(warning)
    return TuneResult(run, search, groups, store.computed, store.reused)


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


def _tune_record(
    tuning: TuneConfig, search: SearchResult, groups, store: TrialStore, int8_proto, walk_samples: int, prepared
) -> dict:
    target = tuning.target
    compared = list(prepared.compared or ())
    return {
        "target": target.describe(),
        "judged_on": compared if target.every_output else compared[:1],  # the outputs it holds on ([]: the first)
        "met": search.met,
        "stopped": search.stopped,
        "groups": len(groups),
        "composite_groups": {g.name: {"kind": g.kind, "nodes": list(g.nodes)} for g in groups if g.kind != NODE},
        "reverted_groups": list(search.groups),
        "reverted": list(search.reverted),
        "metric_before": target.value(search.baseline),
        "metric_after": target.value(search.final),
        "ranking_samples": tuning.ranking_samples,
        "walk_samples": walk_samples,
        "rounds": search.rounds,
        "experiments": {"computed": store.computed, "reused": store.reused},
        "ranking": [[{"group": g, "metric": v} for g, v in ranking] for ranking in search.rankings],
        "isolated": [{"group": g, "metric": v} for g, v in search.isolated],
        "int8_share": {op: {"int8": done, "total": total} for op, (done, total) in int8_share(int8_proto).items()},
    }
