"""Entropy (KL-divergence) threshold search, as ONNX Runtime's calibrator does it, fast.

ORT's get_entropy_threshold scores each candidate window with Python loops
over bins (~0.5 s per tensor at 2048 bins). Here every candidate is scored in
O(nq) from prefix sums; the few near-ties are then re-scored with ORT's exact
float32 arithmetic, so on the same histogram the same window wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = np.float32(0.0001)  # ORT's smooth_distribution epsilon
_SHORTLIST_TOLERANCE = 1e-4  # relative; float32 noise in ORT's KL values is ~1e-5


def _smooth(p: np.ndarray) -> np.ndarray | None:
    """ORT's smooth_distribution in float32: zeros get eps, taken off the non-zero entries."""
    zeros = p == 0
    n_zeros = int(zeros.sum())
    if n_zeros == p.size:
        return None
    eps1 = _EPS * np.float32(n_zeros / (p.size - n_zeros))
    return p.astype(np.float32) + np.where(zeros, _EPS, -eps1).astype(np.float32)


def _window(counts: np.ndarray, cumulative: np.ndarray, start: int, end: int) -> np.ndarray:
    """The clipped histogram p: the window, with the outliers folded into its edge bins."""
    p = counts[start:end].copy()
    p[0] += cumulative[start]
    p[-1] += cumulative[-1] - cumulative[end]
    return p


