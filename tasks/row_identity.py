"""Whether every sample's output row is the same, as a value that merges exactly over any pieces.

A digest of the one row when all are equal, DIFFERENT_ROWS when they are not, None without samples: merging
is associative and commutative, with None as its identity, so chunks and pieces give the same answer as the
whole batch (validation's collapse check rests on it).
"""

from __future__ import annotations

import hashlib

import numpy as np

DIFFERENT_ROWS = ""  # row_identity of samples whose rows are not all the same


def row_identity(rows: np.ndarray) -> str | None:
    """Of samples' output rows (samples on axis 0): a digest of their one row when every row holds the same
    values (-0.0 as 0.0, NaN as NaN), DIFFERENT_ROWS when they differ, None without rows."""
    if not len(rows):
        return None
    first = rows[:1]
    if not np.array_equal(rows, np.broadcast_to(first, rows.shape), equal_nan=True):
        return DIFFERENT_ROWS
    canonical = np.where(np.isnan(first), np.nan, first + 0) if first.dtype.kind == "f" else first
    return hashlib.blake2b(np.ascontiguousarray(canonical).tobytes(), digest_size=16).hexdigest()


def same_row(a: str | None, b: str | None) -> str | None:
    """row_identity of two sets of samples together, from each one's."""
    if a is None or b is None:
        return b if a is None else a
    return a if a == b else DIFFERENT_ROWS
