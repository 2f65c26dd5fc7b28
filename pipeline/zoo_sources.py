"""Where a zoo model's files come from: the manifest's paths, or what its builder makes (once) in the cache."""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Callable
from pathlib import Path

from dask_quant.pipeline.zoo_manifest import ZooModel
from dask_quant.tasks.errors import DaskQuantError, InputError

CACHE = ".zoo-cache"


def made_files(model: ZooModel, out: Path, log: Callable[[str], None]) -> dict[str, str | None]:
    """The model's files: from the manifest, or made by its builder (InputError with what to do)."""
    if model.builder is None:
        return {"model": str(model.model), "calib": str(model.calib), "val": model.val and str(model.val)}
    module_name, function_name = model.builder.split(":")
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except ImportError as exc:
        msg = (
            f"model {model.name!r}: its builder {model.builder} cannot be imported ({exc}); "
            "install what it needs (the built-in zoo's builders: pip install 'dask-quant[zoo]')"
        )
        raise InputError(msg) from None
    except AttributeError:
        msg = f"model {model.name!r}: module {module_name} has no function {function_name!r}; fix 'builder'"
        raise InputError(msg) from None
    folder = (out / CACHE / model.name).resolve()  # workers resolve paths from their own folder
    folder.mkdir(parents=True, exist_ok=True)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # a builder's prints join the log, not the command's output
            made = builder(folder)
    except DaskQuantError:
        raise
    except ImportError as exc:
        msg = (
            f"model {model.name!r}: its builder {model.builder} needs a package that is not installed ({exc}); "
            "the built-in zoo's builders: pip install 'dask-quant[zoo]'"
        )
        raise InputError(msg) from None
    except Exception as exc:  # a builder is user code: its failure is this model's error, not the zoo's  # noqa: BLE001
        msg = f"model {model.name!r}: its builder {model.builder} failed: {type(exc).__name__}: {exc}"
        raise InputError(msg) from None
    finally:
        for line in printed.getvalue().splitlines():
            log(f"builder: {line}")
    if not isinstance(made, dict):
        msg = f"model {model.name!r}: its builder {model.builder} returned {type(made).__name__}, not a dict of paths"
        raise InputError(msg)
    files = {name: made.get(name) and str(Path(made[name]).resolve()) for name in ("model", "calib", "val")}
    for name in ("model", "calib"):
        if not files[name] or not (Path(files[name]).is_file() or name != "model" and Path(files[name]).is_dir()):
            msg = f"model {model.name!r}: its builder {model.builder} returned no {name} file ({files[name]})"
            raise InputError(msg)
    return files
