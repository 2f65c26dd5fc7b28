"""The command line's shared options and how they become typed configs (pipeline.config).

Every job command (run, tune) declares its options from these groups and
builds its RunConfig with `run_config`, so an option means the same in each.
"""

from __future__ import annotations

from pathlib import Path

import click

from dask_quant.pipeline.config import Scheme, WeightAlgorithm
from dask_quant.pipeline.methods import Method, cli_help
from dask_quant.pipeline.presets import Preset
from dask_quant.tasks.errors import InputError


def split_values(values: tuple[str, ...]) -> tuple[str, ...]:
    """Accept repeated options and comma-separated lists alike."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


def option_group(*decorators):
    """Several click options as one decorator, so subcommands share their declarations."""

    def apply(function):
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


# Where the work runs: every subcommand that computes takes these.
cluster_options = option_group(
    click.option("--workers", type=int, default=None, help="LocalCluster workers [default: one per CPU]."),
    click.option(
        "--threads-per-worker", type=int, default=1, show_default=True, help="Threads per LocalCluster worker."
    ),
    click.option("--scheduler", default=None, help="Connect to this scheduler instead of starting a LocalCluster."),
    click.option("--scheduler-file", type=click.Path(path_type=Path), help="Connect to the scheduler this file names."),
    click.option("--tls-ca-file", type=click.Path(path_type=Path), help="CA certificate (PEM) of a tls:// scheduler."),
    click.option(
        "--tls-cert", type=click.Path(path_type=Path), help="Client certificate (PEM) for a tls:// scheduler."
    ),
    click.option("--tls-key", type=click.Path(path_type=Path), help="Private key (PEM) of --tls-cert."),
    click.option(
        "--memory-limit", default="auto", show_default=True, help="Memory per LocalCluster worker (e.g. 4GiB; 0: none)."
    ),
    click.option(
        "--connect-timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for --scheduler."
    ),
)

# How a model is quantized.
quant_options = option_group(
    click.option(
        "--per-channel/--per-tensor", default=True, show_default=True, help="Weight quantization granularity."
    ),
    click.option(
        "--scheme",
        type=click.Choice([scheme.value for scheme in Scheme]),
        default="static",
        show_default=True,
        help="static: weights and activations from calibrated ranges (QDQ); dynamic: weights ahead of time, "
        "activations at run time (ONNX Runtime's quantize_dynamic); weight-only: MatMul weights in blocks, "
        "activations FP32 (MatMulNBitsQuantizer). Dynamic calibrates nothing; weight-only only with --algorithm gptq.",
    ),
    click.option("--bits", type=int, default=4, show_default=True, help="Bits per weight of --scheme weight-only."),
    click.option(
        "--block-size", type=int, default=32, show_default=True, help="Weights per block of --scheme weight-only."
    ),
    click.option(
        "--algorithm",
        type=click.Choice([algorithm.value for algorithm in WeightAlgorithm]),
        default="rtn",
        show_default=True,
        help="How --scheme weight-only quantizes each block: round to nearest, HQQ, or GPTQ (from the calibration "
        "set's Gram matrices, solved on the workers; 4 bits).",
    ),
    click.option(
        "--preset",
        type=click.Choice([preset.value for preset in Preset]),
        default=None,
        help="A hardware preset: the options an execution provider's own guidance gives (cpu: S8S8 QDQ per-channel; "
        "tensorrt: symmetric int8 and its calibration table; qnn: ONNX Runtime's get_qnn_qdq_config). It fills "
        "the options it names; one given with another value is refused.",
    ),
    click.option(
        "--method",
        "methods",
        default=Method.MINMAX.value,
        show_default=True,
        help=cli_help() + " Entries may also name a scheme that calibrates nothing (minmax,dynamic,weight-only).",
    ),
    click.option(
        "--percentile", type=float, default=99.999, show_default=True, help="Percentile kept by --method percentile."
    ),
    click.option("--num-bins", type=int, default=2048, show_default=True, help="Histogram bins (histogram methods)."),
    click.option(
        "--num-quantized-bins", type=int, default=128, show_default=True, help="Target levels of --method entropy."
    ),
    click.option(
        "--activation-type",
        default="uint8",
        show_default=True,
        help="Activation type: uint8, int8, uint16 or int16; weights are int8 symmetric.",
    ),
    click.option(
        "--symmetric/--asymmetric",
        default=False,
        show_default=True,
        help="Symmetric activation ranges (zero point in the middle).",
    ),
    click.option("--exclude-nodes", multiple=True, help="Node names to leave in FP32 (comma-separated or repeated)."),
    click.option("--op-types", multiple=True, help="Only quantize these op types (comma-separated or repeated)."),
    click.option(
        "--fp32-outputs",
        multiple=True,
        metavar="OP_TYPES",
        help="Op types quantized on their inputs only: their outputs stay FP32 (e.g. MatMul for transformers).",
    ),
)

# Model, data and where results go.
job_options = option_group(
    click.argument("model", required=False),  # a path or a URL (pipeline.model_files)
    click.option(
        "--calib",
        help=(
            "Calibration data: .npz (one array per input), .npy, or Parquet (a file or folder, one column per "
            "input); a path or a URL (s3://, gs://, az://, file://)."
        ),
    ),
    click.option("--val", help="Validation data, as --calib (it may hold 'labels')."),
    click.option(
        "--out",
        default="dask-quant-runs",
        show_default=True,
        help=(
            "Directory where run directories are published, or a URL (s3://, gs://, az://): there workers read "
            "the models from it, and a run is complete once its run.json is."
        ),
    ),
    click.option(
        "--chunk-size",
        default="auto",
        show_default=True,
        help="Rows per task, or auto: from the model's activation sizes and the workers' memory limit (at most "
        "64, a multiple of a batch the model fixes). Results do not depend on it.",
    ),
    click.option(
        "--metric",
        default="auto",
        show_default=True,
        help="Validation metrics that lead: auto, classification, embedding or regression.",
    ),
    click.option("--resume", is_flag=True, help="Reuse the chunk statistics an interrupted run of the same job kept."),
    click.option(
        "--layers",
        default="all",
        show_default=True,
        help="Per-layer error of every quantized activation (all) or none (skips that pass).",
    ),
    click.option(
        "--prepare/--no-prepare",
        default=True,
        show_default=True,
        help="Prepare the graph first (shapes, constants folded into initializers, opset upgrade).",
    ),
    click.option(
        "--smooth-quant",
        type=float,
        default=None,
        metavar="ALPHA",
        help="SmoothQuant: move activation outliers into MatMul/Gemm weights with strength ALPHA in (0, 1].",
    ),
    click.option("--batch-axis", multiple=True, help="NAME=AXIS: where input NAME's samples go (default: inferred)."),
    click.option("--const-input", multiple=True, help="NAME=VALUE: feed input NAME this value for every sample."),
    click.option(
        "--storage-option",
        multiple=True,
        help="KEY=VALUE for the filesystem of the URLs given (e.g. endpoint_url=https://host:9000; JSON values "
        "are read as JSON), beyond the backend's own environment; run.json keeps the keys only.",
    ),
    click.option("--labels-key", default=None, help="Name of the labels array in --val [default: labels]."),
    click.option(
        "--lead-output",
        default=None,
        help="The model output whose metrics lead (the summary, --min-cosine/--max-drop, tune) [default: the first "
        "floating-point output with one row per sample]; every such output is validated.",
    ),
)

# What the INT8 model must keep: the run fails (exit 1) after publishing when it does not.
guard_options = option_group(
    click.option("--min-cosine", type=float, default=None, help="Fail if the mean output cosine is below this."),
    click.option("--max-drop", type=float, default=None, help="Fail if accuracy drops more (points; needs labels)."),
)


def chunk_rows(value: str | int | None) -> int | None:
    """--chunk-size: a number of rows, or auto (None)."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        msg = f"--chunk-size {value!r}: pass a number of rows or auto"
        raise InputError(msg) from None


