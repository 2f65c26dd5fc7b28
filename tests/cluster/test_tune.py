"""`tune`: the search reverts the layer known to be sensitive, decides the same for any worker count and
chunking, and a killed search resumes from its finished experiments."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from models import (
    _save_checked,
    build_outlier_mlp,
    build_shared_outlier_model,
    build_two_headed_model,
    outlier_mlp_data,
)
from processes import dask_quant

from dask_quant import pipeline as dq
from dask_quant.pipeline import results
from dask_quant.pipeline.search import ALL, RANKING, WALK, Experiment, greedy_search
from dask_quant.pipeline.target import Target
from dask_quant.pipeline.tune import TuneConfig, tune
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.exact_sum import exact_sum
from dask_quant.tasks.row_identity import DIFFERENT_ROWS
from dask_quant.tasks.validate import ValidationStats

TARGET = Target("cosine", 0.999)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlp")
    model = build_outlier_mlp(folder / "mlp.onnx")
    return (
        model,
        outlier_mlp_data(folder / "calib.npz", 200, 1, True),
        outlier_mlp_data(folder / "val.npz", 120, 2, False),
    )


def _tuned(mlp, out, client, chunk_size=None, **tuning):
    model, calib, val = mlp
    config = dq.RunConfig(model=model, calib=calib, val=val, out=out, chunk_size=chunk_size, layers="none")
    return tune(config, TuneConfig(TARGET, ranking_samples=16, **tuning), client=client)


def _trials(run_dir: Path):
    return pq.read_table(run_dir / "trials.parquet").to_pandas()


def _stats(samples: int = 1, cosine_sum: float = 0.0, **fields) -> ValidationStats:
    """Statistics of `samples` whose cosines add up to `cosine_sum` (held exactly, as compare_outputs holds it;
    NaN: the samples' cosines are NaN)."""
    if np.isnan(cosine_sum):
        return ValidationStats(samples=samples, nan_cosines=samples, **fields)
    return ValidationStats(samples=samples, cosine_sum=exact_sum(np.array([cosine_sum])), **fields)


def _readme_block() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("## Tune") :]
    return re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 1)], flags=re.S)[0]


def test_search_reverts_exactly_the_outlier_layer_for_any_workers_and_chunking(mlp, tmp_path, monkeypatch):
    outcomes = []
    for workers, chunk_size, isolated in ((1, None, True), (2, None, True), (2, 7, False)):
        with LocalCluster(n_workers=workers, threads_per_worker=1) as cluster, Client(cluster) as client:
            outcomes.append(_tuned(mlp, tmp_path / f"{workers}-{chunk_size}", client, chunk_size, isolated=isolated))
    first = outcomes[0]
    assert first.search.reverted == ("first",)  # the MatMul whose input holds the rare outlier
    assert first.search.met and first.search.final.mean_cosine >= 0.999 > first.search.baseline.mean_cosine
    names = ("first", "hidden1", "last")
    assert [(g.name, g.nodes, g.kind) for g in first.groups] == [(n, (n,), "node") for n in names]
    for other in outcomes[1:]:
        assert other.search.reverted == first.search.reverted
        assert other.search.rankings == first.search.rankings  # the same ranking, value for value
        assert other.search.final == first.search.final
    assert outcomes[1].search.isolated == first.search.isolated
    assert outcomes[2].search.isolated == ()  # without --isolated-errors (the default): the ranking alone
    assert "isolated" not in set(_trials(outcomes[2].run.run_dir)["phase"])
    record = json.loads((first.run.run_dir / results.RUN_FILE).read_text())["tune"]
    assert (
        record["reverted"] == ["first"] and record["met"] and record["int8_share"]["MatMul"] == {"int8": 2, "total": 3}
    )
    trials = _trials(first.run.run_dir)
    assert len(trials) == record["experiments"]["computed"] == first.trials_computed
    assert set(trials["phase"]) == {"baseline", "rank", "isolated", "step", "confirm"}
    # The walk's steps on 32 evenly spaced rows of the 120 (twice the ranking's 16), and the step that met the
    # target there on every row.
    assert record["walk_samples"] == 32 and set(trials[trials.phase == "step"]["rows"]) == {"walk"}
    assert list(trials[trials.phase == "confirm"]["rows"]) == ["all"]
    assert (trials["run_id"] == first.run.run_id).all()
    # Its own error: the first layer alone quantized is what breaks the model (its input rounds to the same
    # few steps for every sample, so the output is the same for every sample: collapsed, no metric).
    isolated = dict(first.search.isolated)
    assert np.isnan(isolated["first"]) and min(isolated["hidden1"], isolated["last"]) > 0.5
    page = (first.run.run_dir / "report.html").read_text()
    assert 'alt="sensitivity of each quantizer group"' in page
    assert "1 of 3 quantizer groups kept in FP32 (1 node)" in page
    # The README's query runs as written on this run's folder.
    (tmp_path / "dask-quant-runs").symlink_to(first.run.run_dir.parent)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(_readme_block(), {})  # noqa: S102
    header, top, *_ = printed.getvalue().splitlines()
    assert header.split() == ["group", "metric", "seconds"] and top.split()[1] == "first"


