"""Validation with per-layer error against the inference it needs, on the same workers.

    python benchmarks/validation_speed.py [--models detector,minilm] [--images 8] [--repeats 2]

For each model, on one LocalCluster of 2 single-threaded workers, alternated,
medians of --repeats:
  validate  the staged API's validate() with per-layer error (the default),
            and with per_layer=False, over the validation set;
  floor     the inference that validation runs, with nothing else: per chunk,
            both models as deployed (the metric pass) and both with every
            compared tensor exposed and graph optimisations off (the per-layer
            pass), through the same cached sessions and row slices; then the
            same latency measurement. One Dask graph, same chunks, same workers.
Goal: validate with per-layer error at most 2x the floor.

Models:
  detector  built here (torch): an encoder-decoder CNN for 640x640 images
            (stride-2 stem, five residual stages of 6 to 24 blocks down to 1/64, a decoder with
            skip connections back to 1/2, a one-channel score map), a few
            hundred quantized activations; calibrated with MinMax on
            --images smooth random images, validated on as many others.
  minilm    all-MiniLM-L6-v2 (data/make_minilm.py, the `bench` extra; cached
            under benchmarks/.cache), 256 sentences, as in end_to_end.py.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import MINILM_MISSING, machine_line, minilm_cache  # noqa: E402

CHUNK = 2  # detector images per chunk (each exposes hundreds of MiB)
MINILM_ROWS = 256
MINILM_CHUNK = 32


def build_detector(path: Path) -> None:
    import torch
    from torch import nn

    def block(channels: int) -> nn.Module:
        class Residual(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.a = nn.Conv2d(channels, channels, 3, padding=1)
                self.b = nn.Conv2d(channels, channels, 3, padding=1)

            def forward(self, x):
                return torch.relu(x + self.b(torch.relu(self.a(x))))

        return Residual()

    class Detector(nn.Module):
        def __init__(self, widths=(16, 24, 32, 48, 64, 96), blocks=(6, 12, 24, 24, 12)) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, widths[0], 3, stride=2, padding=1)
            self.down = nn.ModuleList(
                nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
            self.stages = nn.ModuleList(
                nn.Sequential(*[block(w) for _ in range(n)]) for w, n in zip(widths[1:], blocks, strict=True)
            )
            self.lateral = nn.ModuleList(nn.Conv2d(w, widths[0], 1) for w in widths)
            self.smooth = nn.ModuleList(nn.Conv2d(widths[0], widths[0], 3, padding=1) for _ in widths[:-1])
            self.head = nn.Conv2d(widths[0], 1, 1)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            skips = [x]
            for down, stage in zip(self.down, self.stages, strict=True):
                x = stage(torch.relu(down(x)))
                skips.append(x)
            y = self.lateral[-1](skips[-1])
            for level in range(len(skips) - 2, -1, -1):
                y = nn.functional.interpolate(y, scale_factor=2.0, mode="nearest") + self.lateral[level](skips[level])
                y = torch.relu(self.smooth[level](y))
            return torch.sigmoid(self.head(y))

    torch.manual_seed(0)
    model = Detector().eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 640, 640),),
        str(path),
        input_names=["image"],
        output_names=["score"],
        dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def smooth_images(count: int, seed: int) -> np.ndarray:
    """Images with structure at several scales (sums of upsampled noise), in [0, 1]."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 3, 640, 640), np.float32)
    for cells in (5, 20, 80, 640):
        noise = rng.random((count, 3, cells, cells), dtype=np.float32)
        images += np.repeat(np.repeat(noise, 640 // cells, axis=2), 640 // cells, axis=3)
    return images / 4.0


def detector_case(tmp: Path, images: int):
    from dask_quant.pipeline.config import QuantConfig, RunConfig

    model = tmp / "detector.onnx"
    build_detector(model)
    np.savez(tmp / "detector_calib.npz", image=smooth_images(images, 1))
    np.savez(tmp / "detector_val.npz", image=smooth_images(images, 2))
    config = RunConfig(
        model=model, calib=tmp / "detector_calib.npz", val=tmp / "detector_val.npz", chunk_size=CHUNK, out=tmp / "out"
    )
    return "detector", config, QuantConfig(), CHUNK


def minilm_case(tmp: Path):
    from dask_quant.pipeline.config import QuantConfig, RunConfig

    cache = minilm_cache()
    if cache is None:
        return MINILM_MISSING
    with np.load(cache / "minilm_val.npz") as data:
        np.savez(tmp / "minilm_val.npz", **{name: data[name][:MINILM_ROWS] for name in data.files})
    with np.load(cache / "minilm_calib.npz") as data:
        np.savez(tmp / "minilm_calib.npz", **{name: data[name][:MINILM_ROWS] for name in data.files})
    excluded = tuple((cache / "minilm_exclude.txt").read_text().split())
    quant = QuantConfig(per_channel=True, activation_type="uint8", op_types=("MatMul",), exclude_nodes=excluded)
    config = RunConfig(
        model=cache / "minilm.onnx", calib=tmp / "minilm_calib.npz", val=tmp / "minilm_val.npz",
        chunk_size=MINILM_CHUNK, out=tmp / "out",
    )  # fmt: skip
    return "minilm", config, quant, MINILM_CHUNK


def inference_only(chunk, fp32, int8, pairs, output) -> int:
    """The inference one validation chunk runs, and nothing else; the rows seen."""
    from dask_quant.tasks.chunks import read_feeds
    from dask_quant.tasks.layer_error import exposing_runs
    from dask_quant.tasks.sessions import exposed_runs, run_in_batches, session_for

    feeds = read_feeds(chunk)
    for model in (fp32, int8):  # the metric pass: as deployed
        run_in_batches(session_for(model), [output] if output else None, feeds, chunk.feeding)
    runs = exposing_runs(chunk, feeds, fp32, (int8,), (pairs,))  # the per-layer pass's own sessions
    return sum(rows for rows, _, _ in exposed_runs(runs, feeds, feeding=chunk.feeding))


def floor(client, prepared, quantized, chunk_size: int) -> float:
    import onnx

    from dask_quant.pipeline.layers import quantized_layers
    from dask_quant.pipeline.stages.prepare import dataset_chunks
    from dask_quant.pipeline.stages.validate import LATENCY_REPEATS
    from dask_quant.tasks.latency import measure_latency
    from dask_quant.tasks.sessions import ModelRef

    chunks = dataset_chunks(prepared.val, chunk_size)
    int8 = ModelRef(str(quantized.path), quantized.sha256)
    layers = quantized_layers(prepared.proto, onnx.load(str(quantized.path)), dict(prepared.tensors))
    pairs = tuple((layer.tensor, layer.dequantized, layer.elem_type) for layer in layers)
    start = time.perf_counter()
    args = (prepared.model, int8, pairs, prepared.output)
    futures = [client.submit(inference_only, chunk, *args, pure=False) for chunk in chunks]
    assert sum(client.gather(futures)) == prepared.val.rows
    client.submit(measure_latency, chunks[0], prepared.model, (int8,), LATENCY_REPEATS, pure=False).result()
    return time.perf_counter() - start


def bench(client, name, config, quant, chunk_size: int, repeats: int) -> None:
    from dask_quant.pipeline import calibrate, prepare, quantize, validate

    with prepare(config) as prepared:
        calibration = calibrate(prepared, client, (quant,), chunk_size=chunk_size)
        quantized = quantize(calibration, quant, config.out.parent / f"{name}.int8.onnx")
        layers = validate(prepared, quantized, client, chunk_size=chunk_size)  # warm: sessions built once per worker
        floor(client, prepared, quantized, chunk_size)
        timings: dict[str, list[float]] = {"floor": [], "all": [], "none": []}
        for _ in range(repeats):
            timings["floor"].append(floor(client, prepared, quantized, chunk_size))
            for per_layer, key in ((True, "all"), (False, "none")):
                start = time.perf_counter()
                validate(prepared, quantized, client, chunk_size=chunk_size, per_layer=per_layer)
                timings[key].append(time.perf_counter() - start)
    t = {key: statistics.median(values) for key, values in timings.items()}
    elements = sum(row["elements"] for row in layers.layers)
    print(
        f"\n{name}: {prepared.val.rows} validation samples in chunks of {chunk_size}, {len(layers.layers)} "
        f"activations compared ({elements / 1e6:.0f} M values), median of {repeats}"
    )
    print(f"  inference floor {t['floor']:7.2f} s   validate --layers none {t['none']:7.2f} s")
    print(
        f"{name}: validate --layers all {t['all']:.2f} s = {t['all'] / t['floor']:.2f}x the inference it needs "
        "(goal: at most 2x)"
    )


def main() -> None:
    from distributed import Client

    from dask_quant.cluster.connect import local_cluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="detector,minilm")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cluster = local_cluster(2, dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(cluster)
        try:
            for model in args.models.split(","):
                case = detector_case(tmp, args.images) if model == "detector" else minilm_case(tmp)
                if isinstance(case, str):
                    print(f"\n{case}")
                    continue
                bench(client, *case, repeats=args.repeats)
        finally:
            client.close()
            cluster.close()


if __name__ == "__main__":
    main()
