"""Peak memory of entropy calibration: a dask-quant worker against ONNX Runtime's calibrator.

    python benchmarks/calibration_memory.py [--base 3200] [--factors 1,4,10] [--chunk-size 64]

Calibration sets of each factor x --base samples (the built-in digits
calibration split, tiled) are calibrated with the entropy method
  - by dask-quant on a fresh one-worker LocalCluster: the worker process's
    peak RSS after the job;
  - by onnxruntime's EntropyCalibrater in a fresh process fed batches of
    --chunk-size samples: that process's peak RSS.
Each side runs in its own process, so one's memory never counts for the other.
Peak RSS is VmHWM from /proc (Linux): ru_maxrss survives fork+exec and would
charge a child with its parent's peak.
Sample counts are multiples of the batch size: ORT's histogram calibrators
fail on a smaller last batch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, peak_rss_kib  # noqa: E402

ORT_SCRIPT = """
import sys
import numpy as np
from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
from dask_quant.pipeline.selection import default_op_types

model, data, batch, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
x = np.load(data, mmap_mode="r")

class Reader:
    def __init__(self):
        self.starts = iter(range(0, len(x), batch))
    def get_next(self):
        start = next(self.starts, None)
        return None if start is None else {"input": np.array(x[start:start + batch])}

calibrator = create_calibrator(model, list(default_op_types()), augmented_model_path=tmp + "/aug.onnx",
    calibrate_method=CalibrationMethod.Entropy, extra_options={"num_bins": 2048, "num_quantized_bins": 128})
calibrator.collect_data(Reader())
calibrator.compute_data()
from common import peak_rss_kib
print(peak_rss_kib())
"""


def worker_peak_kib(data: Path, chunk_size: int, out: Path) -> int:
    from distributed import Client

    from dask_quant.cluster.connect import local_cluster
    from dask_quant.pipeline.builtin import MODEL, builtin_path
    from dask_quant.pipeline.config import QuantConfig, RunConfig
    from dask_quant.pipeline.job import run

    config = RunConfig(
        model=builtin_path(MODEL),
        calib=data,
        out=out,
        chunk_size=chunk_size,
        quant=QuantConfig(method="entropy"),
        prepare=False,  # the model ORT's calibrator is given, as is
    )
    with (
        local_cluster(1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        run(config, client=client)
        peaks = client.run(peak_rss_kib)
    return int(next(iter(peaks.values())))


def ort_peak_kib(data: Path, chunk_size: int, tmp: Path) -> int:
    from dask_quant.pipeline.builtin import MODEL, builtin_path

    proc = subprocess.run(
        [sys.executable, "-c", ORT_SCRIPT, str(builtin_path(MODEL)), str(data), str(chunk_size), str(tmp)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from dask_quant.pipeline.builtin import CALIB, builtin_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=3200)
    parser.add_argument("--factors", default="1,4,10", help="comma-separated multiples of --base")
    parser.add_argument("--chunk-size", type=int, default=64)
    args = parser.parse_args()
    if args.base % args.chunk_size:
        parser.error("--base must be a multiple of --chunk-size (ORT's calibrators need equal batches)")
    print(machine_line())
    calib = np.load(builtin_path(CALIB))
    rows = {}
    factors = [int(f) for f in args.factors.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for samples in (args.base * f for f in factors):
            data = tmp / f"calib_{samples}.npy"
            np.save(data, np.resize(calib, (samples, *calib.shape[1:])))
            ours = worker_peak_kib(data, args.chunk_size, tmp / "runs")
            theirs = ort_peak_kib(data, args.chunk_size, tmp)
            rows[samples] = (ours, theirs)
            print(
                f"{samples:7d} samples: dask-quant worker peak {ours / 1024:8.1f} MiB, "
                f"onnxruntime EntropyCalibrater peak {theirs / 1024:8.1f} MiB"
            )
    (ours_1, ref_1) = rows[args.base * factors[0]]
    for factor in factors[1:]:
        ours_n, ref_n = rows[args.base * factor]
        print(
            f"{factor:3d}x the samples: dask-quant worker {ours_n / ours_1:.3f}x the peak (goal: within 1.10x), "
            f"onnxruntime {ref_n / ref_1:.3f}x"
        )


if __name__ == "__main__":
    main()
