"""Memory of distributed GPTQ against ONNX Runtime's GPTQ as the calibration set grows, on wide inputs.

    python benchmarks/gptq_memory.py [--rows 2048,16384] [--width 1024]

A synthetic MLP (x [n, WIDTH] -> MatMul -> Relu -> MatMul -> Relu -> MatMul,
weights WIDTH x WIDTH) whose inputs are wide floats, unlike MiniLM's 64 token
ids a sentence: ORT's GPTQ keeps every calibration input in memory before it
starts (and the model's activations of each whole batch it runs), dask-quant's
workers hold one chunk's. For each calibration size, side by side: `dask-quant
run --scheme weight-only --algorithm gptq` on 2 workers, and
benchmarks/ort_gptq.py (64 rows a batch) on the FP32 model the run quantized.
Printed: seconds to the model (ours: prepare + calibrate + quantize from
run.json; ORT: its quantizer), the largest RSS of any one process, and the
mean squared error of each INT4 model's output against FP32 on 1024 held-out
rows; then how each side's peak grew from the smallest to the largest set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine_line, measured_run, run_measured  # noqa: E402


def _mlp(path: Path, width: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, source = [], [], "x"
    for i in range(3):
        nodes.append(helper.make_node("MatMul", [source, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        inits.append(
            numpy_helper.from_array((rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}")
        )
        source = f"h{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [source], [f"r{i}"], name=f"relu{i}"))
            source = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["n", width])], inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _rows(count: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(64, width)) / 8  # correlated inputs, as activations are
    return (rng.standard_normal((count, 64)) @ mixing).astype(np.float32)


def _mse(model: Path, fp32: Path, rows: np.ndarray) -> float:
    import onnxruntime as ort

    want = ort.InferenceSession(str(fp32)).run(None, {"x": rows})[0]
    got = ort.InferenceSession(str(model)).run(None, {"x": rows})[0]
    return float(np.mean((got - want) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2048,16384")
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()
    print(machine_line())
    sizes = [int(n) for n in args.rows.split(",")]
    held = _rows(1024, args.width, 1)
    peaks: dict[str, list[float]] = {"ours, 2 workers": [], "ORT GPTQ": []}
    print(f"{'rows':>6} {'side':<16} {'to model s':>10} {'peak GiB':>9} {'output MSE':>11}")
    with tempfile.TemporaryDirectory(prefix="gptq-memory-") as tmp:
        model = _mlp(Path(tmp) / "mlp.onnx", args.width)
        for rows in sizes:
            calib = Path(tmp) / f"calib{rows}.npz"
            np.savez(calib, x=_rows(rows, args.width, 2))
            given = [
                str(model), "--calib", str(calib), "--workers", "2", "--scheme", "weight-only", "--algorithm", "gptq",
                "--layers", "none",
            ]  # fmt: skip
            run_dir, seconds, _, peak = measured_run(given, Path(tmp) / f"ours{rows}")
            fp32 = run_dir / "model.fp32.onnx"
            mse = _mse(run_dir / "model.int8.onnx", fp32, held)
            print(f"{rows:6d} {'ours, 2 workers':<16} {seconds:10.1f} {peak / 2**20:9.2f} {mse:11.3e}", flush=True)
            peaks["ours, 2 workers"].append(peak)
            theirs = Path(tmp) / f"ort{rows}.onnx"
            command = [sys.executable, str(HERE / "ort_gptq.py"), str(fp32), str(calib), str(theirs), "--batch", "64"]
            proc, _, peak = run_measured(command)
            if proc.returncode != 0:
                msg = f"ORT's GPTQ failed: {proc.stderr.strip()[-2000:]}"
                raise SystemExit(msg)
            seconds = float(proc.stdout.strip().splitlines()[-1])
            mse = _mse(theirs, fp32, held)
            print(f"{rows:6d} {'ORT GPTQ':<16} {seconds:10.1f} {peak / 2**20:9.2f} {mse:11.3e}", flush=True)
            peaks["ORT GPTQ"].append(peak)
    for side, values in peaks.items():
        print(f"peak of {side}: {sizes[-1]} rows / {sizes[0]} rows = {values[-1] / values[0]:.2f}x")


if __name__ == "__main__":
    main()