def test_the_target_holds_on_every_output_not_only_the_lead_one(tmp_path):
    # Full INT8 meets cosine>=0.999 on the lead output; the second output's weight is ruined and does not: the
    # search reverts the MatMul behind it, and the published model meets the target on both outputs.
    model = build_two_headed_model(tmp_path / "two.onnx")
    calib = outlier_mlp_data(tmp_path / "calib.npz", 200, 1, False)
    val = outlier_mlp_data(tmp_path / "val.npz", 120, 2, False)
    quant = dq.QuantConfig(per_channel=False)
    config = dq.RunConfig(model=model, calib=calib, val=val, out=tmp_path / "runs", layers="none", quant=quant)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster, Client(cluster) as client:
        result = tune(config, TuneConfig(TARGET, ranking_samples=16), client=client)
    assert result.search.reverted == ("side_mm",) and result.search.met
    assert result.search.baseline.mean_cosine < TARGET.bound <= result.search.final.mean_cosine
    record = json.loads((result.run.run_dir / results.RUN_FILE).read_text())["tune"]
    assert record["metric_before"] == result.search.baseline.mean_cosine and record["judged_on"] == ["out", "side"]
    page = (result.run.run_dir / "report.html").read_text()
    assert "(the lowest of outputs out, side) on every validation row" in page
    lead, ((name, _, side),) = result.run.validation, result.run.other_outputs
    assert name == "side" and min(lead.mean_cosine, side.mean_cosine) >= TARGET.bound


def test_a_quantizer_three_nodes_share_is_reverted_as_one_group(mlp, tmp_path):
    # The ruined activation "s" keeps its QDQ pair while any of shift, left, right is quantized.
    _, calib, val = mlp
    model = build_shared_outlier_model(tmp_path / "shared.onnx")
    config = dq.RunConfig(model=model, calib=calib, val=val, out=tmp_path / "runs", layers="none")
    with Client(processes=False, n_workers=1, dashboard_address=":0") as client:
        result = tune(config, TuneConfig(TARGET, ranking_samples=16), client=client)
    groups = {g.name: (g.nodes, g.kind) for g in result.groups}
    assert groups["s"] == (("shift", "left", "right"), "shared")
    assert groups["all Add"] == (("shift", "join"), "op type")  # MatMul never forms one
    assert {name for name, (_, kind) in groups.items() if kind == "node"} == {"shift", "left", "right", "join"}
    search = result.search
    assert search.groups == ("s",) and search.reverted == ("shift", "left", "right") and search.met
    assert search.baseline.mean_cosine < 0.5
    assert {g for g, _ in search.rankings[0]} == {"shift", "join", "all Add"}  # no MatMul in them: first
    every = dict(search.rankings[-1])  # then every group, as none of those helped
    # No node alone meets it (NaN where the output stays collapsed: never >=).
    assert not any(every[group] >= TARGET.bound for group in ("shift", "left", "right", "join", "all Add"))
    record = json.loads((result.run.run_dir / results.RUN_FILE).read_text())["tune"]
    assert record["reverted_groups"] == ["s"]
    assert record["composite_groups"] == {
        "s": {"kind": "shared", "nodes": ["shift", "left", "right"]},
        "all Add": {"kind": "op type", "nodes": ["shift", "join"]},
    }
    page = (result.run.run_dir / "report.html").read_text()
    assert "1 of 6 quantizer groups kept in FP32 (3 nodes)" in page and "(shared, 3 nodes)" in page


