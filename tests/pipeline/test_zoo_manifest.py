"""The zoo manifest is checked before anything runs: each error names the model and the field, exit 2."""

from __future__ import annotations

import pytest
from processes import dask_quant

from dask_quant.pipeline.builtin import CALIB, MODEL, VAL, builtin_path
from dask_quant.pipeline.zoo_manifest import load_manifest
from dask_quant.tasks.errors import InputError


def _model(**fields) -> str:
    base = {"name": '"digits"', "model": f'"{builtin_path(MODEL)}"', "calib": f'"{builtin_path(CALIB)}"'}
    base.update(fields)
    return "[[model]]\n" + "".join(f"{key} = {value}\n" for key, value in base.items() if value is not None)


BAD = [
    (_model(name='"a b"'), "model 'a b': field 'name': required: 1-64 letters"),
    (_model(name=None), "model #1: field 'name': required"),
    (_model(model=None), "model 'digits': field 'model': give exactly one source"),
    (_model(builder='"x:y"'), "model 'digits': field 'model': give exactly one source"),
    (_model(model=None, builder='"not a builder"'), "field 'builder'"),
    (_model(calib='"missing.npy"'), "model 'digits': field 'calib': "),
    (_model(methods='["minmax", "kl"]'), "field 'methods': unknown method 'kl'; choose one of: minmax, entropy, "),
    (_model(methods="[]"), "field 'methods'"),
    (_model(lead='"f1"'), "field 'lead': unknown lead metric 'f1'"),
    (_model(max_drop="2"), "field 'max_drop': must be in [0, 1]"),
    (_model(max_drop='"a lot"'), "field 'max_drop': expected an integer or a number"),
    (_model(chunk_size="0"), "field 'chunk_size'"),
    (_model(prepare='"yes"'), "field 'prepare': expected true or false"),
    (_model(colour='"red"'), "field 'colour': unknown field"),
    (_model() + '[model.quant]\nper_chanel = true\n', "field 'quant.per_chanel': unknown option"),
    (_model() + '[model.quant]\nop_types = "Conv"\n', "field 'quant.op_types': expected a list of strings"),
    (_model() + '[model.quant]\nactivation_type = "int4"\n', "field 'quant': unknown activation type 'int4'"),
    (_model(methods='["percentile"]') + "[model.quant]\npercentile = 120.0\n", "field 'quant': --percentile"),
    (
        _model() + '[model.quant]\npreset = "qnn"\nper_channel = true\n',
        "field 'quant': --preset qnn sets --per-tensor, so --per-channel does not apply",
    ),
    (_model() + _model(), "model 'digits': field 'name': another model has that name"),
    ("title = 'zoo'\n" + _model(), "unknown top-level key 'title'"),
    ("", "no [[model]] tables"),
    ("[[model]\nname=1", "not a valid TOML file"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_a_bad_manifest_names_the_model_and_the_field(tmp_path, text, expected):
    manifest = tmp_path / "zoo.toml"
    manifest.write_text(text)
    with pytest.raises(InputError) as caught:
        load_manifest(manifest)
    assert expected in str(caught.value)
    assert str(manifest) in str(caught.value)


def test_a_good_manifest_resolves_paths_against_its_folder(tmp_path):
    (tmp_path / "calib.npy").write_bytes(builtin_path(CALIB).read_bytes())
    manifest = tmp_path / "zoo.toml"
    text = _model(calib='"calib.npy"', val=f'"{builtin_path(VAL)}"', methods='["minmax", "entropy"]')
    manifest.write_text(text + "[model.quant]\nper_channel = false\nop_types = ['Conv']\n")
    (model,) = load_manifest(manifest).models
    assert model.calib == (tmp_path / "calib.npy").resolve()
    assert [m.value for m in model.methods] == ["minmax", "entropy"]
    assert all(q.per_channel is False and q.op_types == ("Conv",) for q in model.quants)
    assert [q.method.value for q in model.quants] == ["minmax", "entropy"]


def test_a_model_sweeps_schemes_next_to_methods_each_with_the_options_it_reads(tmp_path):
    manifest = tmp_path / "zoo.toml"
    text = _model(methods='["minmax", "dynamic", "weight-only"]') + "[model.quant]\nsymmetric = true\nbits = 8\n"
    manifest.write_text(text)
    (model,) = load_manifest(manifest).models
    assert [m.value for m in model.methods] == ["minmax", "dynamic", "weight-only"]
    static, dynamic, weight_only = (model.quant_for(m) for m in model.methods)
    assert static.symmetric and static.bits == 4  # --bits is weight-only's
    assert dynamic.scheme.value == "dynamic" and not dynamic.symmetric
    assert weight_only.label == "rtn-int8" and not weight_only.symmetric
    manifest.write_text(_model(methods='["dynamic"]') + "[model.quant]\nsymmetric = true\n")
    with pytest.raises(InputError, match="field 'quant': --scheme dynamic quantizes activations at run time"):
        load_manifest(manifest)


def test_the_command_refuses_a_bad_manifest_in_one_line_and_writes_nothing(tmp_path):
    manifest = tmp_path / "zoo.toml"
    manifest.write_text(_model(lead='"f1"'))
    out = tmp_path / "out"
    done = dask_quant("zoo", "run", "--manifest", manifest, "--out", out)
    assert done.returncode == 2
    assert done.stderr.startswith(f"dask-quant: error: {manifest}: model 'digits': field 'lead'")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_the_builtin_zoo_manifest_is_valid():
    from dask_quant.pipeline.zoo_manifest import builtin_manifest

    models = load_manifest(builtin_manifest()).models
    assert [m.name for m in models] == ["digits", "minilm", "onet"]
    assert models[0].model.is_file() and models[0].calib.is_file()
    assert [m.builder for m in models[1:]] == [f"dask_quant.data.zoo_builders:{n}" for n in ("minilm", "onet")]


def _zoo_section() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("## Nightly zoo") :]
    return section[: section.index("\n## ", 1)]


def _parses(args: list[str]) -> None:
    """The arguments are a `dask-quant` command line click accepts (options exist, values convert)."""
    from dask_quant.pipeline.cli import main

    assert args[:2] == ["zoo", "run"], args
    main.make_context("dask-quant", list(args), resilient_parsing=False)  # raises click.UsageError if not
    context = main.commands["zoo"].commands["run"].make_context("run", list(args[2:]))
    assert context.params["scheduler"] == next(a for a in args if a.startswith("tcp://"))


def test_the_readme_schedules_are_valid_zoo_commands():
    import re
    import shlex

    import yaml

    section = _zoo_section()
    cron = re.findall(r"```text\n(0 2 \* \* \* .*?)\n```", section)[0]
    _parses(shlex.split(cron.split("dask-quant", 1)[1].split(">>")[0]))
    units = re.findall(r"```ini\n(.*?)```", section, flags=re.S)
    assert len(units) == 2
    service, timer = units
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    _parses(shlex.split(exec_start.split("dask-quant", 1)[1]))
    assert "Type=oneshot" in service and "OnCalendar=*-*-* 02:00:00" in timer and "WantedBy=timers.target" in timer
    (manifest,) = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S)]
    assert manifest["kind"] == "CronJob" and manifest["spec"]["schedule"] == "0 2 * * *"
    (container,) = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][0] == "dask-quant"
    _parses(container["command"][1:])


