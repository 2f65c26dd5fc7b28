"""The `dask-quant` command line."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import click

from dask_quant.pipeline.methods import Method, choices, cli_help
from dask_quant.tasks.errors import DaskQuantError, InputError

EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    """Accept repeated options and comma-separated lists alike."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


class _Interrupts:
    """SIGINT/SIGTERM raise KeyboardInterrupt and are remembered.

    Python cannot raise out of a gc callback or a __del__ (distributed runs one
    on every collection): an interrupt that lands there is printed as "Exception
    ignored" and lost. The unraisable hook catches that case, stays quiet, and
    raises it again a moment later in ordinary code. The job asks
    `commit_unless_requested()` just before it publishes, so an interrupt
    writes nothing even if a library swallowed it some other way; from then
    on the run is being published, and an interrupt is only noted.
    """

    def __init__(self) -> None:
        self.count = 0
        self.committed = False
        self._hook = sys.unraisablehook

    def __call__(self, signum, frame) -> None:
        if signum != signal.SIGALRM:
            self.count += 1
        if self.committed:  # publishing (or published): finish, then say so
            return
        if self.count >= 2 and signum != signal.SIGALRM:  # asked twice: stop now, as SIGKILL would
            _stop_now()
        raise KeyboardInterrupt

    def _unraisable(self, unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            signal.setitimer(signal.ITIMER_REAL, 0.01)  # SIGALRM: raise again outside the callback
            return
        self._hook(unraisable)

    def requested(self) -> bool:
        return self.count > 0

    def commit_unless_requested(self) -> bool:
        """True if an interrupt came (publish nothing); else the point of no return: publishing starts."""
        if self.count > 0:
            return True
        self.committed = True
        return False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(signum, self)
        sys.unraisablehook = self._unraisable


def _stop_now() -> None:
    """Exit at once with one line: the worker processes we started are killed, not waited for.
    Like SIGKILL, this may leave an unfinished run under OUT/.staging/ (never a published one)."""
    import multiprocessing
    import os

    for child in multiprocessing.active_children():
        child.kill()
    # multiprocessing's resource tracker would outlive us and print a warning about leaked semaphores
    tracker = getattr(getattr(multiprocessing, "resource_tracker", None), "_resource_tracker", None)
    if getattr(tracker, "_pid", None):
        with contextlib.suppress(OSError):
            os.kill(tracker._pid, signal.SIGKILL)
    os.write(2, b"dask-quant: error: interrupted twice; stopped at once, no run was published\n")
    os._exit(EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> None:
    click.echo(f"dask-quant: error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="dask-quant")
def main() -> None:
    """Post-training quantization of ONNX models as a Dask task graph."""


def _options(*decorators):
    """Several click options as one decorator, so subcommands share their declarations."""

    def apply(function):
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


# Where the work runs: every subcommand that computes takes these.
cluster_options = _options(
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
quant_options = _options(
    click.option(
        "--per-channel/--per-tensor", default=True, show_default=True, help="Weight quantization granularity."
    ),
    click.option("--method", "methods", default=Method.MINMAX.value, show_default=True, help=cli_help()),
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
job_options = _options(
    click.argument("model", required=False, type=click.Path(path_type=Path)),
    click.option(
        "--calib", type=click.Path(path_type=Path), help="Calibration data: .npz (one array per input) or .npy."
    ),
    click.option("--val", type=click.Path(path_type=Path), help="Validation data (.npz may hold 'labels')."),
    click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=Path("dask-quant-runs"),
        show_default=True,
        help="Directory where run directories are published.",
    ),
    click.option(
        "--chunk-size", type=int, default=None, help="Rows per task [default: 64, or a multiple of a fixed batch]."
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
    click.option("--labels-key", default=None, help="Name of the labels array in --val [default: labels]."),
)

# What the INT8 model must keep: the run fails (exit 1) after publishing when it does not.
guard_options = _options(
    click.option("--min-cosine", type=float, default=None, help="Fail if the mean output cosine is below this."),
    click.option("--max-drop", type=float, default=None, help="Fail if accuracy drops more (points; needs labels)."),
)


def _pairs(values: tuple[str, ...], option: str, convert=str) -> tuple[tuple[str, object], ...]:
    """NAME=VALUE options (repeated or comma-separated) as pairs."""
    pairs = []
    for item in _split(values):
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


def quant_config(options: dict, method):
    from dask_quant.pipeline.config import QuantConfig

    return QuantConfig(
        method=method,
        percentile=options["percentile"],
        num_bins=options["num_bins"],
        num_quantized_bins=options["num_quantized_bins"],
        symmetric=options["symmetric"],
        per_channel=options["per_channel"],
        activation_type=options["activation_type"],
        exclude_nodes=_split(options["exclude_nodes"]),
        op_types=_split(options["op_types"]),
        fp32_outputs=_split(options["fp32_outputs"]),
    )


def _run_config(options: dict, model, calib, val, quant, **more):
    """The RunConfig of the job options every job command shares."""
    from dask_quant.pipeline.config import RunConfig

    return RunConfig(
        model=model,
        calib=calib,
        val=val,
        out=options["out"],
        chunk_size=options["chunk_size"],
        metric=options["metric"],
        resume=options["resume"],
        quant=quant,
        cluster=cluster_config(options),
        prepare=options["prepare"],
        batch_axes=_pairs(options["batch_axis"], "--batch-axis", int),
        const_inputs=_pairs(options["const_input"], "--const-input"),
        labels_key=options["labels_key"],
        layers=options["layers"],
        smooth_quant=options["smooth_quant"],
        **more,
    )


def _model_and_data(model, calib, val):
    """MODEL with its data, or the built-in default when no MODEL is given."""
    if model is None:
        if calib is not None or val is not None:
            msg = "--calib/--val need a MODEL argument; run without them for the built-in default"
            raise InputError(msg)
        from dask_quant.pipeline.builtin import CALIB, MODEL, VAL, builtin_path

        return builtin_path(MODEL), builtin_path(CALIB), builtin_path(VAL)
    if calib is None:
        msg = f"{model}: --calib is required with a MODEL; pass a .npz or .npy of calibration samples"
        raise InputError(msg)
    return model, calib, val


@main.command()
@job_options
@quant_options
@guard_options
@cluster_options
@click.option("--tensorrt-table", is_flag=True, help="Also write the TensorRT EP calibration table (tensorrt/).")
def run(**options):
    """Quantize MODEL (default: the built-in digits CNN) to INT8 and validate it.

    With several methods (--method minmax,entropy), one calibration serves
    them all and each is published as its own run.
    """
    from dask_quant.pipeline.methods import parse_method

    try:
        model, calib, val = _model_and_data(options["model"], options["calib"], options["val"])
        methods = [parse_method(m) for m in _split((options["methods"],))]
        if not methods:
            msg = f"--method needs at least one of: {choices()}"
            raise InputError(msg)
        quants = [quant_config(options, method) for method in methods]  # each method checks its own settings
        config = _run_config(
            options,
            model,
            calib,
            val,
            quants[0],
            tensorrt_table=options["tensorrt_table"],
            min_cosine=options["min_cosine"],
            max_drop=options["max_drop"],
        )
        from dask_quant.pipeline.guard import quality_failures
        from dask_quant.pipeline.job import run_methods
        from dask_quant.pipeline.summary import format_summary

        interrupts = _Interrupts()
        interrupts.install()  # SIGTERM (a scheduler stopping us) cleans up like Ctrl-C
        log = lambda line: click.echo(f"dask-quant: {line}", err=True)  # noqa: E731
        terminal = sys.stderr.isatty()
        results = run_methods(
            config, methods, log=log, progress=terminal, interrupted=interrupts.commit_unless_requested
        )
        click.echo("\n".join(format_summary(result) for result in results))
        if interrupts.count:
            log("interrupted while publishing: the run was published and is complete")
        failures = [failure for result in results for failure in quality_failures(config, result)]
        if failures:
            _fail("quality guard: " + "\n".join(failures) + " (the runs were published)", 1)
    except InputError as exc:
        _fail(str(exc), EXIT_INPUT)
    except KeyboardInterrupt:
        _fail("interrupted; no run was published", EXIT_INTERRUPTED)
    except DaskQuantError as exc:
        _fail(str(exc), 1)
    except OSError as exc:  # a full disk or a vanished --out while writing: nothing was published
        _fail(f"could not write {exc.filename or 'results'} ({exc.strerror or exc}); nothing was published", 1)


_DURATION = {"s": 1, "m": 60, "h": 3600}


def _duration(text: str | None) -> float | None:
    """--time-budget: seconds, or a number with s, m or h."""
    if text is None:
        return None
    value, unit = (text[:-1], text[-1]) if text and text[-1] in _DURATION else (text, "s")
    try:
        return float(value) * _DURATION[unit]
    except ValueError:
        msg = f"--time-budget {text!r}: write a duration such as 90s, 30m or 2h"
        raise InputError(msg) from None


@main.command()
@job_options
@quant_options
@cluster_options
@click.option("--target", default=None, help='What the tuned model must reach on --val, e.g. "cosine>=0.99".')
@click.option("--max-drop", type=float, default=None, help="Instead of --target: accuracy drop at most this (points).")
@click.option(
    "--ranking-samples", type=int, default=64, show_default=True, help="Validation rows the ranking scores."
)
@click.option("--time-budget", default=None, help="Stop after this long (90s, 30m, 2h) with the best model so far.")
@click.option(
    "--isolated-errors/--no-isolated-errors",
    default=True,
    show_default=True,
    help="Also score each group quantized alone (its own error, for the report; doubles the first ranking).",
)
def tune(**options):
    """Find which nodes of MODEL must stay FP32 for --target, and publish that model.

    Calibration runs once; every experiment (a variant with some nodes in FP32)
    is a task on the cluster, and each finished one is kept for --resume.
    """
    from dask_quant.pipeline.methods import parse_method
    from dask_quant.pipeline.summary import format_summary
    from dask_quant.pipeline.target import Target
    from dask_quant.pipeline.tune import TuneConfig
    from dask_quant.pipeline.tune import tune as tune_job

    try:
        if options["model"] is None:
            msg = "tune needs a MODEL with --calib and --val"
            raise InputError(msg)
        model, calib, val = _model_and_data(options["model"], options["calib"], options["val"])
        methods = [parse_method(m) for m in _split((options["methods"],))]
        if len(methods) != 1:
            msg = f"tune searches with one --method, got {len(methods)}"
            raise InputError(msg)
        target = Target.parse(options["target"], options["max_drop"])
        tuning = TuneConfig(
            target,
            options["ranking_samples"],
            _duration(options["time_budget"]),
            isolated=options["isolated_errors"],
        )
        config = _run_config(options, model, calib, val, quant_config(options, methods[0]))
        interrupts = _Interrupts()
        interrupts.install()
        log = lambda line: click.echo(f"dask-quant: {line}", err=True)  # noqa: E731
        result = tune_job(
            config, tuning, log=log, progress=sys.stderr.isatty(), interrupted=interrupts.commit_unless_requested
        )
        search = result.search
        click.echo(format_summary(result.run))
        click.echo(f"  tune             {target.describe()}: {'met' if search.met else 'NOT met'} ({search.stopped})")
        click.echo(
            f"  kept in FP32     {len(search.reverted)} of {len(result.groups)} groups"
            + (f": {', '.join(search.reverted)}" if search.reverted else "")
        )
        click.echo(
            f"  experiments      {result.trials_computed} run, {result.trials_reused} reused (trials.parquet)"
        )
        if not search.met:
            _fail(f"tune: {target.describe()} not reached; the best model found was published", 1)
    except InputError as exc:
        _fail(str(exc), EXIT_INPUT)
    except KeyboardInterrupt:
        _fail("interrupted; no run was published (run again with --resume to reuse finished experiments)", 130)
    except DaskQuantError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(f"could not write {exc.filename or 'results'} ({exc.strerror or exc}); nothing was published", 1)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write [default: RUN_DIR/report.html].")
@click.option("--screenshot", type=click.Path(path_type=Path), help="Also save a PNG of the page (needs Chromium).")
def report(run_dir, output, screenshot):
    """Write the HTML report of RUN_DIR (every run also writes one)."""
    try:
        from dask_quant.pipeline.report import write_report

        page = write_report(run_dir, output)
        click.echo(f"report: {page}")
        if screenshot is not None:
            from dask_quant.pipeline.screenshot import screenshot as take

            click.echo(f"screenshot: {take(page, screenshot)}")
    except InputError as exc:
        _fail(str(exc), EXIT_INPUT)


if __name__ == "__main__":
    main(prog_name="dask-quant")
