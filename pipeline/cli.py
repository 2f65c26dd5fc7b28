"""The `dask-quant` command line."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import click

from dask_quant.pipeline.cli_options import (
    cluster_options,
    duration,
    guard_options,
    job_options,
    model_and_data,
    quant_config,
    quant_fields,
    quant_options,
    run_config,
    split_values,
)
from dask_quant.tasks.errors import DaskQuantError, InputError

EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


def _some(names, shown: int) -> str:
    """The first `shown` names, and how many more (run.json has them all)."""
    more = f" and {len(names) - shown} more (run.json)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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


@contextlib.contextmanager
def _errors_to_exit_codes(interrupted: str, unwritten: str = "; nothing was published"):
    """A command's failures as one line and an exit code: bad input 2, an interrupt 130, the rest 1."""
    try:
        yield
    except InputError as exc:
        _fail(str(exc), EXIT_INPUT)
    except KeyboardInterrupt:
        _fail(interrupted, EXIT_INTERRUPTED)
    except DaskQuantError as exc:
        _fail(str(exc), 1)
    except OSError as exc:  # a full disk or a vanished --out while writing
        _fail(f"could not write {exc.filename or 'results'} ({exc.strerror or exc}){unwritten}", 1)


@click.group()
@click.version_option(package_name="dask-quant")
def main() -> None:
    """Post-training quantization of ONNX models as a Dask task graph."""
    from dask_quant.cluster.connect import reuse_freed_here

    reuse_freed_here()


@main.command()
@job_options
@quant_options
@guard_options
@cluster_options
@click.option("--tensorrt-table", is_flag=True, help="Also write the TensorRT EP calibration table (tensorrt/).")
def run(**options):
    """Quantize MODEL (default: the built-in digits CNN) to INT8 and validate it.

    With several methods (--method minmax,entropy), one calibration serves
    them all and each is published as its own run; entries may name schemes
    too (--method minmax,dynamic,weight-only).
    """
    from dask_quant.pipeline.config import entry_choices, entry_configs

    with _errors_to_exit_codes("interrupted; no run was published"):
        model, calib, val = model_and_data(options["model"], options["calib"], options["val"])
        entries = split_values((options["methods"],))
        if not entries:
            msg = f"--method needs at least one of: {entry_choices()}"
            raise InputError(msg)
        quants = entry_configs(quant_fields(options), entries)  # each entry checks the settings it reads
        config = run_config(
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
            config, quants, log=log, progress=terminal, interrupted=interrupts.commit_unless_requested
        )
        click.echo("\n".join(format_summary(result) for result in results))
        if interrupts.count:
            log("interrupted while publishing: the run was published and is complete")
        failures = [failure for result in results for failure in quality_failures(config, result)]
        if failures:
            _fail("quality guard: " + "\n".join(failures) + " (the runs were published)", 1)


@main.command()
@job_options
@quant_options
@cluster_options
@click.option("--target", default=None, help='What the tuned model must reach on --val, e.g. "cosine>=0.99".')
@click.option("--max-drop", type=float, default=None, help="Instead of --target: accuracy drop at most this (points).")
@click.option("--ranking-samples", type=int, default=64, show_default=True, help="Validation rows the ranking scores.")
@click.option(
    "--walk-samples",
    type=int,
    default=None,
    help="Validation rows (evenly spaced) the walk scores its steps on; a step meeting the target there is "
    "then scored on every row. Default: a quarter of them, at least twice --ranking-samples; 0: every row.",
)
@click.option("--time-budget", default=None, help="Stop after this long (90s, 30m, 2h) with the best model so far.")
@click.option(
    "--isolated-errors/--no-isolated-errors",
    default=False,
    show_default=True,
    help="Also score each group quantized alone (its own error, the report's dots; doubles the first ranking).",
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

    resumable = "interrupted; no run was published (run again with --resume to reuse finished experiments)"
    with _errors_to_exit_codes(resumable):
        if options["model"] is None:
            msg = "tune needs a MODEL with --calib and --val"
            raise InputError(msg)
        model, calib, val = model_and_data(options["model"], options["calib"], options["val"])
        methods = [parse_method(m) for m in split_values((options["methods"],))]
        if len(methods) != 1:
            msg = f"tune searches with one --method, got {len(methods)}"
            raise InputError(msg)
        target = Target.parse(options["target"], options["max_drop"])
        tuning = TuneConfig(
            target,
            options["ranking_samples"],
            duration(options["time_budget"]),
            walk_samples=options["walk_samples"],
            isolated=options["isolated_errors"],
        )
        config = run_config(options, model, calib, val, quant_config(options, methods[0]))
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
            f"  kept in FP32     {len(search.groups)} of {len(result.groups)} groups, {len(search.reverted)} nodes"
            + (f": {_some(search.groups, 6)}" if search.groups else "")
        )
        click.echo(f"  experiments      {result.trials_computed} run, {result.trials_reused} reused (trials.parquet)")
        if not search.met:
            _fail(f"tune: {target.describe()} not reached; the best model found was published", 1)


