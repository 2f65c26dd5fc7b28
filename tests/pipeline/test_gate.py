"""The gate before publishing, on INT8 models that are wrong in ways the quantizer rarely produces."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from models import digits_paths

from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.gate import check_quantized
from dask_quant.pipeline.stages.prepare import prepare
from dask_quant.pipeline.stages.quantize import QuantizedModel
from dask_quant.tasks.digest import sha256_file
from dask_quant.tasks.errors import InputError

MODEL, CALIB, _ = digits_paths()


def _quantized(path, config):
    qparams = (SimpleNamespace(kind="activation"), SimpleNamespace(kind="weight"))
    return QuantizedModel(path, sha256_file(path), config.quant, None, {}, qparams, ())


def test_an_int8_model_onnx_runtime_cannot_load(tmp_path):
    broken = tmp_path / "broken.int8.onnx"
    broken.write_bytes(b"\x08\x07" + bytes(40))
    config = RunConfig(model=MODEL, calib=CALIB, prepare=False)
    with pytest.raises(InputError, match="the INT8 model ONNX Runtime's quantizer wrote cannot be loaded by ONNX"):
        check_quantized(config, prepare(config), _quantized(broken, config))


def test_an_int8_model_whose_outputs_are_not_finite(tmp_path):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(MODEL))
    for init in proto.graph.initializer:
        if init.name == "8.bias":
            init.CopyFrom(numpy_helper.from_array(np.full(10, np.inf, np.float32), "8.bias"))
    path = tmp_path / "inf.int8.onnx"
    onnx.save(proto, str(path))
    config = RunConfig(model=MODEL, calib=CALIB, prepare=False)
    with pytest.raises(InputError, match=r"outputs NaN or infinite values \('logits'\) on calibration rows 0..64"):
        check_quantized(config, prepare(config), _quantized(path, config))


def test_the_fp32_model_runs_only_when_an_int8_output_is_not_finite(tmp_path, monkeypatch):
    """A model whose outputs are all finite passes without the FP32 run (a run's gate costs one model's run)."""
    from dask_quant.tasks import gate, sessions
    from dask_quant.tasks.chunks import chunk_refs
    from dask_quant.tasks.npy_io import NPY_MEMBER

    model = sessions.ModelRef(str(MODEL), sha256_file(MODEL))
    (chunk, *_) = chunk_refs(str(CALIB), (("input", NPY_MEMBER),), 40, 20, sha256=sha256_file(CALIB))
    built = []
    monkeypatch.setattr(gate, "session_for", lambda m: built.append(m) or sessions.session_for(m))
    fp32 = sessions.ModelRef(str(tmp_path / "never-read.onnx"), "0" * 64)  # building it would fail
    assert gate.int8_problems(chunk, fp32, (model,)) == (None,)
    assert built == [model]
