"""Before any work is submitted: can every worker run dask-quant's tasks as the client would?"""

from __future__ import annotations

from tasks.errors import InputError

# What must match the client: dask-quant exactly, onnxruntime to the minor version
# (ranges and scales depend on its kernels and quantizer), the others to the major.
REQUIRED = {"dask-quant": 3, "onnxruntime": 2, "onnx": 1, "numpy": 1, "pyarrow": 1}


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
    from pipeline.versions import package_versions

    names = tuple(REQUIRED)

    def probe() -> dict[str, str | None]:
        # Not pipeline.versions.package_versions: a worker may lack dask-quant, and this nested
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
