"""The zoo manifest: which models `dask-quant zoo run` requantizes, from what, and what counts as worse.

A TOML file with one `[[model]]` table per model:

    [[model]]
    name = "digits"                     # letters, digits, '.', '_' and '-': it names folders
    model = "digits_cnn.onnx"           # a path (relative to the manifest), or
    # builder = "package.module:function"  # called with a cache folder; returns {"model": path, "calib": ...}
    calib = "digits_calib.npy"
    val = "digits_val.npz"
    methods = ["minmax", "entropy"]     # methods, and schemes that calibrate nothing: "dynamic", "weight-only"
    metric = "auto"                     # as --metric
    lead = "agreement"                  # the metric regressions are judged on: cosine, agreement or accuracy
    max_drop = 0.01                     # a lead metric this far below the last good night is a regression
    max_layer_sqnr_drop_db = 3.0        # optional: so is a quantized tensor's SQNR this many dB lower
    [model.quant]                       # QuantConfig's options (per_channel, op_types, exclude_nodes, ...)
    op_types = ["Conv", "Gemm"]

Everything is checked before anything runs: each error names the manifest,
the model and the field (tasks.errors.InputError: exit 2).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from dask_quant.pipeline.config import (
    Metric,
    QuantConfig,
    Scheme,
    entry_choices,
    entry_configs,
    parse_entry,
    refuse_preset_conflicts,
)
from dask_quant.pipeline.methods import Method
from dask_quant.pipeline.target import METRICS
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.storage import is_url

BUILTIN_MANIFEST = "zoo.toml"  # in the dask_quant.data package
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BUILDER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# QuantConfig's fields a manifest may set ([model.quant]); the method (or scheme) comes from `methods`.
QUANT_FIELDS = tuple(f.name for f in dataclasses.fields(QuantConfig) if f.name not in ("method", "version"))
MODEL_FIELDS = (
    "name", "model", "builder", "calib", "val", "methods", "metric", "lead", "max_drop",
    "max_layer_sqnr_drop_db", "chunk_size", "prepare", "quant",
)  # fmt: skip


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo, checked. Paths are absolute; a builder's files are known only once it ran."""

    name: str
    model: Path | None
    builder: str | None
    calib: Path | str | None  # a local path, or a URL (tasks.storage)
    val: Path | str | None
    methods: tuple[Method | Scheme, ...]  # sweep entries: methods, or schemes that calibrate nothing
    metric: Metric = Metric.AUTO
    lead: str = "cosine"
    max_drop: float = 0.01
    max_layer_sqnr_drop_db: float | None = None
    chunk_size: int | None = None
    prepare: bool = True
    quants: tuple[QuantConfig, ...] = (QuantConfig(),)  # one per entry of `methods`

    def quant_for(self, method: Method | Scheme) -> QuantConfig:
        return self.quants[self.methods.index(method)]


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: tuple[ZooModel, ...]


def builtin_manifest() -> Path:
    from dask_quant.pipeline.builtin import builtin_path

    return builtin_path(BUILTIN_MANIFEST)