def test_an_output_its_writer_does_not_quantize_belongs_to_its_reader_alone(tmp_path):
    # x -> MatMul "mm" -> y -> Add "bias" -> z -> MatMul "mm2" -> out. With MatMul outputs in FP32 (ORT's
    # OpTypesToExcludeOutputQuantization), y keeps a QDQ pair only because the Add reads it: excluding the Add
    # alone takes the pair out (checked on ORT's own output), so no group ties the MatMul to it.
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from dask_quant.pipeline.groups import SHARED, quantizer_groups
    from dask_quant.pipeline.selection import default_op_types

    rng = np.random.default_rng(5)
    weights = [
        numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("Add", ["y", "b"], ["z"], name="bias"),
        helper.make_node("MatMul", ["z", "w2"], ["out"], name="mm2"),
    ]
    model = _save_checked(tmp_path / "bias.onnx", nodes, "bias", weights, 4)

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"x": rng.normal(size=(16, 8)).astype(np.float32)}])

        def get_next(self):
            return next(self.rows, None)

    def quantized(name, exclude=(), fp32_outputs=("MatMul",)):
        path = tmp_path / name
        options = {"OpTypesToExcludeOutputQuantization": list(fp32_outputs)}
        quantize_static(str(model), str(path), Rows(), quant_format=QuantFormat.QDQ, nodes_to_exclude=list(exclude),
                        extra_options=options)  # fmt: skip
        graph = onnx.load(str(path))
        return graph, {n.input[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"}

    int8, pairs = quantized("full.onnx")
    assert "y" in pairs  # the Add asked for it
    assert "y" not in quantized("no_add.onnx", exclude=("bias",))[1]  # the Add alone owned it
    assert "y" in quantized("no_add_mm_out.onnx", exclude=("bias",), fp32_outputs=())[1]  # else the MatMul asks
    fp32 = onnx.load(str(model))
    groups = quantizer_groups(int8, fp32, default_op_types(), fp32_outputs=("MatMul",))
    assert [g.nodes for g in groups if g.kind == SHARED] == [("bias", "mm2")]  # z: the Add writes, mm2 reads
    assert ("mm", "bias") in [g.nodes for g in quantizer_groups(int8, fp32, default_op_types())]  # without the rule


def test_remembered_weights_and_shapes_write_the_models_quantize_static_writes(residual, tmp_path, monkeypatch):
    from onnxruntime.quantization import qdq_quantizer

    from dask_quant.pipeline import experiments
    from dask_quant.pipeline.experiments import (
        _ort_quantize_module,
        _remember_quantizer_work,
        _source,
        variant_bytes,
        write_variant,
    )
    from dask_quant.tasks.digest import file_state

    model, calib, _ = residual
    config = dq.RunConfig(model=model, calib=calib, out=tmp_path)
    _remember_quantizer_work()
    originals = qdq_quantizer._dask_quant_originals
    with dq.prepare(config) as prepared, Client(processes=False, n_workers=1, dashboard_address=":0") as client:
        calibration = dq.calibrate(prepared, client, [config.quant])
        nodes = [n.name for n in prepared.proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        variants = [(), (nodes[0],), tuple(nodes[1:]), ()]  # the last one again: from what was remembered
        with monkeypatch.context() as plain:  # ORT's own functions
            for owner, attribute, original in originals:
                plain.setattr(owner, attribute, original)
            expected = [
                dq.quantize(calibration, config.quant, tmp_path / f"plain{i}.onnx", v) for i, v in enumerate(variants)
            ]
        _source.cache_clear()
        got = [write_variant(calibration, config.quant, tmp_path / f"memo{i}.onnx", v) for i, v in enumerate(variants)]
        remembered = _source.cache_info()
        in_memory = [variant_bytes(calibration, config.quant, v) for v in variants]  # nothing written
        with monkeypatch.context() as small:  # a model over the size remembered: ORT's own round trip
            small.setattr(experiments, "_REMEMBER_SOURCE_UP_TO", 0)
            _source.cache_clear()
            unremembered = write_variant(calibration, config.quant, tmp_path / "large.onnx", variants[1])
            assert _source(str(Path(prepared.model.path).resolve()), file_state(prepared.model.path)) is None
        assert unremembered.path.read_bytes() == expected[1].path.read_bytes()
    assert all(getattr(owner, name) is not original for owner, name, original in originals)  # remembered ones ran
    assert hasattr(_ort_quantize_module(), "_dask_quant_shape_inference")  # and ORT's shape inference, once per source:
    assert remembered.misses == 1 and remembered.hits == len(variants) - 1
    for a, b, c in zip(expected, got, in_memory, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes() == c
    assert len({q.sha256 for q in got}) == 3
    assert not list(tmp_path.glob("dask-quant-in-memory-*")) and not list(Path.cwd().glob("dask-quant-in-memory-*"))


def test_a_worker_scores_each_distinct_variant_once(mlp, tmp_path, monkeypatch):
    from dask_quant.pipeline.experiments import run_experiment
    from dask_quant.pipeline.stages.prepare import dataset_chunks
    from dask_quant.tasks.reference_rows import ReferenceRows, reference_chunk

    model, calib, val = mlp
    config = dq.RunConfig(model=model, calib=calib, val=val, out=tmp_path)
    scored = []
    score = ReferenceRows.score_session
    monkeypatch.setattr(ReferenceRows, "score_session", lambda self, *a: scored.append(1) or score(self, *a))
    with dq.prepare(config) as prepared, Client(processes=False, n_workers=1, dashboard_address=":0") as client:
        calibration = dq.calibrate(prepared, client, [config.quant])
        (chunk, *_) = dataset_chunks(prepared.val, 64)
        rows = reference_chunk(chunk, prepared.model, prepared.model)[0].take(range(10))
        # "last" twice (the same model), then "first": the second one comes from what this process scored.
        results = [run_experiment(calibration, config.quant, nodes, rows, None)[0] for nodes in [("last",)] * 2]
        other = run_experiment(calibration, config.quant, ("first",), rows, None)[0]
    assert results[0] == results[1] != other and len(scored) == 2


def test_search_logic_reverts_greedily_and_ranks_again_when_a_step_does_not_help():
    # A made-up model: each group costs its penalty; "b" and "d" together cost nothing extra when reverted.
    penalty = {"a": 0.001, "b": 0.02, "c": 0.0, "d": 0.01}

    def stats(cosine: float) -> ValidationStats:
        return _stats(samples=1, cosine_sum=cosine)

    seen = []

    def run(experiments: list[Experiment]):
        seen.append([e.phase for e in experiments])
        return [stats(1 - sum(v for g, v in penalty.items() if g not in e.reverted)) for e in experiments]

    result = greedy_search(("a", "b", "c", "d"), Target("cosine", 0.9985), run, speculate=2)
    assert result.reverted == ("b", "d")  # most sensitive first, then the next; stops once the target holds
    assert result.met and result.stopped == "target met"
    assert [g for g, _ in result.rankings[0]] == ["b", "d", "a", "c"]
    assert seen[0] == ["baseline"] and seen[1].count("isolated") == 4
    unreachable = greedy_search(("a", "b", "c", "d"), Target("cosine", 1.5), run, speculate=2, isolated=False)
    assert not unreachable.met and unreachable.stopped in (
        "every group is in FP32",
        "no remaining group improves the metric",
    )
    assert unreachable.final.mean_cosine == 1.0


def test_the_walk_skips_a_group_that_does_not_help_on_every_row_and_walks_on():
    # "a" looks worst on the ranking rows but costs nothing on every row; "b" and "c" are what matter.
    on_ranking = {"a": 0.05, "b": 0.04, "c": 0.03, "d": 0.0}
    on_all = {"a": 0.0, "b": 0.04, "c": 0.03, "d": 0.0}

    def run(experiments: list[Experiment]):
        def cost(e):
            return sum(v for g, v in (on_all if e.rows == ALL else on_ranking).items() if g not in e.reverted)

        return [_stats(samples=1, cosine_sum=1 - cost(e)) for e in experiments]

    walked = greedy_search("abcd", Target("cosine", 0.999), run, speculate=2, patience=2, isolated=False)
    assert walked.met and walked.reverted == ("b", "c") and walked.rounds == 1  # no second ranking needed
    impatient = greedy_search("abcd", Target("cosine", 0.999), run, speculate=2, patience=1, isolated=False)
    assert not impatient.met and impatient.reverted == () and impatient.stopped.startswith("no remaining group")


def _additive(on_ranking: dict, on_all: dict | None = None):
    """A made-up model: each node not in FP32 costs its penalty (on the ranking rows / on every row)."""

    def run(experiments: list[Experiment]):
        def cost(e):
            return sum(v for n, v in (on_ranking if e.rows != ALL else on_all or on_ranking).items()
                       if n not in e.reverted)  # fmt: skip

        return [_stats(samples=1, cosine_sum=1 - cost(e)) for e in experiments]

    return run


def test_a_group_of_three_weighted_nodes_must_gain_three_times_what_one_gains_to_go_first():
    # Reverting q, k and v together gains 0.006, reverting f alone 0.003: f goes first (0.003 per MatMul
    # against 0.002), and the target needs only f.
    run = _additive({"q": 0.002, "k": 0.002, "v": 0.002, "f": 0.003, "x": 0.0})
    groups = {"qkv": ("q", "k", "v"), "f": ("f",), "x": ("x",)}
    result = greedy_search(groups, Target("cosine", 0.993), run, isolated=False, restore=frozenset("qkvfx"))
    assert [g for g, _ in result.rankings[0]] == ["f", "qkv", "x"] and result.groups == ("f",) and result.met


def test_the_walk_decides_the_same_for_any_number_of_steps_scored_at_once():
    # Groups overlap (a shared quantizer's group covers nodes of single-node groups), some reverts help only
    # on the ranking rows, and the put-back runs: every `speculate` gives the same search.
    on_ranking = {"a": 0.004, "b": 0.003, "c": 0.0025, "d": 0.002, "e": 0.001, "f": 0.0005}
    on_all = {"a": 0.001, "b": 0.003, "c": 0.0, "d": 0.002, "e": 0.001, "f": 0.0005}
    groups = {"ab": ("a", "b"), "a": ("a",), "b": ("b",), "c": ("c",), "cd": ("c", "d"), "e": ("e",), "f": ("f",)}
    results = [
        greedy_search(groups, Target("cosine", 0.9982), _additive(on_ranking, on_all), speculate=k, patience=2,
                      restore=frozenset("abcdef"))
        for k in range(1, 7)
    ]  # fmt: skip
    # "ab" ranks first and its prefix covers "a", which comes next; "ab" misses on every row (b's INT8
    # helped there), so "a" is still to be tried after it.
    covering = {"ab": ("a", "b"), "a": ("a",), "c": ("c",)}
    run = _additive({"a": 0.002, "b": 0.01, "c": 0.001}, {"a": 0.003, "b": -0.004, "c": 0.003})
    results += [greedy_search(covering, Target("cosine", 0.9995), run, speculate=k, isolated=False) for k in (1, 3)]
    assert results[-1].groups == results[-2].groups == ("a",)
    results = results[:-2]
    assert results[0].met
    for other in results[1:]:
        assert (other.reverted, other.groups, other.rankings, other.final) == (
            results[0].reverted, results[0].groups, results[0].rankings, results[0].final,
        )  # fmt: skip


def _by_rows(costs: dict):
    """A made-up model scored on each set of rows: every node not in FP32 costs that set's penalty."""

    def run(experiments: list[Experiment]):
        def cost(e):
            return sum(v for n, v in costs[e.rows].items() if n not in e.reverted)

        return [_stats(samples=1, cosine_sum=1 - cost(e)) for e in experiments]

    return run


def test_the_walk_scores_its_steps_on_its_rows_and_only_every_row_ends_it():
    # The walk's rows stand for every row: four steps there, then one model on every row, which meets it.
    ranking = {"a": 0.004, "b": 0.003, "c": 0.002, "d": 0.001}
    alike = {"a": 0.0012, "b": 0.001, "c": 0.0007, "d": 0.0001}
    scored = []
    run = _by_rows({RANKING: ranking, WALK: alike, ALL: alike})

    def counted(experiments):
        scored.extend((e.phase, e.rows) for e in experiments)
        return run(experiments)

    result = greedy_search("abcd", Target("cosine", 0.999), counted, speculate=1, isolated=False, walk_rows=WALK)
    assert result.met and result.groups == ("a", "b") and result.final.mean_cosine == pytest.approx(1 - 0.0008)
    assert [p for p, rows in scored if rows == ALL] == ["baseline", "confirm"]
    assert [p for p, rows in scored if rows == WALK] == ["baseline", "step", "step"]
    # Rows that flatter the model: they meet the target after "a", every row does not, and from there the walk
    # goes on every row (where "b" then meets it), the same for any number of steps scored at once.
    flattering = {"a": 0.0012, "b": 0.0001, "c": 0.0001, "d": 0.0001}
    results = [
        greedy_search("abcd", Target("cosine", 0.999), _by_rows({RANKING: ranking, WALK: flattering, ALL: alike}),
                      speculate=k, isolated=False, walk_rows=WALK)
        for k in (1, 2, 4)
    ]  # fmt: skip
    assert results[0].met and results[0].groups == ("a", "b")
    assert all((r.groups, r.final) == (results[0].groups, results[0].final) for r in results[1:])
    # With a put-back to follow, its first model is scored beside the confirmation (the idle thread's work),
    # and the search decides as with one model at a time: "b" gained least, and goes back.
    batches = []
    costs = {RANKING: ranking, WALK: alike, ALL: {"a": 0.0006, "b": 0.0001, "c": 0.0003, "d": 0.0001}}

    def batched(experiments):
        batches.append([(e.phase, e.rows) for e in experiments])
        return _by_rows(costs)(experiments)

    two, one = (
        greedy_search("abcd", Target("cosine", 0.999), run, speculate=k, isolated=False, walk_rows=WALK,
                      restore=frozenset("abcd"))
        for k, run in ((2, batched), (1, _by_rows(costs)))
    )  # fmt: skip
    assert [("confirm", ALL), ("restore", ALL)] in batches
    assert two.met and (two.groups, two.reverted, two.final) == (one.groups, one.reverted, one.final)
    assert two.groups == ("a",)
    # Walk rows with nothing to gain (they meet the target at full INT8, or reverting helps only elsewhere):
    # every row decides, and the walk goes on there.
    target, ranked = Target("cosine", 0.999), {"a": 0.004, "b": 0.002}
    for walk in ({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.0, "z": 0.002}):
        found = greedy_search("ab", target, _by_rows({RANKING: ranked, WALK: walk, ALL: ranked}), isolated=False,
                              walk_rows=WALK, restore=frozenset("ab"))  # fmt: skip
        assert found.met and found.reverted == ("a", "b") and found.final.mean_cosine == 1.0


def test_a_revert_that_fixes_a_nan_metric_is_put_back_last():
    # "a" turns the walk's rows from NaN to a number: its gain is NaN, which must not sort first.
    nan = float("nan")
    costs = {
        RANKING: {"a": 0.01, "b": 0.005, "c": 0.004, "d": 0.003},
        WALK: {"a": nan, "b": 0.003, "c": 0.0005, "d": 0.001},
        ALL: {"a": nan, "b": 0.003, "c": 0.003, "d": 0.0},
    }
    result = greedy_search("abcd", Target("cosine", 0.9995), _by_rows(costs), isolated=False, walk_rows=WALK,
                           restore=frozenset("abcd"), speculate=1)  # fmt: skip
    assert result.met and result.reverted == ("a", "b", "c")  # "d" (least gain) went back


def test_a_target_met_only_in_fp32_publishes_nothing_and_says_so(mlp, tmp_path):
    model, calib, val = mlp
    result = dask_quant("tune", model, "--calib", calib, "--val", val, "--target", "cosine>=1.5", "--out", tmp_path,
                        "--ranking-samples", "8", "--layers", "none", "--workers", "1")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "was not reached even with every quantized node in FP32" in result.stderr
    assert not [d for d in tmp_path.iterdir() if not d.name.startswith(".")]


def test_a_weighted_group_the_target_no_longer_needs_is_put_back():
    # "a" looks worst on the ranking rows, so the walk takes it first; once "b" is in FP32 too, the target
    # holds without "a": it goes back to INT8. Without a weighted node in it, it stays in FP32.
    on_ranking = {"a": 0.05, "b": 0.01}
    on_all = {"a": 0.004, "b": 0.01}
    phases = []

    def run(experiments: list[Experiment]):
        phases.extend(e.phase for e in experiments)
        costs = [sum(v for g, v in (on_all if e.rows == ALL else on_ranking).items() if g not in e.reverted)
                 for e in experiments]  # fmt: skip
        return [_stats(samples=1, cosine_sum=1 - c) for c in costs]

    target = Target("cosine", 0.995)
    kept = greedy_search("ab", target, run, isolated=False)
    assert kept.reverted == ("a", "b") and kept.met and "restore" not in phases
    put_back = greedy_search("ab", target, run, isolated=False, restore=frozenset({"a", "b"}))
    assert put_back.reverted == ("b",) and put_back.groups == ("b",) and put_back.met
    assert put_back.final.mean_cosine == 1 - on_all["a"] and phases.count("restore") == 1


def test_the_put_back_tries_the_least_useful_revert_first_and_stops_after_two_misses():
    # The walk takes x, y, z (cheap on every row, costly on the ranking rows) and then w. Put back in the
    # order of what each revert gained on every row: x (passes), x+y (passes), x+y+z (fails), x+y+w (fails):
    # two misses in a row end it. Any number of models scored at once decides the same.
    scored = []
    run = _additive(
        {"x": 0.01, "y": 0.009, "z": 0.008, "w": 0.007}, {"x": 0.0003, "y": 0.0006, "z": 0.0009, "w": 0.004}
    )

    def counted(experiments):
        scored.extend((e.phase, e.reverted) for e in experiments)
        return run(experiments)

    target, weighted = Target("cosine", 0.999), frozenset("xyzw")
    results = [greedy_search("xyzw", target, counted if k == 2 else run, speculate=k, isolated=False,
                             restore=weighted) for k in (1, 2, 3, 5)]  # fmt: skip
    assert results[0].groups == ("z", "w") and results[0].met
    assert results[0].final.mean_cosine == 1 - 0.0009
    for other in results[1:]:
        assert (other.groups, other.reverted, other.final) == (results[0].groups, results[0].reverted, results[0].final)
    # Two at a time: (y z w) and (z w) pass, (w) fails with the next one scored speculatively (the baseline,
    # already known), and (z) fails: four models on every row, never one of the eight subsets more.
    assert [r for phase, r in scored if phase == "restore"] == [("y", "z", "w"), ("z", "w"), ("w",), ("z",)]


def test_groups_without_a_weighted_node_are_walked_first():
    # "w" (a MatMul's group) ranks first, but "u" and "v" (no weighted node) meet the target without it;
    # only when they cannot does the search rank every group and take "w".
    cost = {"w": 0.02, "u": 0.004, "v": 0.003, "x": 0.0}
    logged = []

    def run(experiments: list[Experiment]):
        return [_stats(samples=1, cosine_sum=1 - sum(c for g, c in cost.items() if g not in e.reverted))
                for e in experiments]  # fmt: skip

    weighted = frozenset({"w"})
    cheap = greedy_search("wuvx", Target("cosine", 0.979), run, restore=weighted, log=logged.append)
    assert cheap.met and cheap.groups == ("u", "v") and [g for g, _ in cheap.rankings[0]] == ["u", "v", "x"]
    needed = greedy_search("wuvx", Target("cosine", 0.99), run, restore=weighted, log=logged.append)
    assert needed.met and needed.groups[:2] == ("u", "v") and "w" in needed.groups
    assert any(line.startswith("no group without a MatMul") for line in logged)
    plain = greedy_search("wuvx", Target("cosine", 0.979), run)  # nothing weighted: one tier, "w" first
    assert plain.groups == ("w",)


def test_time_budget_stops_with_the_best_so_far():
    def run(experiments):
        return [_stats(samples=1, cosine_sum=0.5) if e.rows == ALL and not e.reverted else None
                for e in experiments]  # fmt: skip

    result = greedy_search(("a", "b"), TARGET, run)
    assert result.stopped == "time budget" and result.reverted == () and not result.met
    # The time runs out after the walk's first step on its rows: that model stands, not met (every row has
    # not scored it), with its statistics on the walk's rows.
    scored = _by_rows({RANKING: {"a": 0.01, "b": 0.001}, WALK: {"a": 0.01, "b": 0.001}, ALL: {"a": 0.01, "b": 0.001}})
    calls = []

    def budget(experiments):
        calls.append(experiments)
        return scored(experiments) if len(calls) <= 4 else [None] * len(experiments)

    walked = greedy_search(("a", "b"), Target("cosine", 0.9995), budget, speculate=1, isolated=False, walk_rows=WALK)
    assert walked.stopped == "time budget" and walked.reverted == ("a",) and not walked.met
    assert walked.final.mean_cosine == pytest.approx(0.999) and walked.groups == ("a",)
    # Every group is in FP32 and the time runs out as every row would score that: it says so.
    tables = _by_rows({RANKING: {"a": 0.004}, WALK: {"a": 0.001, "z": 0.005}, ALL: {"a": 0.001}})
    whole = greedy_search("a", Target("cosine", 0.9999), tables, isolated=False, walk_rows=WALK)
    cut = greedy_search("a", Target("cosine", 0.9999), lambda es: tables(es) if not any(e.phase == "confirm"
                        for e in es) else [None] * len(es), isolated=False, walk_rows=WALK)  # fmt: skip
    assert whole.met and whole.reverted == ("a",) and not cut.met and cut.stopped == "time budget"


def test_bad_targets_are_refused_in_one_line():
    for text in ("cosine > 0.9", "latency>=3", "cosine>=abc", "cosine>=nan"):
        with pytest.raises(InputError, match="--target"):
            Target.parse(text)
    with pytest.raises(InputError, match="exactly one of"):
        Target.parse("cosine>=0.9", 1.0)
    assert Target.parse(" agreement >= 0.98 ") == Target("agreement", 0.98)
    assert Target.parse(None, 1.0).describe() == "accuracy at most 1 points below FP32's"


def test_a_cosine_target_is_judged_on_the_lowest_output_and_the_others_on_the_lead_one():
    lead, side, broken = (_stats(samples=2, cosine_sum=c, top1_agree=a) for c, a in
                          ((1.99, 2), (1.9, 0), (float("nan"), 2)))  # fmt: skip
    cosine, agreement = Target("cosine", 0.99), Target("agreement", 0.9)
    assert cosine.judge([lead, side]) is side and not cosine.met(cosine.judge([lead, side]))
    assert cosine.judge([lead, broken, side]) is broken  # a NaN output is the worst: never met
    assert cosine.judge([lead, _stats(samples=2, cosine_sum=1.99)]) is lead  # the first of equals
    assert agreement.judge([lead, side]) is lead and agreement.met(lead)  # top-1 of the lead output's classes


def test_no_target_holds_where_the_int8_output_collapsed():
    """The same INT8 output for every sample while FP32's differ: an offset keeps the cosine near 1 and a
    constant class scores its share of the labels, yet the model is useless; such statistics meet no target
    and are judged worst."""
    fields = {
        "fp32_row": DIFFERENT_ROWS,
        "fp32_top": DIFFERENT_ROWS,
        "top1_agree": 2,
        "labelled": 2,
        "fp32_correct": 2,
        "int8_correct": 2,
    }
    collapsed = _stats(samples=2, cosine_sum=2.0, int8_row="one row", **fields)
    healthy = _stats(samples=2, cosine_sum=1.98, int8_row=DIFFERENT_ROWS, **fields)
    for target in (Target("cosine", 0.99), Target("agreement", 0.9), Target("accuracy", None, 1.0)):
        assert target.met(healthy) and not target.met(collapsed) and np.isnan(target.value(collapsed))
        assert target.shown(collapsed) == "n/a (the INT8 output is the same for every sample while FP32's is not)"
    assert Target("cosine", 0.99).judge([healthy, collapsed]) is collapsed


def test_a_model_whose_int8_output_collapses_is_not_published_as_meeting_the_target(tmp_path):
    """out = x @ w + 1000 (tests/exported.py): full INT8 gives every sample the same output, at cosine
    ~1.0. tune used to say "target met" and publish it; now the only model that meets it is FP32."""
    from exported import offset_model

    rng = np.random.default_rng(0)
    calib, val = tmp_path / "c.npy", tmp_path / "v.npy"
    np.save(calib, rng.normal(size=(64, 8)).astype(np.float32))
    np.save(val, rng.normal(size=(32, 8)).astype(np.float32))
    model, out = offset_model(tmp_path / "offset.onnx"), tmp_path / "runs"
    result = dask_quant("tune", model, "--calib", calib, "--val", val, "--target", "cosine>=0.999", "--out", out,
                        "--layers", "none", "--workers", "1")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cosine n/a (the INT8 output is the same for every sample while FP32's is not) -> 1.00000" in result.stderr
    assert (
        "held only with every quantized node in FP32, so there is no INT8 model to publish; the fully "
        + ("quantized model is broken (the INT8 output is the same for every sample")
        in result.stderr
    )
    assert not out.exists()  # nothing published, no work area left


def test_cli_tune_refuses_bad_input_with_exit_2(mlp, tmp_path):
    model, calib, val = mlp
    cases = [
        ([model, "--calib", calib, "--target", "cosine>=0.99"], "pass --val"),
        ([model, "--calib", calib, "--val", val, "--target", "cosine=0.99"], "write it as NAME>=VALUE"),
        ([model, "--calib", calib, "--val", val, "--max-drop", "1"], "needs labels"),
        ([model, "--calib", calib, "--val", val, "--target", "cosine>=0.9", "--time-budget", "soon"], "90s, 30m"),
    ]
    for args, message in cases:
        proc = dask_quant("tune", *args, "--out", tmp_path / "out")
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert not list((tmp_path / "out").glob("*/run.json"))


def _rows(path: Path) -> int:
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, ValueError):
        return 0


def test_killed_search_resumes_from_its_finished_experiments(tmp_path):
    model = build_outlier_mlp(tmp_path / "mlp.onnx", hidden_layers=8)
    calib = outlier_mlp_data(tmp_path / "calib.npz", 200, 1, True)
    val = outlier_mlp_data(tmp_path / "val.npz", 120, 2, False)
    args = [str(model), "--calib", str(calib), "--val", str(val), "--target", "cosine>=0.999", "--workers", "2",
            "--ranking-samples", "16", "--layers", "none"]  # fmt: skip
    command = [sys.executable, "-m", "dask_quant", "tune", *args, "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    seen, deadline = 0, time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        found = list((tmp_path / "out" / ".work").glob("*/trials.parquet"))
        seen = _rows(found[0]) if found else 0
        if seen >= 4:
            os.killpg(proc.pid, signal.SIGKILL)  # the client and its LocalCluster, at once
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert seen >= 4, f"the search ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert not list((tmp_path / "out").glob("*/run.json"))  # nothing was published
    resumed = dask_quant("tune", *args, "--out", tmp_path / "out", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "finished experiments found" in resumed.stderr
    (run_dir,) = [d for d in (tmp_path / "out").iterdir() if d.name != ".work" and not d.name.startswith(".")]
    record = json.loads((run_dir / results.RUN_FILE).read_text())["tune"]
    assert record["experiments"]["reused"] >= seen
    fresh = dask_quant("tune", *args, "--out", tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr
    (fresh_dir,) = [d for d in (tmp_path / "fresh").iterdir() if not d.name.startswith(".")]
    again = json.loads((fresh_dir / results.RUN_FILE).read_text())["tune"]
    assert again["reverted"] == record["reverted"] and again["metric_after"] == record["metric_after"]
    assert again["experiments"]["reused"] == 0
    assert len(_trials(run_dir)) == len(_trials(fresh_dir))  # the same experiments, some of them reused
