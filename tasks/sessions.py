"""ONNX Runtime sessions, built once per worker process and cached.

Models travel as a path plus sha256. The bytes a worker reads are checked
against that hash, so a file changed mid-run is an error, not a silent mix.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dask_quant.tasks.digest import model_bytes, model_sha256, sha256_bytes
from dask_quant.tasks.errors import DataError, InputError, ModelChangedError
from dask_quant.tasks.feeding import NO_FEEDING, Feeding
from dask_quant.tasks.storage import read_remote

_CACHE_SIZE = 8  # a nightly zoo run visits many models; keep the cache bounded
# What a session holds besides the model's bytes (measured on MiniLM: an FP32 session of an 86 MiB model
# takes 120-140 MiB, an INT8 one of 22 MiB 60-90 MiB): the estimate set_session_budget's bound counts.
_SESSION_GROWTH, _SESSION_OVERHEAD = 1.5, 32 * 2**20
# Whole activations one run may hand back at once (histogram and per-layer passes).
# A 64-row chunk of a transformer exposes GBs; its rows run in slices of this size.
EXPOSED_BYTES_PER_RUN = 128 * 2**20
_sessions: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()  # (session, estimated bytes) per key
_budget: int | None = None  # bytes the cached sessions may hold together (set_session_budget)
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelRef:
    """A model file and the sha256 its bytes must have; workers read it from `url` when it has one (--out at a
    URL: pipeline.remote_out), else from `path`."""

    path: str
    sha256: str
    url: str | None = None

    @property
    def location(self) -> str:
        """Where a worker reads the model."""
        return self.url or self.path


@dataclass(frozen=True)
class SessionSpec:
    """How to build a session.

    `extrema_of` are (tensor name, ONNX elem type) pairs whose min, max and
    size become extra outputs (tasks.augment); `expose` are pairs whose whole
    values become outputs (for histograms). `calibration` runs with every
    graph optimisation off, as ONNX Runtime's own calibrator does: otherwise
    fused kernels move values by an ULP.
    """

    extrema_of: tuple[tuple[str, int], ...] = ()
    expose: tuple[tuple[str, int], ...] = ()
    channel_max_of: tuple[tuple[str, int, int], ...] = ()  # (name, elem type, channels): SmoothQuant's statistic
    calibration: bool = False
    intra_op_threads: int = 1


def _model_bytes(model: ModelRef, spec: SessionSpec) -> bytes:
    data = read_remote(model.url) if model.url else Path(model.path).read_bytes()
    if (sha256_bytes(data) if model.url else model_sha256(model.path, data)) != model.sha256:
        msg = (
            f"{model.location}: sha256 differs from the one the run started with; the file changed, "
            "or this worker sees another file at that path (workers need the same file)"
        )
        raise ModelChangedError(msg)
    if not spec.extrema_of and not spec.expose and not spec.channel_max_of:
        return data
    import onnx

    from dask_quant.tasks.augment import add_channel_max_outputs, add_extrema_outputs, add_outputs

    proto = add_outputs(onnx.load_from_string(data), spec.expose)
    proto = add_extrema_outputs(proto, spec.extrema_of)
    return (add_channel_max_outputs(proto, spec.channel_max_of) if spec.channel_max_of else proto).SerializeToString()


def _ort_load_errors() -> tuple[type[Exception], ...]:
    """ORT's own exception types for a model it refuses (they derive from Exception only)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidGraph", "InvalidArgument", "NotImplemented", "InvalidProtobuf")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def _ort_run_errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "RuntimeException")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _options(spec: SessionSpec, folder: str | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One intra-op thread per task: Dask's worker threads are the parallelism.
    options.intra_op_num_threads = spec.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # ORT's own log lines would reach the user's terminal beside ours; its errors arrive as exceptions,
    # which say the same in one line with the chunk and rows.
    options.log_severity_level = 4
    if spec.calibration:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if spec.expose:
        # Exposed activations cannot share buffers, and an arena keeps its peak: MiniLM's per-layer pass held
        # 821 MiB with one, 580-690 without (10-15% slower), where 1 GiB workers must also hold validation's.
        options.enable_cpu_mem_arena = False
    # A model saved with external data names its files relative to its own folder; from bytes, ORT
    # needs that folder said (the model's own bytes are checked against the digest, data files too).
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    return options


def _session(data: bytes, options, where: str):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except _ort_load_errors() as exc:
        msg = f"{where}: ONNX Runtime cannot load this model ({_first_line(exc)}); check it with onnx.checker"
        raise InputError(msg) from None


