"""The built-in default: the digits CNN and its calibration/validation splits."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MODEL = "digits_cnn.onnx"
CALIB = "digits_calib.npy"
VAL = "digits_val.npz"


def builtin_path(name: str) -> Path:
    """Path of a file shipped in the `dask_quant.data` package (made by data/make_digits.py)."""
    return Path(str(resources.files("dask_quant.data") / name))
