"""End to end against onnxruntime.quantization.quantize_static, same data, same options.

    python benchmarks/end_to_end.py [--models digits,minilm] [--repeats 3] [--minilm-rows 1024]

For minmax, percentile and entropy, alternating, it times
  - quantize_static (ORT's default threads), fed batches of 64 rows, in a child
    process of its own so its peak memory can be read and capped
    (--reference-limit-gib; it is stopped there, not allowed to take the
    machine down, and the table says so);
  - dask-quant's pipeline.run on a running LocalCluster of 2 single-threaded
    workers whose cached ORT sessions are dropped before each run, chunks of
    64 rows (cluster start-up and one-time imports not counted);
and scores both INT8 models on held-out data against the FP32 model.

Models:
  digits  the built-in CNN; 1,472 calibration samples (the training and
          calibration splits of data/make_digits.py); QDQ, per-tensor int8
          weights and activations (ORT's quantize_static defaults).
  minilm  all-MiniLM-L6-v2 built by data/make_minilm.py (needs the `bench`
          extra; cached under benchmarks/.cache); --minilm-rows sentences of
          64 tokens; MatMul only, without the six FFN down-projections
          (data/make_minilm.py says why), per-channel int8 weights, uint8
          activations; scored by mean cosine of the embeddings. One repeat
          (--minilm-repeats): each run takes minutes here.
Histogram options: entropy with ORT's 128 bins; percentile 99.999 on |x|,
2048 bins, symmetric activations (ORT: ActivationSymmetric).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import MINILM_MISSING, machine_line, minilm_cache, peak_rss_kib, reset_peak_rss, run_limited  # noqa: E402

BATCH = 64
DIGITS_ROWS = 1472
METHODS = {
    # method: (our QuantConfig overrides, ORT CalibrationMethod name, ORT extra_options)
    "minmax": ({}, "MinMax", {}),
    # ORT's percentile calibrator takes |x| by default, its quantizer is asymmetric unless told:
    # --symmetric is both, so ORT is told.
    "percentile": (
        {"symmetric": True, "percentile": 99.999, "num_bins": 2048},
        "Percentile",
        {"ActivationSymmetric": True},
    ),
    "entropy": ({"num_bins": 128, "num_quantized_bins": 128}, "Entropy", {}),
}


@dataclass
class Case:
    name: str
    model: Path
    calib: Path  # .npz, one array per input
    val: Path
    per_channel: bool
    activation_type: str  # ours; ORT's QuantType is derived
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    metric: str = "accuracy"  # or "cosine"
    repeats: int = 3
    extra: dict = field(default_factory=dict)


def digits_case(tmp: Path, repeats: int) -> Case:
    sys.path.insert(0, str(HERE.parent / "data"))
    from make_digits import load_split

    from dask_quant.pipeline.builtin import MODEL, VAL, builtin_path

    (x_train, _), calib, _ = load_split()
    path = tmp / "digits_calib.npz"
    np.savez(path, input=np.concatenate([x_train, calib])[:DIGITS_ROWS])
    return Case("digits", builtin_path(MODEL), path, builtin_path(VAL), False, "int8", repeats=repeats)


def minilm_case(tmp: Path, rows: int, repeats: int) -> Case | str:
    """The MiniLM case, or why it cannot run here."""
    cache = minilm_cache()
    if cache is None:
        return MINILM_MISSING
    with np.load(cache / "minilm_calib.npz") as data:
        if rows > len(data["input_ids"]) or rows % BATCH:
            return f"minilm: --minilm-rows must be a multiple of {BATCH} up to {len(data['input_ids'])}"
        path = tmp / "minilm_calib.npz"
        np.savez(path, **{name: data[name][:rows] for name in data.files})
    excluded = tuple((cache / "minilm_exclude.txt").read_text().split())
    return Case(
        "minilm", cache / "minilm.onnx", path, cache / "minilm_val.npz", True, "uint8",
        op_types=("MatMul",), exclude_nodes=excluded, metric="cosine", repeats=repeats,
    )  # fmt: skip


# The reference, in a child process: quantize_static, then its time and peak RSS as JSON.
REFERENCE = """
import contextlib, io, json, logging, sys, time
import numpy as np
from common import peak_rss_kib
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
args = json.loads(sys.argv[1])
logging.getLogger().setLevel(logging.ERROR)
with np.load(args["calib"]) as data:
    arrays = {name: data[name] for name in data.files}
rows = len(next(iter(arrays.values())))
batches = iter([{k: v[i : i + args["batch"]] for k, v in arrays.items()} for i in range(0, rows, args["batch"])])
class Reader:
    def get_next(self):
        return next(batches, None)
start = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress
    quantize_static(
        args["model"], args["out"], Reader(), quant_format=QuantFormat.QDQ, per_channel=args["per_channel"],
        activation_type=getattr(QuantType, args["activation"]), weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, args["method"]),
        op_types_to_quantize=args["op_types"] or None, nodes_to_exclude=args["exclude"],
        extra_options=args["extra"],
    )
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_kib": peak_rss_kib()}))
"""


def reference(case: Case, method: str, out: Path, limit_kib: int) -> dict:
    """{'seconds', 'peak_kib'} of quantize_static, or {'stopped_kib'} if it outgrew the limit."""
    args = {
        "model": str(case.model), "calib": str(case.calib), "out": str(out), "batch": BATCH,
        "per_channel": case.per_channel, "activation": "QInt8" if case.activation_type == "int8" else "QUInt8",
        "method": METHODS[method][1], "op_types": list(case.op_types), "exclude": list(case.exclude_nodes),
        "extra": METHODS[method][2],
    }  # fmt: skip
    return run_limited(REFERENCE, args, limit_kib, f"quantize_static on {case.name}/{method}")


def ours(client, case: Case, method: str, out: Path) -> tuple[float, Path, int]:
    """Seconds, the INT8 model, and the largest worker's peak RSS (KiB) during the run."""
    from dask_quant.pipeline.config import QuantConfig, RunConfig
    from dask_quant.pipeline.job import run

    quant = QuantConfig(
        method=method,
        per_channel=case.per_channel,
        activation_type=case.activation_type,
        op_types=case.op_types,
        exclude_nodes=case.exclude_nodes,
        **METHODS[method][0],
    )
    from dask_quant.tasks.sessions import drop_sessions

    # No ORT session left on the workers from the run before, as in a new `dask-quant run`:
    # otherwise the method that comes second reuses the first one's pass-2 sessions.
    client.run(drop_sessions)
    client.run(reset_peak_rss)
    start = time.perf_counter()
    # prepare=False: quantize exactly the model ORT's quantize_static is given beside it.
    config = RunConfig(model=case.model, calib=case.calib, out=out, chunk_size=BATCH, quant=quant, prepare=False)
    result = run(config, client=client)
    seconds = time.perf_counter() - start
    return seconds, result.run_dir / "model.int8.onnx", max(client.run(peak_rss_kib).values())


def score(case: Case, int8: Path) -> str:
    """Held-out accuracy (digits) or mean cosine of the embeddings (MiniLM) of an INT8 model."""
    import onnxruntime as ort

    with np.load(case.val) as data:
        feeds = {name: data[name] for name in data.files if name != "labels"}
        labels = data["labels"] if "labels" in data.files else None
    a = ort.InferenceSession(str(case.model)).run(None, feeds)[0]
    b = ort.InferenceSession(str(int8)).run(None, feeds)[0]
    if case.metric == "accuracy":
        return f"accuracy {100 * float((b.argmax(1) == labels).mean()):.2f}%"
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return f"cosine {float(cosine.mean()):.4f}"


def bench(client, case: Case, tmp: Path, limit_kib: int) -> None:
    rows = len(next(iter(np.load(case.calib).values())))
    print(f"\n{case.name}: {rows} calibration samples, {case.repeats} repeat(s), medians")
    print(
        f"{'method':11} {'ORT s':>8} {'ORT peak':>9} {'dask-quant s':>13} {'worker peak':>12} {'speed-up':>9}"
        "   INT8 vs FP32: ORT / ours"
    )
    ours_median = {}
    for method in METHODS:
        refs, our_times, our_peak = [], [], 0
        for i in range(case.repeats):
            ref_model = tmp / f"ref-{case.name}-{method}-{i}.onnx"
            refs.append(reference(case, method, ref_model, limit_kib))
            seconds, our_model, peak_kib = ours(client, case, method, tmp / "runs")
            our_times.append(seconds)
            our_peak = max(our_peak, peak_kib)
        o, mine = statistics.median(our_times), f"{our_peak / 2**20:.1f} GiB"
        ours_median[method] = o
        if any("stopped_kib" in r for r in refs):
            stopped = max(r.get("stopped_kib", 0) for r in refs) / 2**20
            print(
                f"{method:11} {'-':>8} {f'>{stopped:.1f} GiB':>9} {o:13.2f} {mine:>12} {'-':>9}   "
                f"ORT stopped at the memory limit / {score(case, our_model)}"
            )
            continue
        r = statistics.median(x["seconds"] for x in refs)
        peak = max(x["peak_kib"] for x in refs) / 2**20
        print(
            f"{method:11} {r:8.2f} {f'{peak:.1f} GiB':>9} {o:13.2f} {mine:>12} {r / o:8.2f}x   "
            f"{score(case, ref_model)} / {score(case, our_model)}"
        )
    entropy, percentile = (ours_median[m] / ours_median["minmax"] for m in ("entropy", "percentile"))
    print(
        f"{case.name}: dask-quant's entropy {entropy:.2f}x, percentile {percentile:.2f}x minmax's time (goal: at most "
        f"2.2x); percentile/entropy {ours_median['percentile'] / ours_median['entropy']:.2f} (goal: at most 1)"
    )


def _import_kernels() -> None:
    import dask_quant.tasks.kernels  # noqa: F401


def main() -> None:
    from distributed import Client

    from dask_quant.cluster.connect import local_cluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,minilm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--minilm-rows", type=int, default=1024)
    parser.add_argument("--minilm-repeats", type=int, default=1)
    parser.add_argument("--reference-limit-gib", type=float, default=18.0)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    print(machine_line())
    limit_kib = int(args.reference_limit_gib * 2**20)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases: list[Case | str] = []
        for name in args.models.split(","):
            if name == "digits":
                cases.append(digits_case(tmp, args.repeats))
            elif name == "minilm":
                cases.append(minilm_case(tmp, args.minilm_rows, args.minilm_repeats))
            else:
                parser.error(f"unknown model {name!r}; choose from digits, minilm")
        # One-time imports on the client (numba, the range searches), not charged to whichever method runs first.
        import dask_quant.pipeline.ranges
        import dask_quant.tasks.kernels  # noqa: F401

        start = time.perf_counter()
        cluster = local_cluster(2, dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(cluster)
        client.run(_import_kernels)
        print(f"LocalCluster of 2 workers started in {time.perf_counter() - start:.2f} s (not counted below)")
        print(f"quantize_static runs in a child process, stopped above {args.reference_limit_gib:g} GiB of RSS")
        try:
            for case in cases:
                if isinstance(case, str):
                    print(f"\n{case}")
                else:
                    bench(client, case, tmp, limit_kib)
        finally:
            client.close()
            cluster.close()
    print("\ngoal: dask-quant at least 1.5x faster for the histogram methods, at equal or better INT8 metric")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the reference child inherits it
    main()