def _build(model: ModelRef, spec: SessionSpec):
    folder = None if model.url is not None else str(Path(model.path).resolve().parent)  # a URL's has no data files
    return _session(_model_bytes(model, spec), _options(spec, folder), model.location)


def session_from_bytes(data: bytes, where: str):
    """A session of its own for a serialized model without external data, made in memory (a tune variant)."""
    return _session(data, _options(SessionSpec(), None), where)


def fresh_session(model: ModelRef, spec: SessionSpec = SessionSpec()):
    """A session of its own, not cached: for a model used once (a tune variant), which would evict the rest."""
    return _build(model, spec)


def session_for(model: ModelRef, spec: SessionSpec = SessionSpec()):
    """The cached session for (model, spec), built on first use in this process."""
    key = (model.sha256, spec)
    with _lock:
        cached = _sessions.get(key)
        if cached is not None:
            _sessions.move_to_end(key)
            return cached[0]
        session = _build(model, spec)
        size = model_bytes(model.location)
        _sessions[key] = (session, int(size * _SESSION_GROWTH) + _SESSION_OVERHEAD)
        _evict()
        return session


def set_session_budget(budget: int | None) -> None:
    """Bound the bytes this process's cached sessions hold together (an estimate from each model's size);
    None: only their count is bounded. The least recently used go first; a session a task holds lives on
    until that task lets it go, so a stage's sessions replace the last stage's rather than adding to them."""
    global _budget
    with _lock:
        _budget = budget
        _evict()


def _evict() -> None:
    def over() -> bool:
        held = sum(cost for _, cost in _sessions.values())
        return len(_sessions) > _CACHE_SIZE or (_budget is not None and held > _budget and len(_sessions) > 1)

    while over():
        _sessions.popitem(last=False)


def drop_sessions() -> None:
    """Forget this process's cached sessions (the next task builds its own, as a fresh worker would)."""
    with _lock:
        _sessions.clear()


def fixed_batch(session, feeding: Feeding = NO_FEEDING) -> int | None:
    """The batch size the model's inputs fix on their batch axes, or None when it is symbolic."""
    constant = {c.name for c in feeding.constants}
    sizes = set()
    for value in session.get_inputs():
        axis = feeding.batch_axis(value.name)
        if value.name not in constant and len(value.shape) > axis and isinstance(value.shape[axis], int):
            sizes.add(value.shape[axis])
    return sizes.pop() if len(sizes) == 1 else None