def pairs(values: tuple[str, ...], option: str, convert=str) -> tuple[tuple[str, object], ...]:
    """NAME=VALUE options (repeated or comma-separated) as pairs."""
    pairs = []
    for item in split_values(values):
        name, sep, value = item.partition("=")
        try:
            if not (sep and name.strip() and value.strip()):
                raise ValueError
            pairs.append((name.strip(), convert(value.strip())))
        except ValueError:
            msg = f"{option} {item!r}: expected NAME=VALUE" + (" with an integer axis" if convert is int else "")
            raise InputError(msg) from None
    return tuple(pairs)


def cluster_config(options: dict):
    from dask_quant.cluster.config import ClusterConfig

    names = ("workers", "threads_per_worker", "scheduler", "scheduler_file", "tls_ca_file", "tls_cert", "tls_key")
    return ClusterConfig(
        **{name: options[name] for name in names},
        memory_limit=options["memory_limit"],
        connect_timeout=options["connect_timeout"],
    )


def _refuse_preset_conflicts(options: dict) -> None:
    """An option given on the command line beside a --preset that sets it otherwise, even to its default."""
    from click.core import ParameterSource

    from dask_quant.pipeline.config import refuse_preset_conflicts

    context = click.get_current_context(silent=True)
    if context is None or options.get("preset") is None:
        return
    given = {
        name: value
        for name, value in options.items()
        if name != "preset" and context.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    refuse_preset_conflicts(options["preset"], given)


def quant_fields(options: dict) -> dict:
    """The quantization options given on the command line: QuantConfig's fields but the method (each entry
    of --method brings its own: pipeline.config.entry_configs)."""
    _refuse_preset_conflicts(options)
    return {
        "percentile": options["percentile"],
        "num_bins": options["num_bins"],
        "num_quantized_bins": options["num_quantized_bins"],
        "symmetric": options["symmetric"],
        "per_channel": options["per_channel"],
        "activation_type": options["activation_type"],
        "exclude_nodes": split_values(options["exclude_nodes"]),
        "op_types": split_values(options["op_types"]),
        "fp32_outputs": split_values(options["fp32_outputs"]),
        "scheme": options["scheme"],
        "bits": options["bits"],
        "block_size": options["block_size"],
        "algorithm": options["algorithm"],
        "preset": options["preset"],
    }


def quant_config(options: dict, method):
    from dask_quant.pipeline.config import QuantConfig

    return QuantConfig(method=method, **quant_fields(options))


def run_config(options: dict, model, calib, val, quant, **more):
    """The RunConfig of the job options every job command shares."""
    from dask_quant.pipeline import storage_options
    from dask_quant.pipeline.config import RunConfig

    return RunConfig(
        model=model,
        calib=calib,
        val=val,
        out=options["out"],
        chunk_size=chunk_rows(options["chunk_size"]),
        metric=options["metric"],
        resume=options["resume"],
        quant=quant,
        cluster=cluster_config(options),
        prepare=options["prepare"],
        batch_axes=pairs(options["batch_axis"], "--batch-axis", int),
        const_inputs=pairs(options["const_input"], "--const-input"),
        storage_options=storage_options.parse(options["storage_option"]),
        labels_key=options["labels_key"],
        lead_output=options["lead_output"],
        layers=options["layers"],
        smooth_quant=options["smooth_quant"],
        **more,
    )


def model_and_data(model, calib, val):
    """MODEL with its data, or the built-in default when no MODEL is given."""
    if model is None:
        if calib is not None or val is not None:
            msg = "--calib/--val need a MODEL argument; run without them for the built-in default"
            raise InputError(msg)
        from dask_quant.pipeline.builtin import CALIB, MODEL, VAL, builtin_path

        return builtin_path(MODEL), builtin_path(CALIB), builtin_path(VAL)
    if calib is None:
        msg = f"{model}: --calib is required with a MODEL; pass a .npz, .npy or Parquet dataset of calibration samples"
        raise InputError(msg)
    return model, calib, val


_DURATION = {"s": 1, "m": 60, "h": 3600}


def duration(text: str | None) -> float | None:
    """--time-budget: seconds, or a number with s, m or h."""
    if text is None:
        return None
    value, unit = (text[:-1], text[-1]) if text and text[-1] in _DURATION else (text, "s")
    try:
        return float(value) * _DURATION[unit]
    except ValueError:
        msg = f"--time-budget {text!r}: write a duration such as 90s, 30m or 2h"
        raise InputError(msg) from None
