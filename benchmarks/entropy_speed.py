"""Entropy threshold search: dask-quant against ONNX Runtime, on the same histograms.

    python benchmarks/entropy_speed.py [--bins 2048] [--repeats 5]

For every activation of the built-in digits CNN (plus synthetic heavy-tailed
and skewed tensors) it builds the histogram ORT's entropy calibrator builds
(--bins bins on [-T, T]) and times both searches on it, alternating them.
It prints the median seconds per tensor of each, their ratio, and whether
both chose the same thresholds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import digits_activations, machine_line, median_seconds  # noqa: E402


def histograms(bins: int) -> dict[str, tuple]:
    tensors = digits_activations()
    rng = np.random.default_rng(0)
    tensors["synthetic heavy-tailed"] = (rng.laplace(size=200_000) ** 3).astype(np.float32)
    tensors["synthetic skewed"] = (rng.gamma(2.0, size=200_000) - 1).astype(np.float32)
    out = {}
    for name, values in tensors.items():
        flat = values.reshape(-1)
        low, high = flat.min(), flat.max()
        bound = np.float32(max(abs(low), abs(high)))
        counts, edges = np.histogram(flat, bins, range=(-bound, bound))
        out[name] = (counts, edges, low, high, bound)
    return out


def main() -> None:
    from onnxruntime.quantization.calibrate import HistogramCollector

    from dask_quant.tasks.thresholds import ThresholdSettings, entropy_range

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    collector = HistogramCollector("entropy", False, args.bins, 128, 99.999, "same")
    settings = ThresholdSettings(num_quantized_bins=128)
    print(machine_line())
    print(f"entropy search, {args.bins} bins, 128 quantized bins, median of {args.repeats} runs each")
    print(f"{'tensor':28} {'onnxruntime s':>14} {'dask-quant s':>13} {'speed-up':>9}  same thresholds")
    ratios = []
    for name, hist in histograms(args.bins).items():
        observed = (float(hist[2]), float(hist[3]))
        ref_times, our_times = [], []
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            ref_times.append(median_seconds(lambda h=hist: collector.get_entropy_threshold(h, 128), 1))
            our_times.append(median_seconds(lambda h=hist, o=observed: entropy_range(h[0], h[1], o, settings), 1))
        ref = collector.get_entropy_threshold(hist, 128)
        ours = entropy_range(hist[0], hist[1], observed, settings)
        same = ours == (float(ref[0]), float(ref[1]))
        ref_s, our_s = statistics.median(ref_times), statistics.median(our_times)
        ratios.append(ref_s / our_s)
        print(f"{name[:28]:28} {ref_s:14.4f} {our_s:13.5f} {ref_s / our_s:8.1f}x  {same}")
    print(f"median speed-up per tensor: {statistics.median(ratios):.1f}x (goal: at least 10x)")


if __name__ == "__main__":
    main()
