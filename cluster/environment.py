"""Before any work is submitted: can every worker run dask-quant's tasks as the client would?"""

from __future__ import annotations

from importlib import metadata

from dask_quant.tasks.errors import InputError

# Recorded with every run (run.json).
PACKAGES = ("dask-quant", "dask", "distributed", "onnx", "onnxruntime", "numpy", "numba", "pyarrow")

# What must match the client: dask-quant exactly, onnxruntime to the minor version
# (ranges and scales depend on its kernels and quantizer), the others to the major
# (numba compiles tasks/kernels.py, whose results are exact whatever compiles them).
REQUIRED = {"dask-quant": 3, "onnxruntime": 2, "onnx": 1, "numpy": 1, "numba": 1, "pyarrow": 1}


def package_versions() -> dict[str, str | None]:
    """Python's and each of PACKAGES' version in this process (None: not installed)."""
    import platform

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def incompatibilities(client_versions: dict, worker_versions: dict[str, dict]) -> list[str]:
    """One entry per worker that lacks something, naming the worker and what it lacks."""
    problems = []
    for worker, found in sorted(worker_versions.items()):
        lacks = []
        for name, parts in REQUIRED.items():
            have, want = found.get(name), client_versions.get(name)
            if have is None:
                lacks.append(f"{name} missing")
            elif want is not None and have.split(".")[:parts] != want.split(".")[:parts]:
                lacks.append(f"{name} {have} (client has {want})")
        if lacks:
            problems.append(f"{worker}: {', '.join(lacks)}")
    return problems


def check_workers(client) -> None:
    """Raise InputError listing every worker that lacks a compatible package."""
    names = tuple(REQUIRED)

    def probe() -> dict[str, str | None]:
        # Not package_versions above: a worker may lack dask-quant, and this nested
        # function travels by value, so it runs there all the same.
        from importlib import metadata

        found = {}
        for name in names:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = None
        return found

    problems = incompatibilities(package_versions(), client.run(probe))
    if problems:
        msg = (
            "workers lack what the job needs: "
            + "; ".join(problems)
            + "; install the client's versions on every worker (pip install -c constraints.txt -e .)"
        )
        raise InputError(msg)