def _exact_divergence(counts: np.ndarray, cumulative: np.ndarray, start: int, end: int, nq: int) -> np.float32:
    """One candidate's KL(p || q) with ORT's float32 arithmetic (get_entropy_threshold).

    q merges the window into nq levels and spreads each level evenly (integer
    division) over the level's non-zero positions of p.
    """
    sliced = counts[start:end]
    p = _window(counts, cumulative, start, end)
    merged = sliced.size // nq
    covered = nq * merged
    starts = np.arange(0, covered, merged)
    quantized = np.add.reduceat(sliced[:covered], starts)
    quantized[-1] += sliced[covered:].sum()
    norms = np.add.reduceat((p[:covered] != 0).astype(np.int64), starts)
    level = np.where(norms != 0, quantized // np.maximum(norms, 1), 0)
    q = np.zeros(p.size, dtype=np.int64)
    q[:covered] = np.repeat(level, merged)
    p_s, q_s = _smooth(p), _smooth(q)
    if p_s is None or q_s is None:
        return np.float32(np.inf)
    p_n, q_n = p_s / p_s.sum(), q_s / q_s.sum()
    return np.float32(np.sum(p_n * np.log(p_n / q_n)))


def _nonzero(x: np.ndarray) -> np.ndarray:
    return (x > 0).astype(np.float64)


def _xlogx_terms(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x log x, log x and 1/x where x > 0 (else 0): the terms of sum((x - e) log(x - e)) to second order in e."""
    positive = x > 0
    safe = np.where(positive, x, 1.0)
    return (
        np.where(positive, x * np.log(safe), 0.0),
        np.where(positive, np.log(safe), 0.0),
        np.where(positive, 1 / safe, 0.0),
    )


@dataclass(frozen=True)
class _Windows:
    """Candidate windows [start, end) over a histogram, with prefix sums to sum anything in O(1)."""

    counts: np.ndarray  # float64
    starts: np.ndarray
    ends: np.ndarray
    nq: int

    def __post_init__(self) -> None:
        def prefix(values):
            return np.concatenate([[0.0], np.cumsum(values)])

        c = self.counts
        object.__setattr__(self, "sums", [prefix(t) for t in (c, _nonzero(c), *_xlogx_terms(c))])

    def total(self, which: int, a, b):
        """Sum of prefix `which` (0 counts, 1 non-zeros, 2 c log c, 3 log c, 4 1/c) over [a, b)."""
        return self.sums[which][b] - self.sums[which][a]

    @property
    def lengths(self):
        return self.ends - self.starts

    @property
    def merged(self):
        return self.lengths // self.nq

    @property
    def first(self):  # p[0]: the first bin plus the left outliers
        return self.counts[self.starts] + self.sums[0][self.starts]

    @property
    def last(self):  # p[-1]: the last bin plus the right outliers
        return self.counts[self.ends - 1] + (self.sums[0][-1] - self.sums[0][self.ends])


def _p_log_p(w: _Windows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sum(p_n log p_n) of smoothed, normalised p; also eps1 and p's non-zero count per window."""
    eps = float(_EPS)
    first_c, last_c = w.counts[w.starts], w.counts[w.ends - 1]
    nonzeros = (
        w.total(1, w.starts, w.ends) + _nonzero(w.first) - _nonzero(first_c) + _nonzero(w.last) - _nonzero(last_c)
    )
    zeros = w.lengths - nonzeros
    with np.errstate(divide="ignore", invalid="ignore"):
        eps1 = eps * zeros / nonzeros
    # the edge bins changed: swap their terms for p's
    terms = [w.total(i, w.starts, w.ends) for i in (2, 3, 4)]
    for x, sign in ((w.first, 1), (first_c, -1), (w.last, 1), (last_c, -1)):
        terms = [t + sign * extra for t, extra in zip(terms, _xlogx_terms(x), strict=True)]
    xlogx, logx, inverse = terms
    with np.errstate(divide="ignore", invalid="ignore"):
        total = xlogx - eps1 * (logx + nonzeros) + 0.5 * eps1**2 * inverse + zeros * eps * np.log(eps)
    mass = w.sums[0][-1]
    return total / mass - np.log(mass), eps1, nonzeros


def _p_log_q(w: _Windows, eps1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum(p_n log q_n), q constant on each of the nq levels; also q's non-zero count per window."""
    eps, nq, merged = float(_EPS), w.nq, w.merged
    covered = merged * nq
    first_c, last_c = w.counts[w.starts], w.counts[w.ends - 1]
    block_start = w.starts[:, None] + np.arange(nq)[None, :] * merged[:, None]
    block_end = block_start + merged[:, None]
    quantized = w.total(0, block_start, block_end)
    quantized[:, -1] += w.total(0, w.starts + covered, w.ends)
    p_sum, p_nz = w.total(0, block_start, block_end), w.total(1, block_start, block_end)
    tail_sum, tail_nz = w.total(0, w.starts + covered, w.ends), w.total(1, w.starts + covered, w.ends)
    p_sum[:, 0] += w.first - first_c
    p_nz[:, 0] += _nonzero(w.first) - _nonzero(first_c)
    in_levels = w.lengths == covered  # else p's last position is in the tail that q leaves at 0
    p_sum[:, -1] += np.where(in_levels, w.last - last_c, 0.0)
    p_nz[:, -1] += np.where(in_levels, _nonzero(w.last) - _nonzero(last_c), 0.0)
    tail_sum = tail_sum + np.where(in_levels, 0.0, w.last - last_c)
    tail_nz = tail_nz + np.where(in_levels, 0.0, _nonzero(w.last) - _nonzero(last_c))

    level = np.where(p_nz > 0, np.floor(quantized / np.maximum(p_nz, 1)), 0.0)
    zeros_q = (merged[:, None] * (level == 0)).sum(axis=1) + (w.lengths - covered)
    nonzeros_q = w.lengths - zeros_q
    q_mass = (merged[:, None] * level).sum(axis=1)
    mass = w.sums[0][-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        eps1_q = eps * zeros_q / nonzeros_q
        q_value = np.where(level > 0, level - eps1_q[:, None], eps) / q_mass[:, None]
        level_mass = (p_sum + eps * (merged[:, None] - p_nz) - eps1[:, None] * p_nz) / mass
        tail_mass = (tail_sum + eps * ((w.lengths - covered) - tail_nz) - eps1 * tail_nz) / mass
        return (level_mass * np.log(q_value)).sum(axis=1) + tail_mass * np.log(eps / q_mass), nonzeros_q


def _fast_divergences(counts: np.ndarray, starts: np.ndarray, ends: np.ndarray, nq: int) -> np.ndarray:
    """KL(p || q) of every candidate window in O(nq) each, in float64.

    q is constant on each of the nq levels, so sum(p log q) needs only the
    per-level sums of p; sum(p log p) after smoothing uses prefix sums of
    c log c, log c and 1/c (second-order expansion in the tiny smoothing
    epsilon). Agrees with the exact float32 value to well within the
    shortlist tolerance of `entropy_window`.
    """
    windows = _Windows(counts.astype(np.float64), starts, ends, nq)
    p_log_p, eps1, nonzeros_p = _p_log_p(windows)
    p_log_q, nonzeros_q = _p_log_q(windows, eps1)
    with np.errstate(invalid="ignore"):
        return np.where((nonzeros_p == 0) | (nonzeros_q == 0), np.inf, p_log_p - p_log_q)


def entropy_window(counts, edges, nq: int) -> tuple[float, float]:
    """TensorRT-style search: the symmetric window whose nq-level quantization loses least (KL).

    Every candidate is scored in O(nq) (`_fast_divergences`); the near-ties
    are then re-scored with ORT's exact float32 arithmetic, so the choice is
    the one ORT's loop makes on the same histogram, at a fraction of the cost.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.size
    zero, half = n // 2, nq // 2
    radii = np.arange(half, zero + 1)
    starts, ends = zero - radii, np.minimum(zero + radii + 1, n)
    fast = _fast_divergences(counts, starts, ends, nq)
    finite = np.isfinite(fast)
    if not finite.any():
        best = 0
    else:
        floor = fast[finite].min()
        shortlist = np.flatnonzero(fast <= floor + _SHORTLIST_TOLERANCE * max(abs(floor), 1e-6))
        cumulative = np.concatenate([[0], np.cumsum(counts)])
        exact = [_exact_divergence(counts, cumulative, starts[i], ends[i], nq) for i in shortlist]
        best = int(shortlist[int(np.argmin(exact))])  # first minimum among them, as np.argmin
    return float(edges[starts[best]]), float(edges[ends[best]])
