"""--chunk-size auto under small workers: MiniLM and the digits CNN on workers of --memory-limit.

    python benchmarks/auto_chunks_memory.py [--memory-limit 1GiB] [--workers 2] [--models minilm,digits]

Each model runs twice, side by side in this one process, each on a fresh
LocalCluster: with --chunk-size auto on workers of --memory-limit (calibration
and validation, per-layer pass included), then with --chunk-size 64 on workers
without a limit. Printed per model: the rows auto chose, every worker's peak
RSS (VmHWM, read on the workers after the job) against the limit, how many
workers died (a restarted worker has a new address), and whether qparams.parquet
and calibration.parquet are identical to the 64-row run's (and without their
`elements` column, which counts a tensor without a batch axis, MiniLM's position
embeddings, once per ONNX Runtime run, so by chunking). MiniLM needs the
`bench` extra (data/make_minilm.py builds it once into benchmarks/.cache).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MINILM_MISSING, machine_line, minilm_cache, peak_rss_kib  # noqa: E402


def _models(names: list[str]) -> dict[str, tuple[Path, Path, Path]]:
    from dask_quant.pipeline.builtin import CALIB, MODEL, VAL, builtin_path

    found = {}
    for name in names:
        if name == "digits":
            found[name] = (builtin_path(MODEL), builtin_path(CALIB), builtin_path(VAL))
        elif name == "minilm":
            cache = minilm_cache()
            if cache is None:
                print(MINILM_MISSING)
                continue
            found[name] = (cache / "minilm.onnx", cache / "minilm_calib.npz", cache / "minilm_val.npz")
        else:
            msg = f"unknown model {name!r}: choose minilm or digits"
            raise SystemExit(msg)
    return found


def _job(model: Path, calib: Path, val: Path, out: Path, chunk_size, memory_limit: str, workers: int) -> dict:
    """Run one job on a fresh LocalCluster; its run directory, chunking, and the workers' peaks and deaths."""
    from distributed import Client

    from dask_quant.cluster.connect import local_cluster
    from dask_quant.pipeline.config import RunConfig
    from dask_quant.pipeline.job import run

    config = RunConfig(model=model, calib=calib, val=val, out=out, chunk_size=chunk_size)
    with (
        local_cluster(workers, dashboard_address=":0", memory_limit=memory_limit) as cluster,
        Client(cluster) as client,
    ):
        started = set(client.scheduler_info()["workers"])
        result = run(config, client=client)
        peaks = client.run(peak_rss_kib)
        now = set(client.scheduler_info()["workers"])
    import json

    record = json.loads((result.run_dir / "run.json").read_text())
    return {"dir": result.run_dir, "chunking": record["chunking"], "peaks": peaks, "restarted": len(now - started)}


def _same(a: Path, b: Path, drop: tuple[str, ...] = ()) -> bool:
    import pyarrow.parquet as pq

    names = ("qparams.parquet", "calibration.parquet")
    dropped = [*drop, "run_id"]
    return all(pq.read_table(a / n).drop(dropped) == pq.read_table(b / n).drop(dropped) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", default="minilm,digits")
    args = parser.parse_args()
    from dask.utils import parse_bytes

    limit_mib = parse_bytes(args.memory_limit) / 2**20
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, (model, calib, val) in _models(args.models.split(",")).items():
            auto = _job(model, calib, val, tmp / name / "auto", None, args.memory_limit, args.workers)
            fixed = _job(model, calib, val, tmp / name / "fixed", 64, "0", args.workers)
            peaks = ", ".join(f"{kib / 1024:.0f}" for kib in sorted(auto["peaks"].values()))
            print(
                f"{name}: auto chose {auto['chunking']['rows']} rows; worker peaks {peaks} MiB of {limit_mib:.0f} "
                f"MiB ({max(auto['peaks'].values()) / 1024 / limit_mib:.2f}x the limit); workers restarted: "
                f"{auto['restarted']}; qparams and calibration identical to --chunk-size 64: "
                f"{_same(auto['dir'], fixed['dir'])} (without `elements`: "
                f"{_same(auto['dir'], fixed['dir'], ('elements',))})"
            )


if __name__ == "__main__":
    main()
