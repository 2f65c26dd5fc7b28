from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: the first example to reach a compiled loop (tasks/kernels.py) pays its
# one-off JIT compilation; the tests check values, never times.
settings.register_profile("dask-quant", deadline=None)
settings.load_profile("dask-quant")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/models.py, tests/reference.py

from models import build_residual_model, residual_data  # noqa: E402


@pytest.fixture(scope="session")
def residual(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(model, calibration .npz, validation .npz) of the residual test model."""
    folder = tmp_path_factory.mktemp("residual")
    model = build_residual_model(folder / "residual.onnx")
    return model, residual_data(folder / "calib.npz", 96, seed=2), residual_data(folder / "val.npz", 40, seed=3)
