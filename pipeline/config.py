"""Typed, validated configuration of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from tasks.errors import InputError

CONFIG_VERSION = 1


class ActivationType(str, Enum):
    UINT8 = "uint8"
    INT8 = "int8"
    UINT16 = "uint16"
    INT16 = "int16"

    @property
    def levels(self) -> int:
        """qmax - qmin."""
        return 255 if self in (ActivationType.UINT8, ActivationType.INT8) else 65535


class Method(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


class Metric(str, Enum):
    """Which validation metrics lead the summary and the report (all are computed)."""

    AUTO = "auto"
    CLASSIFICATION = "classification"
    EMBEDDING = "embedding"
    REGRESSION = "regression"


@dataclass(frozen=True)
class QuantConfig:
    """What the quantizer is asked to do. Defaults: int8 per-channel symmetric
    weights, uint8 asymmetric activations, every operator ORT can quantize,
    MinMax ranges. Histogram methods use `num_bins` bins per tensor;
    `num_quantized_bins` is entropy's target levels, `percentile` percentile's cut."""

    method: Method = Method.MINMAX
    per_channel: bool = True
    activation_type: ActivationType = ActivationType.UINT8
    symmetric: bool = False
    percentile: float = 99.999
    num_bins: int = 2048
    num_quantized_bins: int = 128
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        for name, enum in (("method", Method), ("activation_type", ActivationType)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                msg = f"unknown {name.replace('_', ' ')} {value!r}; choose one of: {choices}"
                raise InputError(msg) from None
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude_nodes", tuple(self.exclude_nodes))
        if not 0 < self.percentile <= 100:
            msg = f"--percentile must be in (0, 100], got {self.percentile}"
            raise InputError(msg)
        if self.num_quantized_bins < 2:
            msg = f"--num-quantized-bins must be at least 2, got {self.num_quantized_bins}"
            raise InputError(msg)
        if self.num_bins < self.num_quantized_bins:
            msg = f"--num-bins ({self.num_bins}) must be at least --num-quantized-bins ({self.num_quantized_bins})"
            raise InputError(msg)

    @property
    def uses_histograms(self) -> bool:
        return self.method is not Method.MINMAX


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


@dataclass(frozen=True)
class RunConfig:
    """One quantization job: model, data, options, and where results go."""

    model: Path
    calib: Path
    val: Path | None = None
    out: Path = Path("dask-quant-runs")
    chunk_size: int = 64
    split_every: int = 8
    metric: Metric = Metric.AUTO
    resume: bool = False  # reuse the chunk checkpoints an interrupted run of the same job left
    tensorrt_table: bool = False  # also write the TensorRT EP's calibration table
    quant: QuantConfig = field(default_factory=QuantConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        for name in ("model", "calib", "val", "out"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        try:
            object.__setattr__(self, "metric", Metric(self.metric))
        except ValueError:
            msg = f"unknown metric {self.metric!r}; choose one of: {', '.join(m.value for m in Metric)}"
            raise InputError(msg) from None
        if self.chunk_size < 1:
            msg = f"--chunk-size must be a positive number of rows, got {self.chunk_size}"
            raise InputError(msg)
        if self.split_every < 2:
            msg = f"split_every must be at least 2, got {self.split_every}"
            raise InputError(msg)


def config_dict(config: RunConfig) -> dict:
    """JSON-ready view of a RunConfig (paths as strings, enums as values)."""
    from dataclasses import asdict

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(asdict(config))
