"""End to end against onnxruntime.quantization.quantize_static, same data, same options.

    python benchmarks/end_to_end.py [--repeats 3]

Calibration set: 1,472 digits samples (the training and calibration splits of
scikit-learn's load_digits, as data/make_digits.py makes them; a multiple of
the 64-row batches ORT's histogram calibrators need). For minmax, percentile
and entropy, alternating, it times
  - quantize_static in this process (ORT's default threads), fed 64-row batches;
  - dask-quant's pipeline.run on a running LocalCluster of 2 single-threaded
    workers, chunks of 64 rows (cluster start-up printed separately);
and scores both INT8 models on the held-out digits (accuracy, top-1 agreement).
Options are ORT's defaults where ORT lets none be set through quantize_static:
QDQ, per-tensor int8 weights, int8 activations; entropy with ORT's 128 bins;
percentile 99.999 on |x| (symmetric), 2048 bins.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

ROWS, BATCH = 1472, 64
METHODS = {
    # method: (our QuantConfig overrides, ORT CalibrationMethod name, ORT extra_options)
    "minmax": ({}, "MinMax", {}),
    "percentile": ({"symmetric": True, "percentile": 99.999, "num_bins": 2048}, "Percentile", {}),
    "entropy": ({"num_bins": 128, "num_quantized_bins": 128}, "Entropy", {}),
}


def calibration_set(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from make_digits import load_split

    (x_train, _), calib, _ = load_split()
    path = folder / "calib.npy"
    np.save(path, np.concatenate([x_train, calib])[:ROWS])
    return path


class Batches:
    def __init__(self, x: np.ndarray) -> None:
        self.starts = iter(range(0, len(x), BATCH))
        self.x = x

    def get_next(self):
        start = next(self.starts, None)
        return None if start is None else {"input": self.x[start : start + BATCH]}


def reference(model: Path, data: Path, method: str, out: Path) -> float:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    _, ort_method, extra = METHODS[method]
    start = time.perf_counter()
    quantize_static(
        str(model),
        str(out),
        Batches(np.load(data)),
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, ort_method),
        extra_options=extra,
    )
    return time.perf_counter() - start


def ours(client, model: Path, data: Path, method: str, out: Path) -> tuple[float, Path]:
    from pipeline.config import QuantConfig, RunConfig
    from pipeline.job import run

    overrides, _, _ = METHODS[method]
    quant = QuantConfig(method=method, per_channel=False, activation_type="int8", **overrides)
    start = time.perf_counter()
    result = run(RunConfig(model=model, calib=data, out=out, chunk_size=BATCH, quant=quant), client=client)
    return time.perf_counter() - start, result.run_dir / "model.int8.onnx"


def scores(fp32: Path, int8: Path, val: Path) -> tuple[float, float]:
    import onnxruntime as ort

    with np.load(val) as data:
        x, labels = data["input"], data["labels"]
    a = ort.InferenceSession(str(fp32)).run(None, {"input": x})[0].argmax(1)
    b = ort.InferenceSession(str(int8)).run(None, {"input": x})[0].argmax(1)
    return float((b == labels).mean()), float((a == b).mean())


def main() -> None:
    import contextlib
    import io

    from distributed import Client, LocalCluster

    from pipeline.builtin import MODEL, VAL, builtin_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice, once per call
    print(machine_line())
    model, val = builtin_path(MODEL), builtin_path(VAL)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = calibration_set(tmp)
        start = time.perf_counter()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(cluster)
        print(
            f"{ROWS} calibration samples; LocalCluster of 2 workers started in {time.perf_counter() - start:.2f} s "
            "(not counted below)"
        )
        print(f"{'method':11} {'ORT s':>8} {'dask-quant s':>13} {'speed-up':>9}   INT8 accuracy ORT / ours   agreement")
        try:
            for method in METHODS:
                ref_times, our_times = [], []
                for i in range(args.repeats):
                    ref_model = tmp / f"ref-{method}-{i}.onnx"
                    with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress
                        ref_times.append(reference(model, data, method, ref_model))
                    seconds, our_model = ours(client, model, data, method, tmp / "runs")
                    our_times.append(seconds)
                ref_acc, ref_agree = scores(model, ref_model, val)
                our_acc, our_agree = scores(model, our_model, val)
                r, o = statistics.median(ref_times), statistics.median(our_times)
                print(
                    f"{method:11} {r:8.2f} {o:13.2f} {r / o:8.2f}x   {100 * ref_acc:6.2f}% / {100 * our_acc:6.2f}%"
                    f"          {100 * ref_agree:.2f}% / {100 * our_agree:.2f}%"
                )
        finally:
            client.close()
            cluster.close()
    print("goal: dask-quant at least 1.5x faster for the histogram methods, at equal or better INT8 accuracy")


if __name__ == "__main__":
    main()
