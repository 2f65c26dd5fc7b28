"""GPTQ's solve for one MatMul weight, a task: from the weight and its input's Gram matrix to a MatMulNBits
node.

The solve is ours (`gptq_codes`): ONNX Runtime 1.32's vendored GPTQ
(neural_compressor/weight_only.py `gptq`) reads the error-spreading factor by
column (`Hinv1[i:, i]`) where the algorithm reads it by row, and since the
factor is upper triangular every update it makes is zero: its result does not
depend on H at all and equals round-to-nearest on its own grid (shown in
tests/tasks/test_gptq_solve.py). The packing is ORT's
(`make_matmul_weight_only_node`), with the zero points packed row by row.
ORT's `gptq_quantize` also keeps every calibration input in memory and runs the
whole model once per distinct MatMul input; here H comes from one distributed
pass (tasks.gram) and each weight is its own task.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from dask_quant.tasks.errors import Refused
from dask_quant.tasks.gram import Grams
from dask_quant.tasks.sessions import ModelRef

GPTQ_LAZY_COLUMNS = 128  # rows updated together (the reference code's "blocksize")
GPTQ_DAMPING = 0.01  # of H's mean diagonal, added to it


@dataclass(frozen=True)
class MatMulTarget:
    """A MatMul whose constant 2-D weight GPTQ quantizes: its name, inputs (activation, weight) and outputs."""

    name: str
    activation: str
    weight: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class SolvedNode:
    """The MatMulNBits node that replaces `target`, and its new initializers (serialized protos)."""

    target: MatMulTarget
    node: bytes
    initializers: tuple[bytes, ...]


@functools.lru_cache(maxsize=1)
def _model_proto(model: ModelRef):
    """The model, read once per worker process for all its weights' tasks (bytes checked against the sha256)."""
    import onnx

    from dask_quant.tasks.sessions import SessionSpec, _model_bytes

    return onnx.load_from_string(_model_bytes(model, SessionSpec()))


def read_weight(model: ModelRef, name: str) -> np.ndarray:
    """Initializer `name` of `model` (from its external data file when it has one)."""
    from pathlib import Path

    from onnx import numpy_helper

    proto = _model_proto(model)
    init = next(i for i in proto.graph.initializer if i.name == name)
    folder = str(Path(model.path).resolve().parent) if model.url is None else ""
    return numpy_helper.to_array(init, folder)


def solve_gptq(grams: Grams | Refused, model: ModelRef, target: MatMulTarget, bits: int, block_size: int):
    """GPTQ of `target`'s weight with H from `grams`, packed into a MatMulNBits node (asymmetric, with zero
    points, `block_size` weights per block along the input axis): a SolvedNode, or the Refused of a chunk
    whose data was refused, passed on."""
    if isinstance(grams, Refused):
        return grams
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.neural_compressor.weight_only import make_matmul_weight_only_node

    weight = read_weight(model, target.weight)
    codes, scales, zeros = gptq_codes(weight, grams.get(target.activation).hessian(), bits, block_size)
    rows, columns = weight.shape
    blocks = len(scales)
    padded = np.empty((blocks * block_size, columns), dtype=np.uint8)
    padded[:rows] = codes
    padded[rows:] = zeros[-1]  # MatMulNBits pads K to whole blocks: the pad's codes dequantize to 0
    # MatMulNBits' layout: output column by output column, each column's blocks in order.
    q_weight = padded.T.reshape(columns * blocks, block_size)
    matmul = helper.make_node("MatMul", [target.activation, target.weight], list(target.outputs), name=target.name)
    node, inits = make_matmul_weight_only_node(
        node=matmul,
        weight_shape=weight.shape,
        num_bits=bits,
        group_size=block_size,
        k_blocks=blocks,
        q_weight=q_weight,
        scale=np.ascontiguousarray(scales.T).astype(weight.dtype),
        zero_point=None,  # packed below, row by row
    )
    if not target.name:  # ORT would call every unnamed one "_Q4"
        node.name = f"{target.outputs[0]}_Q{bits}"
    zp = numpy_helper.from_array(packed_zero_points(np.ascontiguousarray(zeros.T)), f"{target.weight}_zp")
    node.input.append(zp.name)
    inits.insert(1, zp)  # where ORT's packing puts it: after the scales, before the weights
    return SolvedNode(target, node.SerializeToString(), tuple(init.SerializeToString() for init in inits))


