"""SmoothQuant's statistic: the largest |value| of each input channel of an activation, over the
calibration set, and the task that takes it from one chunk.

A channel's abs-max is a max, so the merge is exact: any chunking, order or
tree shape gives the same bits. The channel is the activation's last axis,
the one a MatMul or Gemm contracts with its weight's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dask_quant.tasks.augment import channel_max_names, itemsize
from dask_quant.tasks.chunks import ChunkRef, read_feeds
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.merging import add_counts, merge_by_name
from dask_quant.tasks.sessions import ModelRef, SessionSpec, reduced_runs, session_for


@dataclass(frozen=True)
class ChannelMax:
    """max |x| per channel of one activation (Python floats: float32 values held exactly)."""

    values: tuple[float, ...]

    def merge(self, other: ChannelMax) -> ChannelMax:
        if len(self.values) != len(other.values):
            msg = f"cannot merge channel maxima of {len(self.values)} and {len(other.values)} channels"
            raise InputError(msg)
        return ChannelMax(tuple(max(a, b) for a, b in zip(self.values, other.values, strict=True)))

    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)


@dataclass(frozen=True)
class ChannelMaxima:
    """ChannelMax per activation name, sorted by name; `chunks` counts how it was made (not its value)."""

    entries: tuple[tuple[str, ChannelMax], ...] = ()
    chunks: tuple[int, int, int] = field(default=(0, 0, 0), compare=False)

    def merge(self, other: ChannelMaxima) -> ChannelMaxima:
        return ChannelMaxima(merge_by_name(self.entries, other.entries), add_counts(self.chunks, other.chunks))

    def get(self, name: str) -> ChannelMax:
        return dict(self.entries)[name]


def chunk_channel_max(
    chunk: ChunkRef, model: ModelRef, tensors: tuple[tuple[str, int, int], ...]
) -> ChannelMaxima:
    """max |x| per last-axis channel of every (name, elem type, channels) in `tensors`, over one chunk.

    The session computes each abs-max in the graph (tasks.augment.add_channel_max_outputs), so only
    one vector per tensor leaves it; the chunk runs in row slices like the range pass.
    """
    feeds = read_feeds(chunk)
    session = session_for(model, SessionSpec(channel_max_of=tensors, calibration=True))
    names = [output for name, _, _ in tensors for output in channel_max_names(name)]
    sizes = [channel_max_names(name)[1] for name, _, _ in tensors]
    itemsizes = [itemsize(elem) for _, elem, _ in tensors]
    maxima = {name: None for name, _, _ in tensors}
    for outputs in reduced_runs(session, names, feeds, chunk.feeding, sizes, itemsizes):
        for name, _, _ in tensors:
            part = outputs[channel_max_names(name)[0]].astype(np.float64)
            if not np.isfinite(part).all():
                msg = (
                    f"tensor {name!r} is NaN or infinite on chunk rows {chunk.start}..{chunk.stop} of {chunk.path}: "
                    "SmoothQuant and GPTQ need finite activations; fix those samples, or exclude the nodes that read it"
                )
                raise InputError(msg)
            maxima[name] = part if maxima[name] is None else np.maximum(maxima[name], part)
    entries = ((name, ChannelMax(tuple(float(v) for v in values))) for name, values in maxima.items())
    return ChannelMaxima(tuple(sorted(entries)), (1, 0, 0))
