"""Clip ranges from histograms: percentile, entropy (KL), MSE. Pure numpy.

Each function takes a tensor's merged histogram, its bin edges and the exact
observed (min, max), and returns the (low, high) range to quantize with,
clamped to what was observed. The methods follow ONNX Runtime's histogram
calibrators (onnxruntime.quantization.calibrate.HistogramCollector) so their
thresholds can be compared bin for bin; the entropy search does the same
arithmetic with array operations instead of Python loops over bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = np.float32(0.0001)  # ORT's smooth_distribution epsilon
_MSE_STEPS = 64  # candidates per end
_MSE_ROUNDS = 2  # alternate low/high searches
_SHORTLIST_TOLERANCE = 1e-4  # relative; float32 noise in ORT's KL values is ~1e-6


@dataclass(frozen=True)
class ThresholdSettings:
    """What a threshold search needs besides the histogram."""

    method: str
    percentile: float = 99.999
    num_quantized_bins: int = 128
    symmetric: bool = False
    levels: int = 255  # qmax - qmin of the activation type


def _clamp(low: float, high: float, observed: tuple[float, float]) -> tuple[float, float]:
    return max(low, observed[0]), min(high, observed[1])


def percentile_range(counts, edges, observed, settings: ThresholdSettings) -> tuple[float, float]:
    """Cut (100 - percentile)% of the values: from |x| when symmetric, half from each tail otherwise."""
    cdf = np.cumsum(counts / counts.sum())
    if settings.symmetric:  # counts are of |x| on [0, max|x|]
        edge = float(edges[np.searchsorted(cdf, settings.percentile / 100.0)])
        return _clamp(-edge, edge, observed)
    tail = (100.0 - settings.percentile) / 200.0
    left = float(edges[np.searchsorted(cdf, tail)])
    right = float(edges[np.searchsorted(cdf, 1.0 - tail)])
    return _clamp(left, right, observed)


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


def _fast_divergences(counts: np.ndarray, starts: np.ndarray, ends: np.ndarray, nq: int) -> np.ndarray:
    """KL(p || q) of every candidate window in O(nq) each, in float64.

    q is constant on each of the nq levels, so sum(p log q) needs only the
    per-level sums of p; sum(p log p) after smoothing uses prefix sums of
    c log c, log c and 1/c (second-order expansion in the tiny smoothing
    epsilon). Agrees with the exact float32 value to far below float32 noise,
    which is what the shortlist in `entropy_range` relies on.
    """
    eps = float(_EPS)
    c = counts.astype(np.float64)
    positive = c > 0
    safe = np.where(positive, c, 1.0)

    def prefix(values):
        return np.concatenate([[0.0], np.cumsum(values)])

    total_c, total_nz = prefix(c), prefix(positive.astype(np.float64))
    total_clogc = prefix(np.where(positive, c * np.log(safe), 0.0))
    total_logc, total_inv = prefix(np.where(positive, np.log(safe), 0.0)), prefix(np.where(positive, 1 / safe, 0.0))

    lengths = ends - starts
    merged = lengths // nq
    covered = merged * nq
    s_all = total_c[-1]
    first = c[starts] + total_c[starts]  # p[0]
    last = c[ends - 1] + (s_all - total_c[ends])  # p[L-1]
    first_c, last_c = c[starts], c[ends - 1]

    def nz(x):
        return (x > 0).astype(np.float64)

    zeros_p = lengths - (total_nz[ends] - total_nz[starts]) - (nz(first) - nz(first_c)) - (nz(last) - nz(last_c))
    nonzeros_p = lengths - zeros_p
    with np.errstate(divide="ignore", invalid="ignore"):
        eps1 = eps * zeros_p / nonzeros_p

    def edge_terms(x):  # sum of (x - e) log(x - e) for x > 0, expanded in e = eps1
        with np.errstate(divide="ignore", invalid="ignore"):
            lx = np.log(np.where(x > 0, x, 1.0))
            inv = np.where(x > 0, 1 / np.where(x > 0, x, 1.0), 0.0)
            return np.where(x > 0, x * lx, 0.0), np.where(x > 0, lx, 0.0), inv

    fp, fl, fi = edge_terms(first)
    lp, ll, li = edge_terms(last)
    fcp, fcl, fci = edge_terms(first_c)
    lcp, lcl, lci = edge_terms(last_c)
    sum_clogc = total_clogc[ends] - total_clogc[starts] + fp - fcp + lp - lcp
    sum_logc = total_logc[ends] - total_logc[starts] + fl - fcl + ll - lcl
    sum_inv = total_inv[ends] - total_inv[starts] + fi - fci + li - lci
    with np.errstate(divide="ignore", invalid="ignore"):
        a = sum_clogc - eps1 * (sum_logc + nonzeros_p) + 0.5 * eps1**2 * sum_inv + zeros_p * eps * np.log(eps)
    plogp = a / s_all - np.log(s_all)

    k = np.arange(nq)[None, :]
    block_start = starts[:, None] + k * merged[:, None]
    block_end = block_start + merged[:, None]
    quantized = total_c[block_end] - total_c[block_start]
    quantized[:, -1] += total_c[ends] - total_c[starts + covered]
    p_sum = total_c[block_end] - total_c[block_start]  # p per level, before the edge corrections
    p_nz = total_nz[block_end] - total_nz[block_start]
    p_sum[:, 0] += first - first_c
    p_nz[:, 0] += nz(first) - nz(first_c)
    last_in_blocks = lengths == covered
    tail_sum = total_c[ends] - total_c[starts + covered]
    tail_nz = total_nz[ends] - total_nz[starts + covered]
    p_sum[:, -1] += np.where(last_in_blocks, last - last_c, 0.0)
    p_nz[:, -1] += np.where(last_in_blocks, nz(last) - nz(last_c), 0.0)
    tail_sum = tail_sum + np.where(last_in_blocks, 0.0, last - last_c)
    tail_nz = tail_nz + np.where(last_in_blocks, 0.0, nz(last) - nz(last_c))

    level = np.where(p_nz > 0, np.floor(quantized / np.maximum(p_nz, 1)), 0.0)
    zeros_q = (merged[:, None] * (level == 0)).sum(axis=1) + (lengths - covered)
    nonzeros_q = lengths - zeros_q
    s_q = (merged[:, None] * level).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        eps1_q = eps * zeros_q / nonzeros_q
        q_value = np.where(level > 0, level - eps1_q[:, None], eps) / s_q[:, None]
        level_mass = (p_sum + eps * (merged[:, None] - p_nz) - eps1[:, None] * p_nz) / s_all
        tail_mass = (tail_sum + eps * ((lengths - covered) - tail_nz) - eps1 * tail_nz) / s_all
        plogq = (level_mass * np.log(q_value)).sum(axis=1) + tail_mass * np.log(eps / s_q)
        kl = plogp - plogq
    return np.where((nonzeros_p == 0) | (nonzeros_q == 0), np.inf, kl)


def entropy_range(counts, edges, observed, settings: ThresholdSettings) -> tuple[float, float]:
    """TensorRT-style search: the symmetric window whose nq-level quantization loses least (KL).

    Every candidate is scored in O(nq) (`_fast_divergences`); the near-ties
    are then re-scored with ORT's exact float32 arithmetic, so the choice is
    the one ORT's loop makes on the same histogram, at a fraction of the cost.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n, nq = counts.size, settings.num_quantized_bins
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
    return _clamp(float(edges[starts[best]]), float(edges[ends[best]]), observed)