def _grid(group: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric scale and zero point per column of `group` (rows x columns), its range widened to hold 0."""
    low = np.minimum(group.min(axis=0), 0.0)
    high = np.maximum(group.max(axis=0), 0.0)
    flat = (low == 0) & (high == 0)
    low[flat], high[flat] = -1.0, 1.0
    scale = (high - low) / top
    return scale, np.round(-low / scale)


def gptq_codes(
    weight: np.ndarray, hessian: np.ndarray, bits: int, group_size: int, lazy: int = GPTQ_LAZY_COLUMNS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ (Frantar et al., 2023, Algorithm 1) of a MatMul weight [K inputs, N outputs] whose input has the
    Gram matrix `hessian` [K, K]: the integer codes [K, N] and, per group of `group_size` input rows, the
    scales and zero points [groups, N], with dequantized weight scale * (code - zero).

    Input rows are quantized in order; each row's rounding error is spread over the rows not yet quantized
    through the upper Cholesky factor U of H^-1 (row i of U: w_j -= U[i, j] / U[i, i] * (w_i - q_i)), in
    lazy batches of at most `lazy` rows whose updates reach later rows as one matrix product. A group's scale and
    zero point come from its rows as they stand when its first row is reached (every earlier error applied).
    Rows the calibration never excites (H[k, k] = 0) are zero, and H is damped by 1% of its mean diagonal
    (tenfold more, up to 1e4 times, if it is still not positive definite), as the reference code does.
    """
    top = (1 << bits) - 1
    work = weight.astype(np.float64)
    h = np.array(hessian, dtype=np.float64)
    rows = work.shape[0]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    work[dead, :] = 0.0
    damp = GPTQ_DAMPING * float(np.mean(np.diag(h)))
    for _ in range(5):
        try:
            u = np.linalg.cholesky(np.linalg.inv(h + damp * np.eye(rows))).T
            break
        except np.linalg.LinAlgError:
            damp *= 10
    else:
        u = np.eye(rows)  # no factor: each row rounds to nearest, as if no row's error could be moved
    groups = (rows + group_size - 1) // group_size
    codes = np.empty(work.shape, dtype=np.uint8)
    scales = np.empty((groups, work.shape[1]))
    zeros = np.empty((groups, work.shape[1]))
    # A batch also ends where a group starts, so that the group's grid sees every earlier row's error.
    starts = sorted({*range(0, rows, lazy), *range(0, rows, group_size)})
    for start, stop in zip(starts, [*starts[1:], rows], strict=True):
        errors = np.empty((stop - start, work.shape[1]))
        for i in range(start, stop):
            if i % group_size == 0:
                group = i // group_size
                scales[group], zeros[group] = _grid(work[i : i + group_size], top)
            scale, zero = scales[i // group_size], zeros[i // group_size]
            code = np.clip(np.round(work[i] / scale) + zero, 0, top)
            codes[i] = code
            error = (work[i] - scale * (code - zero)) / u[i, i]
            work[i + 1 : stop] -= np.outer(u[i, i + 1 : stop], error)
            errors[i - start] = error
        work[stop:] -= u[start:stop, stop:].T @ errors
    return codes, scales, zeros.astype(np.uint8)


def packed_zero_points(zero_points: np.ndarray) -> np.ndarray:
    """4-bit zero points [N, blocks] packed two to a byte, row by row, as MatMulNBits defines them
    ([N, ceil(blocks / 2)], the first block in the low nibble; a row's spare nibble 8, as ORT fills it).

    ORT's vendored GPTQ packs them across rows instead, which gives the same bytes when each row has an
    even number of blocks and fails (a reshape error) when it has an odd one (K = 96, blocks of 32).
    """
    rows, blocks = zero_points.shape
    nibbles = np.full((rows, blocks + blocks % 2), 8, dtype=np.uint8)
    nibbles[:, :blocks] = zero_points
    return (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)
