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
