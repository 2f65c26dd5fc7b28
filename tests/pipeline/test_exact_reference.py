"""Bit-exactness against onnxruntime.quantization.quantize_static (MinMax), zero tolerance."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from models import build_float16_model, digits_paths, load_arrays, with_fixed_batch
from onnxruntime.quantization import QuantType
from reference import model_signature, reference_model, reference_ranges

from dask_quant.pipeline.config import ActivationType, QuantConfig, RunConfig
from dask_quant.pipeline.graph import calibration_graph
from dask_quant.pipeline.ranges import activation_ranges
from dask_quant.pipeline.selection import default_op_types
from dask_quant.pipeline.stages.prepare import dataset_chunks, prepare
from dask_quant.pipeline.stages.quantize import tensors_data, write_quantized_model
from dask_quant.tasks.digest import sha256_file
from dask_quant.tasks.sessions import ModelRef
from dask_quant.tasks.validate import validate_chunk


def minmax_data(stats):
    return tensors_data(activation_ranges(stats, None, QuantConfig()), stats)


def distributed_stats(config: RunConfig):
    prepared = prepare(config)
    chunks = dataset_chunks(prepared.calib, config.chunk_size)
    graph = calibration_graph(chunks, prepared.model, prepared.tensors, split_every=2)
    (stats,) = dask.compute(graph, scheduler="sync")
    return prepared, stats


def _cases(residual):
    model, calib, _ = digits_paths()
    r_model, r_calib, _ = residual
    return {
        "digits": (model, calib, ["input"]),
        "residual": (r_model, r_calib, ["image", "extra"]),
    }


# Each of our configs beside the reference options spelled out independently (ORT's own
# defaults where we leave a choice to it, e.g. which op types to quantize).
QUANT_CONFIGS = [
    (QuantConfig(), dict(per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)),
    (
        QuantConfig(per_channel=False, activation_type=ActivationType.INT8),
        dict(per_channel=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8),
    ),
    (
        QuantConfig(symmetric=True),
        dict(
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True},
        ),
    ),
    (
        QuantConfig(fp32_outputs=("MatMul", "Gemm", "Conv")),
        dict(
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"]},
        ),
    ),
]
DEFAULT_REFERENCE = QUANT_CONFIGS[0][1]


@pytest.mark.parametrize("case", ["digits", "residual"])
@pytest.mark.parametrize(
    ("quant", "reference_options"),
    QUANT_CONFIGS,
    ids=["default", "per-tensor-int8", "symmetric-activations", "fp32-outputs"],
)
def test_model_is_bit_identical_to_quantize_static(case, quant, reference_options, residual, tmp_path):
    model, calib, names = _cases(residual)[case]
    config = RunConfig(out=tmp_path, model=model, calib=calib, chunk_size=37, quant=quant)
    prepared, stats = distributed_stats(config)
    ours = tmp_path / "ours.onnx"
    write_quantized_model(prepared.proto, minmax_data(stats), quant, ours)

    arrays = load_arrays(calib, names)
    theirs = reference_model(  # ORT on the model as prepared: what both quantizers are given
        prepared.model.path, arrays, batch=len(next(iter(arrays.values()))), kwargs=reference_options,
        out=tmp_path / "ref.onnx",
    )
    assert model_signature(ours) == model_signature(theirs)


# Each hardware preset beside ONNX Runtime's own flow for that execution provider, spelled out here.
PRESET_REFERENCES = {
    "cpu": dict(per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8),
    "tensorrt": dict(
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True},
    ),
    "qnn": None,  # get_qnn_qdq_config's StaticQuantConfig, handed to onnxruntime.quantization.quantize
}


@pytest.mark.parametrize("case", ["digits", "residual"])
@pytest.mark.parametrize("preset", sorted(PRESET_REFERENCES))
def test_each_preset_is_its_execution_providers_own_flow(case, preset, residual, tmp_path):
    """The documented options of each preset, bit for bit: for QNN, ORT's get_qnn_qdq_config and quantize(),
    as its QNN guide does it (with the op types ORT's QDQ quantizer registers, as the preset documents)."""
    from onnxruntime.quantization import quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config
    from reference import BatchReader

    model, calib, names = _cases(residual)[case]
    quant = QuantConfig(preset=preset)
    prepared, stats = distributed_stats(RunConfig(out=tmp_path, model=model, calib=calib, chunk_size=23, quant=quant))
    ours = tmp_path / "ours.onnx"
    write_quantized_model(prepared.proto, minmax_data(stats), quant, ours)
    arrays = load_arrays(calib, names)
    rows = len(next(iter(arrays.values())))
    theirs = tmp_path / "ref.onnx"
    if PRESET_REFERENCES[preset] is None:
        config = get_qnn_qdq_config(
            prepared.model.path, BatchReader(arrays, rows), op_types_to_quantize=list(default_op_types())
        )
        quantize(prepared.model.path, str(theirs), config)
    else:
        reference_model(prepared.model.path, arrays, batch=rows, kwargs=PRESET_REFERENCES[preset], out=theirs)
    assert model_signature(ours) == model_signature(theirs)


@pytest.mark.parametrize("case", ["digits", "residual"])
def test_ranges_are_bit_identical_to_ort_minmax_calibrator(case, residual, tmp_path):
    model, calib, names = _cases(residual)[case]
    prepared, stats = distributed_stats(RunConfig(out=tmp_path, model=model, calib=calib, chunk_size=16))
    reference = reference_ranges(
        prepared.model.path, load_arrays(calib, names), batch=10, op_types=list(default_op_types()), tmp=tmp_path
    )
    ours = minmax_data(stats)
    assert sorted(ours.keys()) == sorted(reference.keys())
    for name in reference.keys():
        for attr in ("lowest", "highest"):
            mine, ref = getattr(ours[name], attr), getattr(reference[name], attr)
            assert mine.dtype == ref.dtype and mine.shape == ref.shape, name
            assert np.array_equal(mine, ref), (name, attr, mine, ref)


def test_op_types_and_excluded_nodes_match_reference(residual, tmp_path):
    model, calib, _ = residual
    quant = QuantConfig(op_types=("Conv", "MatMul", "Add"), exclude_nodes=("/conv2/Conv",))
    prepared, stats = distributed_stats(RunConfig(out=tmp_path, model=model, calib=calib, chunk_size=25, quant=quant))
    ours = tmp_path / "ours.onnx"
    write_quantized_model(prepared.proto, minmax_data(stats), quant, ours)
    arrays = load_arrays(calib, ["image", "extra"])
    options = dict(DEFAULT_REFERENCE, op_types_to_quantize=["Conv", "MatMul", "Add"], nodes_to_exclude=["/conv2/Conv"])
    theirs = reference_model(prepared.model.path, arrays, batch=96, kwargs=options, out=tmp_path / "ref.onnx")
    assert model_signature(ours) == model_signature(theirs)
    import onnx

    graph = onnx.load(str(ours)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    convs = {node.name: node for node in graph.node if node.op_type == "Conv"}
    assert producer[convs["/conv1/Conv"].input[1]] == "DequantizeLinear"  # quantized weight
    assert producer.get(convs["/conv2/Conv"].input[1]) != "DequantizeLinear"  # excluded: stays float


def test_fixed_batch_model_runs_chunks_in_batches_and_matches_reference(tmp_path):
    model, calib, _ = digits_paths()
    fixed = with_fixed_batch(model, tmp_path / "batch2.onnx", 2)
    quant = QuantConfig()
    prepared, stats = distributed_stats(RunConfig(out=tmp_path, model=fixed, calib=calib, chunk_size=14, quant=quant))
    ours = tmp_path / "ours.onnx"
    write_quantized_model(prepared.proto, minmax_data(stats), quant, ours)
    theirs = reference_model(
        prepared.model.path, load_arrays(calib, ["input"]), batch=2, kwargs=DEFAULT_REFERENCE, out=tmp_path / "r.onnx"
    )
    assert model_signature(ours) == model_signature(theirs)

    chunk = dataset_chunks(prepared.calib, 14)[3]
    checked = validate_chunk(chunk, prepared.model, ModelRef(str(ours), sha256_file(ours)))
    assert checked.stats.samples == 14 and checked.stats.agreement >= 0.9


def test_float16_model_keeps_float16_ranges_like_reference(tmp_path):
    model = build_float16_model(tmp_path / "half.onnx")
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(8).normal(size=(40, 8)).astype(np.float16))
    quant = QuantConfig()
    prepared, stats = distributed_stats(RunConfig(out=tmp_path, model=model, calib=calib, chunk_size=9, quant=quant))
    assert {r.dtype for _, r in stats.ranges} == {"float16"}
    ours = tmp_path / "ours.onnx"
    write_quantized_model(prepared.proto, minmax_data(stats), quant, ours)
    arrays = load_arrays(calib, ["x"])
    theirs = reference_model(prepared.model.path, arrays, batch=40, kwargs=DEFAULT_REFERENCE, out=tmp_path / "ref.onnx")
    assert model_signature(ours) == model_signature(theirs)
