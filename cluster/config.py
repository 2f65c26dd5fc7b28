"""Where tasks run: which scheduler, or what LocalCluster to start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dask_quant.tasks.errors import InputError


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
        if self.connect_timeout <= 0:
            msg = f"connect timeout must be positive seconds, got {self.connect_timeout}"
            raise InputError(msg)