def run_in_batches(
    session, names: list[str] | None, feeds: dict[str, np.ndarray], feeding: Feeding = NO_FEEDING
) -> list[np.ndarray]:
    """session.run over a chunk's rows (samples on axis 0), in slices of the model's fixed batch size if it has one.

    Many exported models fix batch 1; a chunk still carries many rows.
    `feeding` moves batch axes into place and adds constant inputs; the
    outputs come back with samples on axis 0.
    """
    batch = fixed_batch(session, feeding)
    rows = len(next(iter(feeds.values())))
    output_names = names or [o.name for o in session.get_outputs()]

    def run(part: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            outputs = session.run(names, feeding.to_model(part))
        except _ort_run_errors() as exc:  # the model loaded, so the values are what it refuses
            raise DataError(_first_line(exc)) from None
        return feeding.to_rows(output_names, outputs)

    if batch is None or batch == rows:
        return run(feeds)
    parts = [run({k: v[i : i + batch] for k, v in feeds.items()}) for i in range(0, rows, batch)]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


# Rows per session.run where whole outputs are compared (validation's output pass, the tune search's
# experiments): MiniLM runs 1.09x (INT8) to 1.16x (FP32) as fast in slices of 16 rows as of 64, its outputs
# bit for bit the same (benchmarks/rows_per_run.py): a transformer's activations for 64 rows overflow the
# CPU's caches.
ROWS_PER_RUN = 16


def run_in_slices(
    session, names: Sequence[str] | None, feeds: dict[str, np.ndarray], feeding: Feeding = NO_FEEDING
) -> list[np.ndarray]:
    """Outputs `names` (None: the first only) over every row (samples on axis 0), run_in_batches over slices
    of ROWS_PER_RUN rows (whole batches of a fixed batch size): the same slices whoever asks, and a worker's
    memory bounded by them, not by the rows. No slice has one row unless the feeds have (see exposed_runs)."""
    names = list(names) if names else [session.get_outputs()[0].name]
    batch = fixed_batch(session, feeding)
    rows = len(next(iter(feeds.values())))
    step = max(1, ROWS_PER_RUN // batch) * batch if batch else ROWS_PER_RUN
    least = batch or 2
    bounds, start = [], 0
    while start < rows:
        stop = min(rows, start + step)
        if 0 < rows - stop < least:  # no short tail of its own
            stop = rows
        bounds.append((start, stop))
        start = stop
    if len(bounds) > 1:
        parts = []
        for a, b in bounds:
            part = run_in_batches(session, names, {k: v[a:b] for k, v in feeds.items()}, feeding)
            if any(np.ndim(value) == 0 or len(value) != b - a for value in part):
                break  # an output whose rows are not samples: one run over every row, as callers' checks expect
            parts.append(part)
        else:
            return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]
    return run_in_batches(session, names, feeds, feeding)


def exposed_runs(
    runs: list[tuple[Any, list[str]]],
    feeds: dict[str, np.ndarray],
    budget: int | None = None,
    feeding: Feeding = NO_FEEDING,
    row_bytes: Callable[[list[dict[str, np.ndarray]]], int] | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray], list[dict[str, np.ndarray]]]]:
    """Run each (session, output names) over the chunk in row slices; yield (rows, feeds as the model
    got them, [outputs per session]).

    The first slice is the fewest rows allowed and tells how many bytes a row exposes (the
    outputs' bytes, or `row_bytes(outputs)` for runs whose activations are not
    their outputs); later slices hold as many rows as fit `budget`. Slices also
    run faster than whole chunks where activations are large: a transformer's
    attention maps for 64 rows overflow the CPU's caches, and MiniLM runs
    15-20% faster in slices of about ten rows. Callers fold per-slice statistics
    with their exact merge, so a worker holds one slice's activations at a time.
    No slice has one row unless the chunk has (or the model fixes a batch of
    one): ORT's one-row GEMM takes another kernel whose float sums can differ
    in the last bit, and the statistics must not depend on the slicing.
    """
    budget = budget or EXPOSED_BYTES_PER_RUN
    rows = len(next(iter(feeds.values())))
    unit = max((fixed_batch(session, feeding) or 1 for session, _ in runs), default=1)
    least = unit if unit > 1 else 2
    start, step = 0, least  # the fewest rows a slice may have: one row of a transformer exposes ~60 MiB
    while start < rows:
        stop = min(rows, start + step)
        if 0 < rows - stop < least:  # no short tail of its own
            stop = rows
        part = {name: value[start:stop] for name, value in feeds.items()}
        outputs = [
            dict(zip(names, run_in_batches(session, names, part, feeding), strict=True)) if names else {}
            for session, names in runs
        ]
        made = row_bytes(outputs) if row_bytes else sum(v.nbytes for output in outputs for v in output.values())
        per_row = max(1, made // (stop - start))
        yield stop - start, feeding.to_model(part), outputs
        del outputs, part  # before the next slice runs: a worker holds one slice's activations, not two
        # A model with a fixed batch runs one batch per slice: its exposed tensors then come straight from
        # one session.run, in the layout of the feeds (whatever its batch axis), never concatenated.
        start, step = stop, unit if unit > 1 else max(least, budget // per_row)


def reduced_runs(
    session, names: list[str], feeds: dict[str, np.ndarray], feeding: Feeding, sizes: list[str], itemsizes: list[int]
) -> list[dict[str, np.ndarray]]:
    """`names` of each row slice of a chunk, for a session that reduces its activations inside (their
    element counts are the Size outputs `sizes`, of `itemsizes` bytes a value): the slices hold about
    EXPOSED_BYTES_PER_RUN of those activations, as exposed_runs' do."""

    def row_bytes(outputs: list[dict[str, np.ndarray]]) -> int:
        return sum(int(np.sum(outputs[0][size])) * item for size, item in zip(sizes, itemsizes, strict=True))

    slices = exposed_runs([(session, names)], feeds, feeding=feeding, row_bytes=row_bytes)
    return [outputs for _, _, (outputs,) in slices]


def exposed_slices(chunk, model: ModelRef, tensors) -> Iterator[dict[str, np.ndarray]]:
    """The values of `tensors` ((name, elem type, ...) tuples) over one chunk, one row slice at a time
    (exposed_runs): graph inputs straight from the feeds, the rest exposed as outputs of a calibration
    session. Callers take what they need from each dict and drop it before asking for the next."""
    from dask_quant.tasks.chunks import read_feeds

    feeds = read_feeds(chunk)
    given = {*feeds, *(c.name for c in chunk.feeding.constants)}
    computed = tuple((name, elem) for name, elem, *_ in tensors if name not in given)
    session = session_for(model, SessionSpec(expose=computed, calibration=True))
    for _, part, (values,) in exposed_runs([(session, [name for name, _ in computed])], feeds, feeding=chunk.feeding):
        values.update(part)
        del part
        yield values
        del values  # before exposed_runs runs the next slice: one slice's activations at a time