def test_a_damaged_history_file_is_named_and_nothing_runs(tmp_path):
    out = tmp_path / "out"
    damaged = out / "history" / "date=2026-01-01" / "part-x.parquet"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"PAR1 not really")
    manifest = tmp_path / "zoo.toml"
    manifest.write_text(_model())
    done = dask_quant("zoo", "run", "--manifest", manifest, "--out", out)
    assert done.returncode == 2
    assert done.stderr.startswith(f"dask-quant: error: {damaged}: not a readable zoo history file")
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == [".zoo.lock", "history"]  # no run, no new night


@pytest.mark.parametrize(("jobs", "requested", "expected"), [(3, None, 3), (3, 1, 1), (3, 5, 3), (1, None, 1)])
def test_every_model_runs_at_once_unless_asked(jobs, requested, expected):
    from dask_quant.pipeline.zoo import jobs_at_once

    assert jobs_at_once(jobs, requested) == expected


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path):
    manifest = tmp_path / "zoo.toml"
    manifest.write_text(_model())
    done = dask_quant("zoo", "run", "--manifest", manifest, "--out", "/proc/dask-quant-zoo")
    assert done.returncode == 2
    assert done.stderr.startswith("dask-quant: error: --out /proc/dask-quant-zoo: ")
    assert "Traceback" not in done.stderr
