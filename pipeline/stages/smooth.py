"""The smooth stage (SmoothQuant, `--smooth-quant ALPHA`): one pass over the calibration data for each
activation's per-channel abs-max, then the FP32 model rewritten so its MatMul/Gemm weights take the
activations' outliers (pipeline.smoothing). Every later stage uses the smoothed model, and quantizes it
with pipeline.smoothing.excluding_smoothing(quant, proto): the inserted Muls stay FP32."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from dask_quant.pipeline.compute import compute
from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.graph import channel_max_graph
from dask_quant.pipeline.model_files import with_weights
from dask_quant.pipeline.progress import Progress
from dask_quant.pipeline.results import WORK
from dask_quant.pipeline.smoothing import SmoothTarget, excluding_smoothing, smooth_model, smoothing_targets
from dask_quant.pipeline.stages.prepare import PREPARED_DIR, Prepared, dataset_chunks, quantizable, write_prepared
from dask_quant.tasks.errors import InputError


def smoothed_activations(prepared: Prepared, config: RunConfig) -> list[SmoothTarget]:
    """What `smooth` would rewrite; InputError when there is nothing (checked before a cluster starts)."""
    targets = smoothing_targets(_weighted(prepared), dict(prepared.tensors), config.quant.exclude_nodes)
    if not targets:
        msg = (
            f"--smooth-quant: {config.model} has no MatMul or Gemm with a constant 2-D weight that reads a "
            "calibrated activation, so there is nothing to smooth; drop --smooth-quant"
        )
        raise InputError(msg)
    return targets


def smooth(
    prepared: Prepared,
    config: RunConfig,
    client,
    log: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
    folder: Path | None = None,
) -> Prepared:
    """`prepared` with its model smoothed with `config.smooth_quant` (alpha); the new model is written to
    `folder` (default OUT/.work/models) and `prepared`'s own copy, if any, is discarded."""
    alpha = config.smooth_quant
    targets = smoothed_activations(prepared, config)
    nodes = sum(len(target.nodes) for target in targets)
    log(f"smoothing {len(targets)} activations into the weights of {nodes} nodes (alpha {alpha:g})")
    chunks = dataset_chunks(prepared.calib, config.chunk_size or prepared.chunk_size)
    wanted = tuple((t.tensor, t.elem_type, t.channels) for t in targets)
    graph = channel_max_graph(chunks, prepared.model, wanted, config.split_every)
    (maxima,) = compute(client, [graph], "smoothing", progress)
    proto = smooth_model(_weighted(prepared), targets, maxima, alpha)
    model = write_prepared(proto, folder or config.out.absolute() / WORK / PREPARED_DIR, Path(config.model).stem)
    prepared.discard()
    step = f"SmoothQuant (alpha {alpha:g}): {len(targets)} activations into the weights of {nodes} MatMul/Gemm nodes"
    steps = (*prepared.steps, step)
    config = replace(config, quant=excluding_smoothing(config.quant, proto))  # the new Muls stay FP32
    model = prepared.for_workers(model)
    return replace(prepared, proto=proto, model=model, tensors=quantizable(proto, config), steps=steps)


def _weighted(prepared: Prepared):
    """The model with its weights (a large model's prepared graph holds none: they are in its data file)."""
    return with_weights(prepared.proto, Path(prepared.model.path).parent)
