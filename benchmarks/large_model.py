"""A model over 2 GiB, end to end: dask-quant beside ONNX Runtime's quantize_static on the same files.

    python benchmarks/large_model.py [--layers 33] [--width 4096] [--workers 2]

Builds a chain of MatMul+Relu layers whose weights take more than 2 GiB
(33 layers of 4096x4096 floats: 2.06 GiB, saved with external data, as such
a model must be), 64 calibration and 32 validation rows of random data, all in
a temporary folder (about 5.5 GB of disk while it runs). Then, in this one run:
`dask-quant run` on a fresh LocalCluster (preparation, calibration, the INT8
model, validation with per-layer error), and ONNX Runtime's own quantize_static
with its MinMax calibrator, in a child process, on the prepared model the run
published. Printed: wall times, the client's and the workers' peak RSS (VmHWM),
the files written and their sizes, whether both INT8 models are bit-identical
(nodes and every initializer), and what ONNX Runtime computes with the
published INT8 model loaded from the run directory by its path.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, peak_rss_kib, reset_peak_rss, run_limited  # noqa: E402

_REFERENCE = """
import json, sys, time
import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, quantize_static
from common import peak_rss_kib

args = json.loads(sys.argv[1])
rows = np.load(args["calib"])["x"]


class Rows(CalibrationDataReader):
    def __init__(self):
        self.batches = iter([{"x": rows}])

    def get_next(self):
        return next(self.batches, None)


start = time.perf_counter()
quantize_static(
    args["model"], args["out"], Rows(), calibrate_method=CalibrationMethod.MinMax, per_channel=True,
    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, use_external_data_format=True,
)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_kib": peak_rss_kib()}))
"""


def build(folder: Path, layers: int, width: int) -> Path:
    """The model (weights in model.onnx.data beside it) and its calibration and validation rows."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((width, width), dtype=np.float32) / np.float32(np.sqrt(width))
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
            helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        x = f"r{i}"
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "large",
        [value("x", TensorProto.FLOAT, ["n", width])],
        [value(x, TensorProto.FLOAT, ["n", width])],
        weights,
    )
    model = folder / "model.onnx"
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(proto, str(model), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
    np.savez(folder / "calib.npz", x=rng.standard_normal((64, width), dtype=np.float32))
    np.savez(folder / "val.npz", x=rng.standard_normal((32, width), dtype=np.float32))
    return model


def _run(model: Path, out: Path, workers: int) -> dict:
    from distributed import Client

    from dask_quant.cluster.connect import local_cluster
    from dask_quant.pipeline.config import RunConfig
    from dask_quant.pipeline.job import run

    folder = model.parent
    config = RunConfig(model=model, calib=folder / "calib.npz", val=folder / "val.npz", out=out)
    reset_peak_rss()
    start = time.perf_counter()
    with local_cluster(workers, dashboard_address=":0") as cluster, Client(cluster) as client:
        result = run(config, client=client)
        peaks = client.run(peak_rss_kib)
    return {"dir": result.run_dir, "seconds": time.perf_counter() - start, "client": peak_rss_kib(), "workers": peaks}


def _signature(path: Path):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    nodes = [node.SerializeToString() for node in proto.graph.node]
    return nodes, {init.name: numpy_helper.to_array(init).tobytes() for init in proto.graph.initializer}


def _files(folder: Path) -> str:
    return ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(folder.glob("model.*")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=33)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="dask-quant-large-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "given").mkdir()
        model = build(tmp / "given", args.layers, args.width)
        weights = (tmp / "given" / "model.onnx.data").stat().st_size
        print(f"model: {args.layers} MatMul layers of {args.width}x{args.width}, weights {weights / 2**30:.2f} GiB")
        ours = _run(model, tmp / "runs", args.workers)
        run_dir = ours["dir"]
        record = json.loads((run_dir / "run.json").read_text())
        workers = ", ".join(f"{kib / 2**20:.1f}" for kib in sorted(ours["workers"].values()))
        print(
            f"dask-quant run ({args.workers} workers): {ours['seconds']:.0f} s, client peak "
            f"{ours['client'] / 2**20:.1f} GiB, worker peaks {workers} GiB; mean cosine "
            f"{record['summary']['mean_cosine']:.5f}; files: {_files(run_dir)}"
        )
        ref = tmp / "ref" / "model.int8.onnx"
        ref.parent.mkdir()
        script = {"model": str(run_dir / "model.fp32.onnx"), "calib": str(tmp / "given" / "calib.npz"), "out": str(ref)}
        theirs = run_limited(_REFERENCE, script, 2**40, "quantize_static")
        print(
            f"ORT quantize_static on the published model.fp32.onnx: {theirs['seconds']:.0f} s, peak "
            f"{theirs['peak_kib'] / 2**20:.1f} GiB; files: {_files(ref.parent)}"
        )
        same = _signature(ref) == _signature(run_dir / "model.int8.onnx")
        print(f"INT8 models bit-identical (nodes and every initializer): {same}")
        import onnxruntime as ort

        session = ort.InferenceSession(str(run_dir / "model.int8.onnx"), providers=["CPUExecutionProvider"])
        rows = np.load(tmp / "given" / "val.npz")["x"][:4]
        output = session.run(None, {"x": rows})[0]
        print(
            f"the published INT8 model, loaded by path: output {output.shape}, finite {bool(np.isfinite(output).all())}"
        )


if __name__ == "__main__":
    main()