@main.command()
@click.argument("run_dir")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write [default: RUN_DIR/report.html].")
@click.option("--screenshot", type=click.Path(path_type=Path), help="Also save a PNG of the page (needs Chromium).")
def report(run_dir, output, screenshot):
    """Write the HTML report of RUN_DIR (every run also writes one)."""
    try:
        from dask_quant.pipeline.report import write_report
        from dask_quant.tasks.storage import is_url

        if is_url(run_dir):
            msg = (
                f"{run_dir}: a run at a URL already holds its report.html; to write it again, download the run "
                "folder and pass its local path"
            )
            raise InputError(msg)
        page = write_report(Path(run_dir), output)
        click.echo(f"report: {page}")
        if screenshot is not None:
            from dask_quant.pipeline.screenshot import screenshot as take

            click.echo(f"screenshot: {take(page, screenshot)}")
    except InputError as exc:
        _fail(str(exc), EXIT_INPUT)


@main.group()
def zoo():
    """Requantize a whole model zoo nightly, with a history and alerts."""


@zoo.command("run")
@click.option("--manifest", type=click.Path(path_type=Path), help="The zoo manifest, TOML [default: built-in].")
@click.option(
    "--out", default="dask-quant-zoo", show_default=True,  # a string: ZooConfig refuses a URL with its reason
    help="Folder of the runs and the history.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Rerun every job, even those whose key has a good result.")
@click.option("--night", default=None, help="The night to record, YYYY-MM-DD [default: today, UTC]; for backfills.")
@click.option("--jobs", type=int, default=None, help="Models at once [default: all].")
@cluster_options
def zoo_run(**options):
    """Requantize every model x method of the manifest on one cluster; append the night to OUT/history.

    Exit 1 when a job failed, regressed beyond its tolerance or was not
    deterministic (the table says which and why), 0 otherwise.
    """
    from dask_quant.pipeline.cli_options import cluster_config
    from dask_quant.pipeline.zoo import ZooConfig
    from dask_quant.pipeline.zoo import zoo_run as run_zoo

    with _errors_to_exit_codes("interrupted; the night was not recorded (finished runs stay under OUT/runs)", ""):
        cluster = cluster_config(options)
        config = ZooConfig(
            options["manifest"], options["out"], cluster, options["force"], options["night"], options["jobs"]
        )
        interrupts = _Interrupts()
        interrupts.install()
        result = run_zoo(config, log=lambda line: click.echo(f"dask-quant: {line}", err=True))
        if result.history_file:
            click.echo(f"history: {result.history_file}")
        if result.report:
            click.echo(f"report: {result.report}")
        if result.alerts:
            _fail(f"zoo: {len(result.alerts)} of {len(result.rows)} jobs failed, regressed or changed unexpectedly", 1)


@zoo.command("report")
@click.argument("out", type=click.Path(path_type=Path), default=Path("dask-quant-zoo"))
@click.option("--screenshot", type=click.Path(path_type=Path), help="Also save a PNG of the page (needs Chromium).")
def zoo_report(out, screenshot):
    """Write OUT/zoo.html from the zoo's history (`zoo run` also writes it)."""
    with _errors_to_exit_codes("interrupted", ""):
        from dask_quant.pipeline.zoo_report import write_zoo_report

        page = write_zoo_report(out)
        click.echo(f"report: {page}")
        if screenshot is not None:
            from dask_quant.pipeline.screenshot import screenshot as take

            click.echo(f"screenshot: {take(page, screenshot)}")


if __name__ == "__main__":
    main(prog_name="dask-quant")
