"""Where a worker's time goes in the histogram pass and the per-layer pass: cProfile, one process.

    python benchmarks/profile_passes.py [--model minilm|digits] [--rows 128] [--top 12]

Runs the same task functions a worker runs (pass 2 of the histogram methods
with entropy's 128 bins and percentile's 2048 |x| bins; then per-layer error
against the MinMax INT8 model) under cProfile with Dask's synchronous
scheduler, in this process, and prints each pass's wall time and its top
functions by own time. MiniLM needs the `bench` extra (data/make_minilm.py,
cached under benchmarks/.cache); digits is the built-in model.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import MINILM_MISSING, machine_line, minilm_cache  # noqa: E402


def case(name: str, rows: int, tmp: Path):
    from dask_quant.pipeline.builtin import CALIB, MODEL, builtin_path
    from dask_quant.pipeline.config import QuantConfig, RunConfig

    if name == "digits":
        calib = tmp / "calib.npy"
        np.save(calib, np.load(builtin_path(CALIB))[:rows])
        return RunConfig(model=builtin_path(MODEL), calib=calib, val=calib, prepare=False), QuantConfig(), 64
    cache = minilm_cache()
    if cache is None:
        raise SystemExit(MINILM_MISSING)
    with np.load(cache / "minilm_calib.npz") as data:
        np.savez(tmp / "calib.npz", **{k: data[k][:rows] for k in data.files})
    excluded = tuple((cache / "minilm_exclude.txt").read_text().split())
    quant = QuantConfig(per_channel=True, activation_type="uint8", op_types=("MatMul",), exclude_nodes=excluded)
    config = RunConfig(model=cache / "minilm.onnx", calib=tmp / "calib.npz", val=tmp / "calib.npz", prepare=False)
    return config, quant, 32


def profiled(label: str, graph, top: int):
    import dask

    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    (result,) = dask.compute(graph, scheduler="sync")
    profile.disable()
    seconds = time.perf_counter() - start
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    body = lines[next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")) :]
    print(f"\n{label}: {seconds:.2f} s wall in one process")
    print("\n".join("  " + line.replace(str(HERE.parent) + "/", "") for line in body))
    return result


def main() -> None:
    import dataclasses

    import dask
    import onnx

    from dask_quant.pipeline.graph import calibration_graph, histogram_graph, layer_graph
    from dask_quant.pipeline.layers import quantized_layers
    from dask_quant.pipeline.ranges import histogram_specs
    from dask_quant.pipeline.stages.calibrate import Calibration
    from dask_quant.pipeline.stages.prepare import dataset_chunks, prepare
    from dask_quant.pipeline.stages.quantize import quantize
    from dask_quant.tasks.sessions import ModelRef

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=("minilm", "digits"))
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    print(machine_line())

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config, quant, chunk = case(args.model, args.rows, tmp)
        prepared = prepare(config)
        chunks = dataset_chunks(prepared.calib, chunk)
        (stats,) = dask.compute(calibration_graph(chunks, prepared.model, prepared.tensors), scheduler="sync")
        specs = {
            spec.key: spec
            for method in (
                dataclasses.replace(quant, method="entropy", num_bins=128, num_quantized_bins=128),
                dataclasses.replace(quant, method="percentile", symmetric=True, num_bins=2048),
            )
            for spec in histogram_specs(stats, method)
        }
        ordered = tuple(specs[key] for key in sorted(specs))
        ranges = dict(stats.ranges)
        values = sum(ranges[spec.tensor].count for spec in ordered)
        counted = f"{len(ordered)} histograms of {values / 1e6:.0f} M values"
        print(f"{args.model}: {args.rows} rows in chunks of {chunk}; {counted}")
        profiled("histogram pass", histogram_graph(chunks, prepared.model, prepared.tensors, ordered), args.top)
        quantized = quantize(Calibration(prepared.model, stats), quant, tmp / "int8.onnx")
        int8 = ModelRef(str(quantized.path), quantized.sha256)
        layers = quantized_layers(prepared.proto, onnx.load(str(quantized.path)), dict(prepared.tensors))
        pairs = tuple((layer.tensor, layer.dequantized, layer.elem_type) for layer in layers)
        print(f"\n{len(pairs)} activations compared")
        profiled("per-layer pass", layer_graph(chunks, prepared.model, (int8,), (pairs,)), args.top)


if __name__ == "__main__":
    main()