def _rounding_error(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Mean squared distance to the nearest multiple of `scale` of values spread evenly over [a, b].

    F(x), the integral of that squared distance from -scale/2 to x, is
    m * scale**3 / 12 + (r**3 + scale**3 / 8) / 3 for x = m * scale + r.
    """

    def integral(x):
        m = np.round(x / scale)
        r = x - m * scale
        return m * scale**3 / 12.0 + (r**3 + scale**3 / 8.0) / 3.0

    width = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (integral(b) - integral(a)) / width
    centre_error = ((a + b) / 2 - scale * np.round((a + b) / (2 * scale))) ** 2
    return np.where(width > 0, mean, centre_error)


def _expected_errors(counts, lefts, rights, lows, highs, levels: int) -> np.ndarray:
    """Expected squared error of the histogram quantized on each candidate [low, high] (rows)."""
    centres = (lefts + rights) / 2.0
    lows, highs = lows[:, None], highs[:, None]
    scale = (highs - lows) / levels
    clipped = (centres - np.clip(centres, lows, highs)) ** 2
    inside = (centres >= lows) & (centres <= highs)
    error = np.where(inside, _rounding_error(lefts, rights, scale), clipped)
    return error @ counts


def mse_range(counts, edges, observed, settings: ThresholdSettings) -> tuple[float, float]:
    """The clip range that minimises the expected squared quantization error.

    Values are taken as spread evenly within their bin. Inside [low, high] a
    value costs its squared distance to the nearest grid point (0 is on the
    grid, as ORT's zero point puts it there); outside, its squared distance to
    the range. Each end moves towards 0 on a grid of 64 steps; the ends are
    searched in turn (one search with low = -high when symmetric).
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    lefts, rights = edges[:-1], edges[1:]
    low, high = min(observed[0], 0.0), max(observed[1], 0.0)
    if high == low:
        return observed
    steps = np.linspace(1.0, 0.0, _MSE_STEPS + 1)[:-1]
    if settings.symmetric:
        bounds = max(-low, high) * steps
        best = int(np.argmin(_expected_errors(counts, lefts, rights, -bounds, bounds, settings.levels)))
        return _clamp(-float(bounds[best]), float(bounds[best]), observed)
    low_candidates, high_candidates = low * steps, high * steps
    for _ in range(_MSE_ROUNDS):
        errors = _expected_errors(counts, lefts, rights, low_candidates, np.full(steps.size, high), settings.levels)
        low = float(low_candidates[int(np.argmin(errors))])
        errors = _expected_errors(counts, lefts, rights, np.full(steps.size, low), high_candidates, settings.levels)
        high = float(high_candidates[int(np.argmin(errors))])
    return _clamp(low, high, observed)


RANGE_FUNCTIONS = {"percentile": percentile_range, "entropy": entropy_range, "mse": mse_range}


def choose_range(tensor: str, counts, edges, observed, settings: ThresholdSettings) -> tuple[str, float, float]:
    """(tensor, low, high) for one tensor: the unit of work fanned out over the cluster."""
    low, high = RANGE_FUNCTIONS[settings.method](np.asarray(counts), np.asarray(edges), observed, settings)
    return tensor, low, high
