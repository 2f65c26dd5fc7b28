"""Typed, validated configuration of a run."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

from dask_quant.cluster.config import ClusterConfig
from dask_quant.pipeline.methods import Method, info, parse_method
from dask_quant.pipeline.presets import Preset
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.storage import is_url

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


class Scheme(str, Enum):
    """What is quantized, and when: `static` (activations from calibrated ranges and weights, as QDQ),
    `dynamic` (weights ahead of time, activations at run time: ONNX Runtime's quantize_dynamic),
    `weight-only` (MatMul weights in blocks of 4 or 8 bits, activations FP32: ONNX Runtime's
    MatMulNBitsQuantizer, which writes MatMulNBits)."""

    STATIC = "static"
    DYNAMIC = "dynamic"
    WEIGHT_ONLY = "weight-only"


class WeightAlgorithm(str, Enum):
    """How --scheme weight-only picks each block's scale: `rtn` rounds to nearest on the block's own
    min/max (MatMulNBitsQuantizer's default algorithm), `hqq` optimises scale and zero point (Half-Quadratic
    Quantization), `gptq` rounds column by column and corrects the rest of the weight for each rounding
    error, weighted by the calibration set's Gram matrix of the MatMul's input (pipeline.gptq)."""

    RTN = "rtn"
    HQQ = "hqq"
    GPTQ = "gptq"


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
    fp32_outputs: tuple[str, ...] = ()  # op types quantized on their inputs only (their outputs stay FP32)
    scheme: Scheme = Scheme.STATIC
    bits: int = 4  # weight-only: bits per weight
    block_size: int = 32  # weight-only: weights per block (along the MatMul's input axis)
    algorithm: WeightAlgorithm = WeightAlgorithm.RTN  # weight-only: how blocks are quantized
    preset: Preset | None = None  # a hardware preset (pipeline.presets): fills the options it names
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.preset is not None:
            self._apply_preset()
        object.__setattr__(self, "method", parse_method(self.method))
        self._enum("scheme", Scheme, "scheme")
        self._enum("algorithm", WeightAlgorithm, "--algorithm")
        self._enum("activation_type", ActivationType, "activation type")
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude_nodes", tuple(self.exclude_nodes))
        object.__setattr__(self, "fp32_outputs", tuple(self.fp32_outputs))
        used = info(self.method).settings  # a method checks only the settings it reads
        if "percentile" in used and not 0 < self.percentile <= 100:
            msg = f"--percentile must be in (0, 100], got {self.percentile}"
            raise InputError(msg)
        if "num_quantized_bins" in used and self.num_quantized_bins < 2:
            msg = f"--num-quantized-bins must be at least 2, got {self.num_quantized_bins}"
            raise InputError(msg)
        if "num_bins" in used and self.num_bins < 2:
            msg = f"--num-bins must be at least 2, got {self.num_bins}"
            raise InputError(msg)
        if "num_quantized_bins" in used and self.num_bins < self.num_quantized_bins:
            msg = f"--num-bins ({self.num_bins}) must be at least --num-quantized-bins ({self.num_quantized_bins})"
            raise InputError(msg)
        self._check_scheme()

    def _apply_preset(self) -> None:
        """The preset's options in place of defaults; an option set to another value is refused."""
        from dask_quant.pipeline.presets import PRESETS

        self._enum("preset", Preset, "--preset")
        defaults = {f.name: f.default for f in fields(QuantConfig)}
        settings = PRESETS[self.preset].quant
        refuse_preset_conflicts(
            self.preset, {n: getattr(self, n) for n, _ in settings if getattr(self, n) != defaults[n]}
        )
        for name, value in settings:
            object.__setattr__(self, name, value)

    def _enum(self, name: str, kind: type[Enum], what: str, note: str = "") -> None:
        """Field `name` as a member of `kind` (InputError naming the choices if it is none)."""
        value = getattr(self, name)
        try:
            object.__setattr__(self, name, kind(value))
        except ValueError:
            msg = f"unknown {what} {value!r}; choose one of: {', '.join(e.value for e in kind)}{note}"
            raise InputError(msg) from None

    def _check_scheme(self) -> None:
        """Each scheme reads its own options: the others are refused, not ignored."""
        defaults = {f.name: f.default for f in fields(QuantConfig)}
        given = [
            _flag(name, getattr(self, name)) for name in _UNREAD[self.scheme] if getattr(self, name) != defaults[name]
        ]
        reason = {
            Scheme.STATIC: "--bits, --block-size and --algorithm are --scheme weight-only's",
            Scheme.DYNAMIC: "--scheme dynamic quantizes activations at run time, from each input's own range",
            Scheme.WEIGHT_ONLY: "--scheme weight-only keeps activations in FP32 and quantizes weights in blocks of "
            "--block-size",
        }[self.scheme]
        if given:
            fix = "use --scheme weight-only" if self.scheme is Scheme.STATIC else "use --scheme static"
            msg = f"{reason}, so {', '.join(given)} does not apply: drop it, or {fix}"
            raise InputError(msg)
        if self.scheme is Scheme.WEIGHT_ONLY:
            if self.bits not in (4, 8):
                msg = f"--bits {self.bits}: MatMulNBits takes 4 or 8 bits per weight"
                raise InputError(msg)
            if self.block_size < 16 or self.block_size & (self.block_size - 1):
                msg = f"--block-size {self.block_size}: MatMulNBits takes a power of 2, at least 16 (32 is usual)"
                raise InputError(msg)
            if self.algorithm in (WeightAlgorithm.HQQ, WeightAlgorithm.GPTQ) and self.bits != 4:
                which = {WeightAlgorithm.HQQ: "HQQ", WeightAlgorithm.GPTQ: "GPTQ"}[self.algorithm]
                msg = (
                    f"--algorithm {self.algorithm.value} --bits {self.bits}: ONNX Runtime's {which} writes 4-bit "
                    "weights only; use --bits 4, or --algorithm rtn"
                )
                raise InputError(msg)

    @property
    def uses_histograms(self) -> bool:
        return self.scheme is Scheme.STATIC and info(self.method).histograms

    @property
    def calibrated(self) -> bool:
        """Whether the scheme reads calibration statistics (static does; dynamic and weight-only quantize
        only weights ahead of time)."""
        return self.scheme is Scheme.STATIC

    @property
    def uses_grams(self) -> bool:
        """Whether the scheme reads the Gram matrices of MatMul inputs (weight-only GPTQ)."""
        return self.scheme is Scheme.WEIGHT_ONLY and self.algorithm is WeightAlgorithm.GPTQ

    @property
    def precision(self) -> str:
        return precision_name(self.scheme, self.bits)

    @property
    def label(self) -> str:
        """How runs and logs name this configuration: the method of a static scheme, the scheme of a dynamic
        one, the algorithm and bits of a weight-only one (rtn-int4)."""
        if self.scheme is Scheme.WEIGHT_ONLY:
            return f"{self.algorithm.value}-int{self.bits}"
        return self.method.value if self.scheme is Scheme.STATIC else self.scheme.value


@dataclass(frozen=True)
class RunConfig:
    """One quantization job: model, data, options, and where results go."""

    model: Path | str  # a URL: the client downloads it, workers read it there (pipeline.model_files)
    calib: Path | str  # a local path, or a URL (s3://, gs://, ...) that tasks.storage opens
    val: Path | str | None = None
    out: Path | str = Path("dask-quant-runs")  # a URL publishes there (pipeline.remote_out)
    chunk_size: int | None = None  # None: auto (pipeline.chunking; 64 where nothing tells otherwise)
    split_every: int = 8
    metric: Metric = Metric.AUTO
    resume: bool = False  # reuse the chunk checkpoints an interrupted run of the same job left
    tensorrt_table: bool = False  # also write the TensorRT EP's calibration table
    quant: QuantConfig = field(default_factory=QuantConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    prepare: bool = True  # graph preparation (pipeline.preparation) before calibration
    batch_axes: tuple[tuple[str, int], ...] = ()  # inputs whose samples are not on the inferred axis
    const_inputs: tuple[tuple[str, str], ...] = ()  # inputs fed one value for every sample
    labels_key: str | None = None  # None: 'labels', unless a model input has that name
    lead_output: str | None = None  # the output whose metrics lead (None: the first one validation compares)
    layers: str = "all"  # per-layer error: "all" quantized activations, or "none" (skip the pass)
    smooth_quant: float | None = None  # SmoothQuant's alpha (pipeline.smoothing); None: no smoothing
    min_cosine: float | None = None  # quality guard: exit 1 after publishing below this mean cosine
    max_drop: float | None = None  # quality guard: exit 1 after publishing if accuracy drops more (points)
    storage_options: tuple[tuple[str, str], ...] = ()  # --storage-option KEY=VALUE (pipeline.storage_options)

    def __post_init__(self) -> None:
        for name in ("model", "calib", "val", "out"):
            value = getattr(self, name)
            if value is not None and not is_url(value):  # a URL stays a string (tasks.storage)
                object.__setattr__(self, name, Path(value))
        if is_url(self.out):
            from dask_quant.pipeline.remote_out import check_out_url

            check_out_url(self.out)
        if self.resume and is_url(self.out):
            msg = (
                f"--resume reads the chunk checkpoints kept under a local --out; --out {self.out} is a URL, where "
                "none are kept: run without --resume"
            )
            raise InputError(msg)
        try:
            object.__setattr__(self, "metric", Metric(self.metric))
        except ValueError:
            msg = f"unknown metric {self.metric!r}; choose one of: {', '.join(m.value for m in Metric)}"
            raise InputError(msg) from None
        if self.layers not in ("all", "none"):
            msg = f"--layers must be all or none, got {self.layers!r}"
            raise InputError(msg)
        object.__setattr__(self, "batch_axes", tuple((str(n), int(a)) for n, a in self.batch_axes))
        object.__setattr__(self, "const_inputs", tuple((str(n), str(v)) for n, v in self.const_inputs))
        if self.smooth_quant is not None and not 0 < self.smooth_quant <= 1:
            msg = f"--smooth-quant {self.smooth_quant}: alpha must be in (0, 1]; 0.5 is the usual choice"
            raise InputError(msg)
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            msg = f"--min-cosine must be in [-1, 1], got {self.min_cosine}"
            raise InputError(msg)
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            msg = f"--max-drop must be in [0, 100] accuracy points, got {self.max_drop}"
            raise InputError(msg)
        if self.chunk_size is not None and self.chunk_size < 1:
            msg = f"--chunk-size must be a positive number of rows, got {self.chunk_size}"
            raise InputError(msg)
        if self.split_every < 2:
            msg = f"split_every must be at least 2, got {self.split_every}"
            raise InputError(msg)
        object.__setattr__(self, "storage_options", tuple((str(k), str(v)) for k, v in self.storage_options))
        self.storage  # noqa: B018  (refuses options without a URL to apply them to)

    @property
    def writes_tensorrt_table(self) -> bool:
        """--tensorrt-table, or a preset that asks for the table."""
        from dask_quant.pipeline.presets import PRESETS

        preset = self.quant.preset
        return self.tensorrt_table or (preset is not None and PRESETS[preset].tensorrt_table)

    @property
    def storage(self) -> dict[str, dict]:
        """--storage-option per protocol of the job's URLs (pipeline.storage_options)."""
        from dask_quant.pipeline.storage_options import by_protocol

        return by_protocol(self.storage_options, [self.model, self.calib, self.val, self.out])


def json_ready(value):
    """`value` with enums as their values and paths as strings, inside dicts, lists and tuples."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def config_dict(config: RunConfig) -> dict:
    """JSON-ready view of a RunConfig (paths as strings, enums as values)."""
    from dataclasses import asdict

    data = json_ready(asdict(config))
    data["storage_options"] = [key for key, _ in config.storage_options]  # values may be secrets
    return data


# What a scheme does not read: a sweep entry of that scheme leaves these to the entries that do.
_STATIC_RANGES = ("method", "activation_type", "symmetric", "fp32_outputs")
_BLOCKS = ("bits", "block_size", "algorithm")
_UNREAD = {
    Scheme.STATIC: _BLOCKS,
    Scheme.DYNAMIC: (*_STATIC_RANGES, *_BLOCKS),
    Scheme.WEIGHT_ONLY: (*_STATIC_RANGES, "per_channel"),
}


def _flag(name: str, value) -> str:
    """The command-line option that set QuantConfig field `name` to `value`."""
    if name == "per_channel":
        return "--per-tensor"
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or isinstance(value, tuple):
        return flag
    return f"{flag} {value.value if isinstance(value, Enum) else value}"


def precision_name(scheme: Scheme | str, bits: int) -> str:
    """How titles and summaries name the quantized model: INT4 for 4-bit weight-only, INT8 otherwise."""
    return f"INT{bits}" if Scheme(scheme) is Scheme.WEIGHT_ONLY else "INT8"


def refuse_preset_conflicts(preset: Preset | str | None, given: dict) -> None:
    """InputError for an option explicitly `given` (command line, manifest) beside a preset that sets it to
    another value, even when the given value is the option's default (QuantConfig itself only sees values,
    so it cannot tell a default given from one left alone)."""
    from dask_quant.pipeline.presets import PRESETS

    if preset is None:
        return
    preset = Preset(preset)
    for name, value in PRESETS[preset].quant:
        if name in given:
            said = given[name].value if isinstance(given[name], Enum) else given[name]
            if said != value:
                raise preset_conflict(preset, name, said)


def preset_conflict(preset: Preset, name: str, given) -> InputError:
    """The refusal of QuantConfig field `name` given as `given` beside a preset that sets it otherwise (a value
    left at its default takes the preset's; the command line also refuses a default given explicitly)."""
    from dask_quant.pipeline.presets import PRESETS

    value = dict(PRESETS[preset].quant)[name]
    return InputError(
        f"--preset {preset.value} sets {_said(name, value)}, so {_said(name, given)} does not apply: drop it, "
        "or drop --preset"
    )


def _said(name: str, value) -> str:
    """How the command line says QuantConfig field `name` is `value` (booleans either way)."""
    if name == "per_channel":
        return "--per-channel" if value else "--per-tensor"
    if name == "symmetric":
        return "--symmetric" if value else "asymmetric activations (no --symmetric)"
    return _flag(name, value)


SWEPT_SCHEMES = (Scheme.DYNAMIC, Scheme.WEIGHT_ONLY)  # what a sweep entry may name besides a method


def parse_entry(value: str | Method | Scheme) -> Method | Scheme:
    """One entry of a sweep (--method a,b or a zoo model's `methods`): a calibration method, run with the
    options' scheme (static unless --scheme says otherwise), or a scheme that calibrates nothing."""
    if isinstance(value, (Method, Scheme)):
        return value
    if value in {scheme.value for scheme in SWEPT_SCHEMES}:
        return Scheme(value)
    if value in {method.value for method in Method}:
        return Method(value)
    msg = f"unknown method {value!r}; choose one of: {entry_choices()}"
    raise InputError(msg)


def entry_choices() -> str:
    return ", ".join([*(m.value for m in Method), *(s.value for s in SWEPT_SCHEMES)])


def entry_configs(options: dict, entries) -> list[QuantConfig]:
    """The QuantConfig of each sweep entry from the quantization options given (QuantConfig's fields but the
    method). Each entry takes the options its scheme reads and leaves the others to the entries that read
    them (`--method minmax,weight-only --bits 8`: 8 bits for weight-only); an option no entry reads is
    refused as that scheme alone would refuse it."""
    defaults = {f.name: f.default for f in fields(QuantConfig)}
    configs = []
    for entry in map(parse_entry, entries):
        scheme = entry if isinstance(entry, Scheme) else Scheme(options.get("scheme", Scheme.STATIC))
        kept = {k: v for k, v in options.items() if k not in _UNREAD[scheme]}
        method = entry if isinstance(entry, Method) else Method.MINMAX
        configs.append(QuantConfig(**{**kept, "scheme": scheme, "method": method}))
    given = [k for k, v in options.items() if k in defaults and k != "scheme" and v != defaults[k]]
    unread = [k for k in given if all(k in _UNREAD[config.scheme] for config in configs)]
    if unread:  # as the first entry's scheme alone says it
        QuantConfig(**{**options, "scheme": configs[0].scheme, "method": configs[0].method})
        msg = f"no entry of this sweep reads {', '.join(unread)}"
        raise InputError(msg)
    return list(dict.fromkeys(configs))
