"""Where tasks run: which scheduler, or what LocalCluster to start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dask_quant.tasks.errors import InputError

# An idle worker with ONNX Runtime imported holds about 85 MiB, and a session of a small model more:
# below this a worker is killed as it starts, restarted, killed again, and the job never ends.
MEMORY_FLOOR = 256 * 2**20


def memory_limit_bytes(value: str) -> int | None:
    """--memory-limit in bytes (None: auto or no limit), as distributed reads it; InputError when it is
    not a size, or below MEMORY_FLOOR."""
    text = str(value).strip().lower()
    if text in ("auto", "0", "none", ""):
        return None
    from dask.utils import parse_bytes

    try:
        number = float(text)
    except ValueError:
        number = None
    try:
        if number is not None and 0 < number <= 1:  # a fraction of the machine's memory, as distributed reads it
            import os

            limit = int(number * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        else:
            limit = parse_bytes(text)
    except (ValueError, TypeError, OverflowError):
        msg = f"--memory-limit {value!r}: not a size; pass for example 4GiB, auto, or 0 for no limit"
        raise InputError(msg) from None
    if limit < MEMORY_FLOOR:
        msg = (
            f"--memory-limit {value}: {limit} bytes is less than a worker needs to start ({MEMORY_FLOOR >> 20} MiB "
            "at least; a number without a unit is bytes): pass for example 4GiB, auto, or 0 for no limit"
        )
        raise InputError(msg)
    return limit


@dataclass(frozen=True)
class ClusterConfig:
    """Where tasks run: an existing scheduler, or a LocalCluster we start.

    The scheduler is `scheduler`, else the address in `scheduler_file`, else
    dask's `scheduler-address` setting (DASK_SCHEDULER_ADDRESS); with none of
    them a LocalCluster is started. `tls_*` are PEM files for tls:// addresses.
    """

    scheduler: str | None = None
    scheduler_file: Path | None = None
    workers: int | None = None  # None: one per CPU this process may use
    threads_per_worker: int = 1
    memory_limit: str = "auto"  # per LocalCluster worker, as distributed parses it ("4GiB", "auto", 0 = none)
    connect_timeout: float = 10.0
    tls_ca_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        for name in ("scheduler_file", "tls_ca_file", "tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
                if not Path(value).is_file():
                    msg = f"--{name.replace('_', '-')} {value}: file not found"
                    raise InputError(msg)
        if (self.tls_cert is None) != (self.tls_key is None):
            msg = "--tls-cert and --tls-key go together: pass both (PEM certificate and its private key)"
            raise InputError(msg)
        for name in ("workers", "threads_per_worker"):
            value = getattr(self, name)
            if value is not None and value < 1:
                msg = f"--{name.replace('_', '-')} must be at least 1, got {value}"
                raise InputError(msg)
        if not 0 < self.connect_timeout < float("inf"):  # NaN fails this too
            msg = f"--connect-timeout must be a positive number of seconds, got {self.connect_timeout}"
            raise InputError(msg)
        memory_limit_bytes(self.memory_limit)
