"""How a chunk's rows become a model's feeds, and its outputs rows again.

Data files keep samples on axis 0. A model may want them elsewhere (an RNN
state `[layers, batch, hidden]`), or want one value for every sample (a
scalar sample rate): a Feeding says so, travels with the chunk, and is
applied only at `session.run`, so everything else sees samples on axis 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Constant:
    """One value fed to an input for every batch (small: it travels in the task graph)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> Constant:
        array = np.array(array, order="C")  # not ascontiguousarray: it turns a 0-d array into 1-d
        return cls(name, array.dtype.str, tuple(array.shape), array.tobytes())

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)


@dataclass(frozen=True)
class Feeding:
    """`batch_axes`: inputs whose batch axis is not 0; `output_axes`: the same for outputs;
    `constants`: inputs fed one value whatever the rows."""

    batch_axes: tuple[tuple[str, int], ...] = ()
    output_axes: tuple[tuple[str, int], ...] = ()
    constants: tuple[Constant, ...] = ()

    def to_model(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Session feeds from sample-major rows: batch axes moved into place, constants added."""
        axes = dict(self.batch_axes)
        feeds = {name: np.moveaxis(value, 0, axes[name]) if name in axes else value for name, value in rows.items()}
        feeds.update((c.name, c.array()) for c in self.constants)
        return feeds

    def to_rows(self, names: list[str], outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs with samples on axis 0 (outputs not named in output_axes already have them there)."""
        axes = dict(self.output_axes)
        pairs = zip(names, outputs, strict=True)
        return [np.moveaxis(value, axes[name], 0) if name in axes else value for name, value in pairs]

    def batch_axis(self, name: str) -> int:
        return dict(self.batch_axes).get(name, 0)


NO_FEEDING = Feeding()
