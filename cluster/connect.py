"""Start or connect to a Dask cluster, and shut down only what we started."""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from dask_quant.cluster.config import ClusterConfig
from dask_quant.tasks.errors import InputError


def default_workers() -> int:
    """One single-threaded worker per CPU this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _dashboard_address() -> str | None:
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)
    except ImportError:
        return None
    return "127.0.0.1:0"


@contextmanager
def _quiet_shutdown() -> Iterator[None]:
    # Closing a cluster logs benign "stream closed" noise from its comms; users should not see it.
    names = ("distributed", "tornado", "asyncio")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def require_workers(client, timeout: float) -> None:
    """Wait up to `timeout` seconds for at least one worker: a scheduler without any would hang the job."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        address = client.scheduler.address
        msg = f"the Dask scheduler at {address} has no workers after {timeout:g} s; start some: dask worker {address}"
        raise InputError(msg) from None


def on_each_worker(client, function, *args) -> list:
    """One task of `function(*args)` on each worker process (not each thread), pinned there: for what a
    process keeps for the tasks after it. Keep the futures while that matters (a released one may be
    cancelled); nothing waits on them."""
    addresses = client.scheduler_info(n_workers=-1)["workers"]
    return [client.submit(function, *args, workers=[a], allow_other_workers=False, pure=False) for a in addresses]


def scheduler_address(config: ClusterConfig) -> str | None:
    """The scheduler to connect to, or None for a LocalCluster (see ClusterConfig)."""
    if config.scheduler:
        return config.scheduler
    if config.scheduler_file is not None:
        try:
            address = json.loads(config.scheduler_file.read_text())["address"]
            if not isinstance(address, str) or not address:
                raise TypeError(address)
        except (ValueError, KeyError, OSError, TypeError) as exc:
            msg = (
                f"--scheduler-file {config.scheduler_file}: no scheduler address in it ({type(exc).__name__}); "
                "pass the file that `dask scheduler --scheduler-file` wrote"
            )
            raise InputError(msg) from None
        return address
    import dask

    return dask.config.get("scheduler-address", None)


def security(config: ClusterConfig):
    """distributed's Security for the TLS files given, or None."""
    if config.tls_ca_file is None and config.tls_cert is None:
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=str(config.tls_ca_file) if config.tls_ca_file else None,
        tls_client_cert=str(config.tls_cert) if config.tls_cert else None,
        tls_client_key=str(config.tls_key) if config.tls_key else None,
        require_encryption=True,
    )


# glibc's malloc gives every block over 32 MiB fresh pages from mmap and unmaps them when freed, and Dask's
# default gives the top of the heap back at 64 KiB. A tune experiment makes and frees a model's bytes several
# times (MiniLM: 68 MiB, copied by ORT's quantizer, serialized, parsed by the session), so each one faulted in
# ~600 MiB of zeroed pages: 30% of the workers' CPU time was the kernel's. Kept in the heap, the next
# experiment reuses them (benchmarks/tune_vs_nncf.py). A worker's peak is unchanged; what it frees stays its
# own. Set before each worker process starts (glibc reads them once); a user's own environment wins.
REUSE_FREED = {"MALLOC_MMAP_MAX_": 0, "MALLOC_TRIM_THRESHOLD_": 2**30}
_MALLOPT = {"MALLOC_MMAP_MAX_": -4, "MALLOC_TRIM_THRESHOLD_": -1}  # glibc's M_MMAP_MAX, M_TRIM_THRESHOLD


# What a worker frees and keeps stays in its resident memory, which the nanny's limit counts (the pages are
# reused, but a heap fragments): with 1 GiB workers, MiniLM's validation then passed 95% and workers restarted
# (benchmarks/auto_chunks_memory.py). So only workers with room keep it.
REUSE_FREED_FROM = 4 * 2**30


def _room_to_reuse(memory_limit, threads_per_worker: int) -> bool:
    """Whether a local worker's memory limit (as LocalCluster reads `memory_limit`) leaves room to keep what it
    frees: none, or at least REUSE_FREED_FROM bytes."""
    import logging

    from dask.system import CPU_COUNT
    from distributed.worker_memory import parse_memory_limit

    limit = parse_memory_limit(memory_limit, threads_per_worker, CPU_COUNT, logger=logging.getLogger(__name__))
    return limit is None or limit >= REUSE_FREED_FROM


