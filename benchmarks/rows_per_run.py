"""Rows per session.run for compared outputs (tasks.sessions.ROWS_PER_RUN), side by side.

    python benchmarks/rows_per_run.py [--rows 256] [--repeats 3]

all-MiniLM-L6-v2 (data/make_minilm.py, the `bench` extra) FP32 and its INT8
model (MatMul only, MinMax, quantized by dask-quant), one intra-op thread, as a
worker runs them: --rows validation sentences through run_in_slices with
8, 16, 32 and 64 rows per run, the sizes taking turns, the fastest of
--repeats. Prints seconds per size, the ratio to 64 rows per run, and whether
the outputs are bit for bit those of 64 rows per run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import MINILM_MISSING, machine_line, minilm_cache  # noqa: E402

SIZES = (8, 16, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cache = minilm_cache()
    if cache is None:
        print(MINILM_MISSING)
        return
    from distributed import Client

    from dask_quant import pipeline as dq
    from dask_quant.pipeline.config import QuantConfig
    from dask_quant.tasks import sessions
    from dask_quant.tasks.digest import sha256_file

    print(machine_line())
    val = np.load(cache / "minilm_val.npz")
    feeds = {name: val[name][: args.rows] for name in val.files if name != "labels"}
    quant = QuantConfig(op_types=("MatMul",))
    with tempfile.TemporaryDirectory() as tmp:
        config = dq.RunConfig(model=cache / "minilm.onnx", calib=cache / "minilm_calib.npz", out=Path(tmp), quant=quant)
        with dq.prepare(config) as prepared, Client(processes=False, n_workers=1, dashboard_address=":0") as client:
            calibration = dq.calibrate(prepared, client, [quant])
            int8 = dq.quantize(calibration, quant, Path(tmp) / "int8.onnx")
            models = {"fp32": cache / "minilm.onnx", "int8": int8.path}
            for label, path in models.items():
                session = sessions.fresh_session(sessions.ModelRef(str(path), sha256_file(path)))
                names = [value.name for value in session.get_inputs()]
                given = {name: value for name, value in feeds.items() if name in names}
                seconds, outputs = {size: [] for size in SIZES}, {}
                for _ in range(args.repeats):
                    for size in SIZES:  # the sizes take turns: a noisy machine slows them alike
                        sessions.ROWS_PER_RUN = size
                        start = time.perf_counter()
                        (outputs[size],) = sessions.run_in_slices(session, None, given)
                        seconds[size].append(time.perf_counter() - start)
                base = min(seconds[64])
                for size in SIZES:
                    best = min(seconds[size])
                    same = np.array_equal(outputs[size], outputs[64])
                    print(
                        f"rows_per_run.py: {label} {args.rows} rows, {size:2d} per run: {best:.2f} s, "
                        f"{base / best:.2f}x the speed of 64 per run, outputs {'identical' if same else 'DIFFER'}"
                    )


if __name__ == "__main__":
    main()
