"""Content keys of zoo jobs: what a job's results are a pure function of.

A job (one model, one method) is keyed by the bytes of its model and data,
its configuration, and the versions of the packages that compute it. The
chunk size and the cluster are left out on purpose: results are bit-identical
for any chunking and worker count, so they cannot change them.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

from dask_quant.pipeline.config import json_ready
from dask_quant.pipeline.zoo_manifest import ZooModel

KEY_PACKAGES = ("dask-quant", "onnxruntime", "onnx", "numpy")
KEY_PARTS = ("model", "calib", "val", "config", *KEY_PACKAGES)


def versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in KEY_PACKAGES}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def key_parts(model: ZooModel, method, files: dict[str, str | None], installed: dict[str, str]) -> dict[str, str]:
    """Each part of the key (sha256 of the model and data files, a digest of the configuration, and the
    package versions), so that a change can be named part by part."""
    from dataclasses import asdict

    config = {
        "quant": asdict(model.quant_for(method)),
        "metric": model.metric.value,
        "prepare": model.prepare,
    }
    return {
        "model": files["model"],
        "calib": files["calib"],
        "val": files.get("val") or "",
        "config": _digest(json_ready(config)),
        **installed,
    }


def job_key(parts: dict[str, str]) -> str:
    return _digest(parts)


def changed_parts(parts: dict[str, str], previous: dict[str, str]) -> list[str]:
    """The parts that differ, in KEY_PARTS order (a package as 'onnxruntime 1.31.0 -> 1.32.0')."""
    changed = []
    for name in KEY_PARTS:
        before, now = previous.get(name), parts.get(name)
        if before == now:
            continue
        changed.append(f"{name} {before} -> {now}" if name in KEY_PACKAGES else name)
    return changed
