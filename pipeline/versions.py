"""Package versions recorded with every run, and checked on workers later."""

from __future__ import annotations

from importlib import metadata

PACKAGES = ("dask-quant", "dask", "distributed", "onnx", "onnxruntime", "numpy", "pyarrow")


def package_versions() -> dict[str, str | None]:
    import platform

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