def reuse_freed_here() -> None:
    """REUSE_FREED in this process, already running (the command's own: preparation and ORT's quantizer copy
    the model too, MiniLM's preparation 4.4-5.0 -> 2.8-3.1 s), unless the environment set them; nothing
    where the C library is not glibc."""
    import ctypes
    import os

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    for name, value in REUSE_FREED.items():
        if name not in os.environ:
            mallopt(_MALLOPT[name], value)


def local_cluster(workers: int, threads_per_worker: int = 1, locked: bool = True, **options):
    """The LocalCluster of process workers a run starts (the benchmarks start the same one).

    `locked`: TLS with a throw-away certificate made in this process, so that only this process (and the
    workers it starts) can connect. Without it any local user who finds the port could run code on the
    workers with our rights: a Dask scheduler runs whatever its clients send.
    """
    import dask
    from distributed import LocalCluster

    if locked:
        from distributed.security import Security

        options.setdefault("security", Security.temporary())
    # ORT keeps the memory arena a big chunk grew: a worker once past the pause
    # threshold stayed paused and the job waited forever. Results are small, so
    # there is nothing to spill; the nanny still stops a worker at 95% of
    # --memory-limit, and the job then names the chunk. Given to each nanny, not
    # set around the call: a worker the nanny restarts must get it too.
    worker_config = {f"distributed.worker.memory.{name}": False for name in ("pause", "spill", "target")}
    # Without queuing the scheduler hands every ready chunk task to a worker at
    # once, not one round trip at a time (1000 one-row chunks: 2.3 -> 1.2 ms of
    # overhead each). Chunk results are small statistics, so the root-task
    # overproduction queuing guards against costs no memory here.
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    if _room_to_reuse(options.get("memory_limit", "auto"), threads_per_worker):
        environ.update(REUSE_FREED)
    settings = {"distributed.scheduler.worker-saturation": float("inf"), "distributed.nanny.pre-spawn-environ": environ}
    with dask.config.set(settings):
        return LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=True, config=worker_config, **options
        )


@contextmanager
def _children_ignore_ctrl_c() -> Iterator[None]:
    """Start processes with SIGINT ignored: they inherit it, and Python then installs no KeyboardInterrupt
    for them. A terminal's Ctrl-C reaches the whole process group; the workers' part is to be shut down
    by this process, not to print a traceback each."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def cluster_client(config: ClusterConfig) -> Iterator:
    """A distributed Client for `config`; closes the client (and cluster) it created."""
    from distributed import Client

    address = scheduler_address(config)
    if address:
        if address.startswith("tls://") and config.tls_ca_file is None:
            msg = f"{address} is a TLS scheduler: pass --tls-ca-file (and --tls-cert/--tls-key if it checks clients)"
            raise InputError(msg)
        failure = None
        try:
            client = Client(address, timeout=config.connect_timeout, security=security(config))
        except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a malformed address
            failure = type(exc).__name__
        if failure is not None:
            # The failed Client sits in a reference cycle with its traceback. Free it here: freed by a
            # collection that happens to run inside a later Client's start, its __del__ waits for the
            # event loop that start is making, and the process hangs.
            gc.collect()
            msg = (
                f"could not reach the Dask scheduler at {address} within {config.connect_timeout:g} s "
                f"({failure}); check the address and that the scheduler is running"
            )
            raise InputError(msg)
        try:
            require_workers(client, config.connect_timeout)
            yield client
        finally:
            client.close()
        return

    with _children_ignore_ctrl_c():
        cluster = local_cluster(
            config.workers or default_workers(),
            config.threads_per_worker,
            memory_limit=config.memory_limit,
            dashboard_address=_dashboard_address(),
            # Task errors reach the user as one clear message from the client; a worker's own
            # "Compute Failed" traceback on the terminal would only repeat it.
            silence_logs=logging.CRITICAL,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        with _quiet_shutdown():
            client.close()
            cluster.close()
