"""The `dask-quant` command line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from tasks.errors import DaskQuantError, InputError

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
    raises it again a moment later in ordinary code. The job also asks
    `requested()` before it publishes, so an interrupt writes nothing even if
    a library swallowed it some other way.
    """

    def __init__(self) -> None:
        self.count = 0
        self._hook = sys.unraisablehook

    def __call__(self, signum, frame) -> None:
        if signum != signal.SIGALRM:
            self.count += 1
        raise KeyboardInterrupt

    def _unraisable(self, unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            signal.setitimer(signal.ITIMER_REAL, 0.01)  # SIGALRM: raise again outside the callback
            return
        self._hook(unraisable)

    def requested(self) -> bool:
        return self.count > 0

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            signal.signal(signum, self)
        sys.unraisablehook = self._unraisable


def _fail(message: str, code: int) -> None:
    click.echo(f"dask-quant: error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(package_name="dask-quant")
def main() -> None:
    """Post-training quantization of ONNX models as a Dask task graph."""


@main.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration data: .npz (one array per input) or .npy.")
@click.option("--val", type=click.Path(path_type=Path), help="Validation data (.npz may hold 'labels').")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("dask-quant-runs"),
    show_default=True,
    help="Directory where run directories are published.",
)
@click.option("--chunk-size", type=int, default=64, show_default=True, help="Rows per task.")
@click.option("--workers", type=int, default=None, help="LocalCluster workers [default: one per CPU].")
@click.option("--threads-per-worker", type=int, default=1, show_default=True, help="Threads per LocalCluster worker.")
@click.option("--scheduler", default=None, help="Connect to this scheduler instead of starting a LocalCluster.")
@click.option("--scheduler-file", type=click.Path(path_type=Path), help="Connect to the scheduler this file names.")
@click.option("--tls-ca-file", type=click.Path(path_type=Path), help="CA certificate (PEM) of a tls:// scheduler.")
@click.option("--tls-cert", type=click.Path(path_type=Path), help="Client certificate (PEM) for a tls:// scheduler.")
@click.option("--tls-key", type=click.Path(path_type=Path), help="Private key (PEM) of --tls-cert.")
@click.option(
    "--memory-limit", default="auto", show_default=True, help="Memory per LocalCluster worker (e.g. 4GiB; 0: none)."
)
@click.option("--connect-timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for --scheduler.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight quantization granularity.")
@click.option(
    "--method",
    default="minmax",
    show_default=True,
    help="How activation ranges are chosen: minmax, entropy, percentile or mse.",
)
@click.option(
    "--percentile", type=float, default=99.999, show_default=True, help="Percentile kept by --method percentile."
)
@click.option("--num-bins", type=int, default=2048, show_default=True, help="Histogram bins (histogram methods).")
@click.option(
    "--num-quantized-bins", type=int, default=128, show_default=True, help="Target levels of --method entropy."
)
@click.option(
    "--activation-type",
    default="uint8",
    show_default=True,
    help="Activation type: uint8, int8, uint16 or int16; weights are int8 symmetric.",
)
@click.option(
    "--symmetric/--asymmetric",
    default=False,
    show_default=True,
    help="Symmetric activation ranges (zero point in the middle).",
)
@click.option(
    "--metric",
    default="auto",
    show_default=True,
    help="Validation metrics that lead: auto, classification, embedding or regression.",
)
@click.option("--resume", is_flag=True, help="Reuse the chunk statistics an interrupted run of the same job kept.")
@click.option("--tensorrt-table", is_flag=True, help="Also write the TensorRT EP calibration table (tensorrt/).")
@click.option("--exclude-nodes", multiple=True, help="Node names to leave in FP32 (comma-separated or repeated).")
@click.option("--op-types", multiple=True, help="Only quantize these op types (comma-separated or repeated).")
def run(
    model,
    calib,
    val,
    out,
    chunk_size,
    workers,
    threads_per_worker,
    scheduler,
    scheduler_file,
    tls_ca_file,
    tls_cert,
    tls_key,
    memory_limit,
    connect_timeout,
    per_channel,
    method,
    percentile,
    num_bins,
    num_quantized_bins,
    activation_type,
    symmetric,
    metric,
    resume,
    tensorrt_table,
    exclude_nodes,
    op_types,
):
    """Quantize MODEL (default: the built-in digits CNN) to INT8 and validate it."""
    from pipeline.config import ClusterConfig, QuantConfig, RunConfig

    try:
        if model is None:
            if calib is not None or val is not None:
                msg = "--calib/--val need a MODEL argument; run without them for the built-in default"
                raise InputError(msg)
            from pipeline.builtin import CALIB, MODEL, VAL, builtin_path

            model, calib, val = builtin_path(MODEL), builtin_path(CALIB), builtin_path(VAL)
        elif calib is None:
            msg = f"{model}: --calib is required with a MODEL; pass a .npz or .npy of calibration samples"
            raise InputError(msg)
        config = RunConfig(
            model=model,
            calib=calib,
            val=val,
            out=out,
            chunk_size=chunk_size,
            tensorrt_table=tensorrt_table,
            metric=metric,
            resume=resume,
            quant=QuantConfig(
                method=method,
                percentile=percentile,
                num_bins=num_bins,
                num_quantized_bins=num_quantized_bins,
                symmetric=symmetric,
                per_channel=per_channel,
                activation_type=activation_type,
                exclude_nodes=_split(exclude_nodes),
                op_types=_split(op_types),
            ),
            cluster=ClusterConfig(
                scheduler=scheduler,
                scheduler_file=scheduler_file,
                tls_ca_file=tls_ca_file,
                tls_cert=tls_cert,
                tls_key=tls_key,
                memory_limit=memory_limit,
                workers=workers,
                threads_per_worker=threads_per_worker,
                connect_timeout=connect_timeout,
            ),
        )
        from pipeline.job import run as run_job
        from pipeline.summary import format_summary

        interrupts = _Interrupts()
        interrupts.install()  # SIGTERM (a scheduler stopping us) cleans up like Ctrl-C
        log = lambda line: click.echo(f"dask-quant: {line}", err=True)  # noqa: E731
        result = run_job(config, log=log, progress=sys.stdout.isatty(), interrupted=interrupts.requested)
        click.echo(format_summary(result))
    except InputError as exc:
        _fail(str(exc), EXIT_INPUT)
    except KeyboardInterrupt:
        _fail("interrupted; no run was published", EXIT_INTERRUPTED)
    except DaskQuantError as exc:
        _fail(str(exc), 1)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write [default: RUN_DIR/report.html].")
@click.option("--screenshot", type=click.Path(path_type=Path), help="Also save a PNG of the page (needs Chromium).")
def report(run_dir, output, screenshot):
    """Write the HTML report of RUN_DIR (every run also writes one)."""
    try:
        from pipeline.report import write_report

        page = write_report(run_dir, output)
        click.echo(f"report: {page}")
        if screenshot is not None:
            from pipeline.screenshot import screenshot as take

            click.echo(f"screenshot: {take(page, screenshot)}")
    except InputError as exc:
        _fail(str(exc), EXIT_INPUT)


if __name__ == "__main__":
    main()