def load_manifest(path: Path) -> Manifest:
    """The checked manifest at `path` (InputError naming the model and field of the first problem)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        msg = f"zoo manifest not found: {path}; pass --manifest FILE (a TOML file) or leave it out for the built-in zoo"
        raise InputError(msg)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        msg = f"{path}: not a valid TOML file ({exc}); fix the manifest"
        raise InputError(msg) from None
    extra = sorted(set(document) - {"model"})
    if extra:
        msg = f"{path}: unknown top-level key {extra[0]!r}; a manifest holds [[model]] tables only"
        raise InputError(msg)
    tables = document.get("model")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        msg = f"{path}: no [[model]] tables; each model of the zoo is one [[model]] table with a name"
        raise InputError(msg)
    models = tuple(_model(path, index, table) for index, table in enumerate(tables))
    seen = set()
    for model in models:
        if model.name.lower() in seen:
            msg = f"{path}: model {model.name!r}: field 'name': another model has that name; names must be unique"
            raise InputError(msg)
        seen.add(model.name.lower())
    return Manifest(path, models)


class _Fields:
    """Reads one [[model]] table; every error names the manifest, the model and the field."""

    def __init__(self, path: Path, where: str, table: dict) -> None:
        self.path, self.where, self.table = path, where, table

    def refuse(self, field: str, problem: str) -> NoReturn:
        msg = f"{self.path}: {self.where}: field {field!r}: {problem}"
        raise InputError(msg) from None

    def get(self, field: str, kind: type | tuple[type, ...], default=None):
        value = self.table.get(field, default)
        wrong = not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind))
        if value is not None and wrong:
            self.refuse(field, f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def file(self, field: str) -> Path | str | None:
        value = self.get(field, str)
        if value is None:
            return None
        if is_url(value):
            return value  # checked when the job is prepared, as MODEL, --calib and --val at URLs are
        file = Path(value).expanduser()
        file = file if file.is_absolute() else (self.path.parent / file)
        if not (file.is_file() or (field != "model" and file.is_dir())):  # data may be a Parquet folder
            self.refuse(field, f"{file} does not exist; paths are relative to the manifest's folder")
        return file.resolve()


def _kinds(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    names[dict] = "a table"
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


def _model(path: Path, index: int, table: dict) -> ZooModel:
    name = table.get("name")
    where = f"model {name!r}" if isinstance(name, str) else f"model #{index + 1}"
    fields = _Fields(path, where, table)
    unknown = sorted(set(table) - set(MODEL_FIELDS))
    if unknown:
        fields.refuse(unknown[0], f"unknown field; a model's fields are: {', '.join(MODEL_FIELDS)}")
    if not isinstance(name, str) or not _NAME.match(name):
        fields.refuse("name", "required: 1-64 letters, digits, '.', '_' or '-' (it names the model's folders)")
    builder = fields.get("builder", str)
    if (table.get("model") is None) == (builder is None):
        fields.refuse("model", "give exactly one source: model = PATH (an .onnx file), or builder = 'module:function'")
    if builder is not None and not _BUILDER.match(builder):
        fields.refuse("builder", f"{builder!r} is not 'package.module:function'")
    if builder is None and table.get("calib") is None:
        fields.refuse("calib", "required (a calibration .npz/.npy file) unless a builder makes the data")
    methods = fields.get("methods", list, ["minmax"])
    if not methods or not all(isinstance(m, str) for m in methods):
        fields.refuse("methods", f"a non-empty list of method or scheme names ({entry_choices()})")
    try:
        parsed = tuple(dict.fromkeys(parse_entry(m) for m in methods))
    except InputError as exc:
        fields.refuse("methods", str(exc))
    metric = fields.get("metric", str, "auto")
    if metric not in {m.value for m in Metric}:
        fields.refuse("metric", f"unknown metric {metric!r}; choose one of: {', '.join(m.value for m in Metric)}")
    lead = fields.get("lead", str, "cosine")
    if lead not in METRICS:
        fields.refuse("lead", f"unknown lead metric {lead!r}; choose one of: {', '.join(METRICS)}")
    max_drop = fields.get("max_drop", (int, float), 0.01)
    if not 0 <= max_drop <= 1:
        fields.refuse("max_drop", f"must be in [0, 1] (an absolute drop of the lead metric), got {max_drop}")
    sqnr_drop = fields.get("max_layer_sqnr_drop_db", (int, float))
    if sqnr_drop is not None and sqnr_drop < 0:
        fields.refuse("max_layer_sqnr_drop_db", f"must be at least 0 dB, got {sqnr_drop}")
    chunk_size = fields.get("chunk_size", int)
    if chunk_size is not None and chunk_size < 1:
        fields.refuse("chunk_size", f"must be a positive number of rows, got {chunk_size}")
    options = fields.get("quant", dict, {})
    quants = _quants(fields, options, parsed)  # each entry checks the settings it reads
    return ZooModel(
        name=name,
        model=fields.file("model"),
        builder=builder,
        calib=fields.file("calib"),
        val=fields.file("val"),
        methods=parsed,
        metric=Metric(metric),
        lead=lead,
        max_drop=float(max_drop),
        max_layer_sqnr_drop_db=None if sqnr_drop is None else float(sqnr_drop),
        chunk_size=chunk_size,
        prepare=fields.get("prepare", bool, True),
        quants=quants,
    )


def _quants(fields: _Fields, table: dict, entries) -> tuple[QuantConfig, ...]:
    unknown = sorted(set(table) - set(QUANT_FIELDS))
    if unknown:
        fields.refuse(f"quant.{unknown[0]}", f"unknown option; [model.quant] takes: {', '.join(QUANT_FIELDS)}")
    defaults = {f.name: f.default for f in dataclasses.fields(QuantConfig)}
    options = {}
    for key, value in table.items():
        default = defaults[key]
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                fields.refuse(f"quant.{key}", f"expected a list of strings, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            fields.refuse(f"quant.{key}", f"expected true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fields.refuse(f"quant.{key}", f"expected a number, got {value!r}")
        elif not isinstance(default, bool) and not isinstance(value, str):
            fields.refuse(f"quant.{key}", f"expected a string, got {value!r}")
        options[key] = value
    try:
        refuse_preset_conflicts(options.get("preset"), options)  # a setting written out beside a preset
        return tuple(entry_configs(options, entries))
    except InputError as exc:
        fields.refuse("quant", str(exc))
