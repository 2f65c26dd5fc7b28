"""The gate before publishing: an INT8 model that ONNX Runtime cannot load, that quantizes nothing
useful, or whose outputs are not finite is never published (exit 2, with what to do)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dask_quant.pipeline.config import RunConfig
from dask_quant.pipeline.selection import default_op_types
from dask_quant.pipeline.stages.prepare import Prepared, dataset_chunks
from dask_quant.pipeline.stages.quantize import QuantizedModel
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.gate import int8_problems
from dask_quant.tasks.sessions import ModelRef

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def constant_weight_nodes(proto, op_types: tuple[str, ...], excluded: tuple[str, ...]) -> list[str]:
    """Names of the nodes to quantize whose weight (second input) is constant: an initializer or a Constant node."""
    constants = {init.name for init in proto.graph.initializer}
    constants |= {out for node in proto.graph.node if node.op_type == "Constant" for out in node.output}
    wanted = set(op_types or default_op_types()) & set(WEIGHTED_OPS)
    return [
        node.name or node.output[0]
        for node in proto.graph.node
        if node.op_type in wanted and node.name not in excluded and len(node.input) > 1 and node.input[1] in constants
    ]


def check_quantized(config: RunConfig, prepared: Prepared, quantized: QuantizedModel, client=None) -> None:
    """InputError (nothing published) unless the INT8 model is quantized, loads, and gives finite outputs.

    The run on a calibration chunk goes to `client`'s workers, or runs in this process without one.
    """
    (check,) = start_checks(config, prepared, [quantized], client)
    check.verdict()


@dataclass(frozen=True)
class PendingCheck:
    """The gate's run of an INT8 model on a worker, started; `verdict` waits for it."""

    outcome: Any  # a distributed Future of tasks.gate.int8_problems, or its result when run in process
    index: int  # this model's place in the outcome
    label: str

    def verdict(self) -> None:
        """InputError (nothing is to be published) if the INT8 model failed its run."""
        problem = (self.outcome.result() if hasattr(self.outcome, "result") else self.outcome)[self.index]
        if problem:
            fix = (
                "drop --no-prepare (preparation upgrades the opset), or pass --per-tensor"
                if "cannot be loaded" in problem
                else "keep the nodes that overflow in FP32 with --exclude-nodes"
            )
            msg = f"{self.label}the INT8 model ONNX Runtime's quantizer wrote {problem}; nothing was published: {fix}"
            raise InputError(msg)


def start_checks(
    config: RunConfig, prepared: Prepared, models: list[QuantizedModel], client=None
) -> list[PendingCheck]:
    """check_quantized of each of `models` (a run's methods) in two halves: what each model file shows is
    checked now (InputError, the first model's first); the runs on a calibration chunk start in one task on
    `client`'s workers (in this process without one), the FP32 model run once, so validation can share the
    cluster with it, and each returned check's `verdict` gives its model's outcome."""
    labels = [_checked_file(config, prepared, quantized) for quantized in models]
    chunk = dataset_chunks(prepared.calib, prepared.chunk_size)[0]
    refs = tuple(prepared.for_workers(ModelRef(str(q.path), q.sha256)) for q in models)
    if client is None:
        outcome = int8_problems(chunk, prepared.model, refs)
    else:
        outcome = client.submit(int8_problems, chunk, prepared.model, refs, pure=False)
    return [PendingCheck(outcome, index, label) for index, label in enumerate(labels)]


def _checked_file(config: RunConfig, prepared: Prepared, quantized: QuantizedModel) -> str:
    """InputError unless the model file holds quantization, of weights where there are constant ones; the
    label its messages start with."""
    quant = quantized.quant
    label = f"--method {quant.label}: " if quant != config.quant else ""
    if not quantized.qparams:
        msg = (
            f"{label}{config.model}: ONNX Runtime's quantizer inserted no quantization at all (the operators it "
            "could quantize take no float input it supports), so the INT8 model would be the FP32 model; "
            "nothing was published"
        )
        raise InputError(msg)
    weighted = constant_weight_nodes(prepared.proto, quant.op_types, quant.exclude_nodes)
    if weighted and quantized.activations == len(quantized.qparams):
        fix = (
            "drop --no-prepare: preparation folds Constant nodes into initializers"
            if not prepared.prepared
            else "store the weights as initializers"
        )
        msg = (
            f"{label}{config.model}: {quantized.activations} activations were quantized but none of the weights of "
            f"{len(weighted)} {'/'.join(WEIGHTED_OPS)} nodes (e.g. {weighted[0]!r}): ONNX Runtime's quantizer "
            f"only quantizes weights stored as initializers, and this INT8 model would be larger and no faster; "
            f"{fix}. Nothing was published"
        )
        raise InputError(msg)
    return label
