"""Client side of dask-quant: the public stages, and `run`, their chain.

    prepare(config)                           -> Prepared        model and data checked (headers only)
    smooth(prepared, config, client)          -> Prepared        SmoothQuant's rewrite (config.smooth_quant)
    calibrate(prepared, client, quants)       -> Calibration     statistics over the cluster (save/load: Parquet)
    quantize(calibration, quant, path)        -> QuantizedModel  ORT's quantizer; pure, no cluster
    validate(prepared, quantized, client)     -> Validation      FP32 against INT8 over the cluster
    validate_each(prepared, models, client)   -> [Validation]    several INT8 models, each pass's tasks at once
    publish(out, config, prepared, quantized, validation) -> Path   one atomic run directory
    run(config) / run_methods(config, methods)                    the chain above

Names are imported on first use, so `dask-quant --help` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "RunConfig": "config",
    "QuantConfig": "config",
    "ActivationType": "config",
    "Metric": "config",
    "Method": "methods",
    "Prepared": "stages.prepare",
    "prepare": "stages.prepare",
    "smooth": "stages.smooth",
    "Calibration": "stages.calibrate",
    "calibrate": "stages.calibrate",
    "QuantizedModel": "stages.quantize",
    "quantize": "stages.quantize",
    "Validation": "stages.validate",
    "validate": "stages.validate",
    "validate_each": "stages.validate",
    "publish": "stages.publish",
    "RunResult": "job",
    "run": "job",
    "run_methods": "job",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
