"""One self-contained HTML page per run, made from the run directory's files alone."""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from pathlib import Path

from dask_quant.pipeline import outputs, plots, results
from dask_quant.pipeline.config import precision_name
from dask_quant.pipeline.groups import WEIGHTED
from dask_quant.pipeline.guard import collapse_reason
from dask_quant.pipeline.methods import info
from dask_quant.pipeline.metrics import headline_metrics, shown_metrics
from dask_quant.pipeline.presets import PRESETS, Preset, weights_line
from dask_quant.pipeline.selection import control_flow_note
from dask_quant.tasks.errors import InputError

REPORT_FILE = "report.html"
WORST_HISTOGRAMS = 4
WORST_ROWS = 12

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #212121;
       max-width: 1020px; margin: 2em auto; padding: 0 1.2em; background: #fafafa; }
h1 { font-size: 1.6em; margin-bottom: .1em; } h2 { font-size: 1.2em; margin-top: 1.8em;
     border-bottom: 1px solid #e0e0e0; padding-bottom: .2em; }
.sub { color: #616161; margin-top: 0; }
.warning { background: #ffebee; border: 1px solid #c62828; color: #b71c1c; border-radius: 8px;
  padding: .6em .8em; font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; margin: 1.2em 0; }
.card { flex: 1 1 auto; background: #fff; border: 1px solid #e0e0e0; border-radius: 8px; padding: .6em .8em;
        min-width: 7.5em; }
.card b { display: block; font-size: 1.2em; white-space: nowrap; } .card span { color: #616161; font-size: .85em; }
table { border-collapse: collapse; background: #fff; font-size: .92em; }
th, td { border: 1px solid #e0e0e0; padding: .3em .7em; text-align: left; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; background: #fff; border: 1px solid #e0e0e0; border-radius: 6px; margin: .4em 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: .6em; }
.dot { display: inline-block; width: .7em; height: .7em; border-radius: 50%; margin-right: .35em; }
#broken { display: none; background: #ffebee; border: 1px solid #c62828; padding: .6em; border-radius: 6px; }
code { background: #eeeeee; padding: 0 .25em; border-radius: 3px; }
"""

# Tells the reader (and the headless-browser test) whether every chart decoded.
_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !img.complete || img.naturalWidth === 0; });
  document.body.setAttribute('data-images', broken.length ? 'broken ' + broken.length : 'ok ' + images.length);
  if (broken.length) { document.getElementById('broken').style.display = 'block'; }
});
"""


def file_size(n: int) -> str:
    """A file's bytes as people read them (KiB, MiB or GiB)."""
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


def _e(value) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _read_table(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.is_file() else []


def _cards(run: dict) -> str:
    summary, latency = run.get("summary"), run.get("latency") or {}
    cards = headline_metrics(summary) if summary else [("validation", "none (no --val)")]
    cards.append(("model size", f"{file_size(run['model']['bytes'])} → {file_size(run['int8_model']['bytes'])}"))
    if latency:
        cards.append(
            (
                f"latency / sample ({latency['speedup']:.2f}x)",
                f"{latency['fp32_ms_per_sample']:.3f} → {latency['int8_ms_per_sample']:.3f} ms",
            )
        )
    return "".join(f'<div class="card"><span>{_e(k)}</span><b>{_e(v)}</b></div>' for k, v in cards)


def _worst_table(layers: list[dict]) -> str:
    rows = "".join(
        f'<tr><td><span class="dot" style="background:{plots.sqnr_colour(r["sqnr_db"])}"></span>{_e(r["tensor"])}</td>'
        f"<td>{_e(r['op_type'])}</td><td class=num>{r['sqnr_db']:.2f}</td><td class=num>{r['cosine']:.6f}</td>"
        f"<td class=num>{r['max_abs_error']:.4g}</td></tr>"
        for r in layers[:WORST_ROWS]
    )
    head = "<tr><th>activation</th><th>op</th><th>SQNR dB</th><th>cosine</th><th>max |error|</th></tr>"
    return f"<table>{head}{rows}</table>"


def _histograms(layers: list[dict], qparams: list[dict]) -> str:
    acts = {q["tensor"]: q for q in qparams if q["kind"] == "activation"}
    images = []
    for layer in layers:
        q = acts.get(layer["tensor"])
        if q is None or not layer.get("hist_counts"):
            continue
        clip, observed = (q["rmin"], q["rmax"]), (q["observed_min"], q["observed_max"])
        images.append(_img(plots.activation_histogram(layer, clip, observed), f"histogram of {layer['tensor']}"))
        if len(images) == WORST_HISTOGRAMS:
            break
    return f'<div class="grid">{"".join(images)}</div>'


def _cluster(record: dict | None) -> str:
    return "not recorded" if not record else f"{record['workers']} workers at {record['scheduler']}"


def _shared(run: dict) -> str:
    methods = run.get("calibration", {}).get("methods", [])
    return f" (one calibration shared by {', '.join(methods)})" if len(methods) > 1 else ""


def _config_table(run: dict) -> str:
    quant = run["config"]["quant"]
    rows = {
        "model": f"{run['model']['path']} (sha256 {run['model']['sha256'][:12]}…)",
        "calibration data": f"{run['data']['calib']['path']} ({run['data']['calib']['rows']} samples)",
        "validation data": "none"
        if not run["data"].get("val")
        else f"{run['data']['val']['path']} ({run['data']['val']['rows']} samples)",
        "preparation": "; ".join(run.get("preparation", {}).get("steps", [])) or "none (--no-prepare)",
        **(
            {"left in FP32": control_flow_note(owners)}
            if (owners := run.get("preparation", {}).get("control_flow"))
            else {}
        ),
        **(
            {
                "method": quant["method"] + _shared(run),
                "activations": f"{quant['activation_type']}, {'symmetric' if quant['symmetric'] else 'asymmetric'}",
            }
            if quant.get("scheme", "static") == "static"
            else {
                "scheme": "dynamic (ONNX Runtime's quantize_dynamic)",
                "activations": "uint8, asymmetric, each input's own range at run time (DynamicQuantizeLinear)",
            }
            if quant["scheme"] == "dynamic"
            else {
                "scheme": f"weight-only, {quant['algorithm']} "
                + (
                    "(distributed GPTQ, packed as ONNX Runtime's MatMulNBits)"
                    if quant["algorithm"] == "gptq"
                    else "(ONNX Runtime's MatMulNBitsQuantizer)"
                ),
                "activations": "FP32",
            }
        ),
        "weights": f"uint{quant['bits']} blocks of {quant['block_size']}, with zero points (MatMulNBits)"
        if quant.get("scheme") == "weight-only"
        else f"{weights_line(quant.get('preset'))}, {'per-channel' if quant['per_channel'] else 'per-tensor'}",
        **({"preset": f"{quant['preset']}: {PRESETS[Preset(quant['preset'])].summary}"} if quant.get("preset") else {}),
        "histogram bins": quant["num_bins"] if "num_bins" in info(quant["method"]).settings else "-",
        "chunk size": run["config"]["chunk_size"],
        "cluster": _cluster(run.get("cluster")),
        "versions": ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v),
    }
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items()) + "</table>"


def _collapse(run: dict) -> str:
    summaries = [run.get("summary") or {}, *(run.get("other_outputs") or [])]
    reasons = [
        (f"output {summary['output']!r}: " if position else "") + reason
        for position, summary in enumerate(summaries)
        if (
            reason := collapse_reason(
                bool(summary.get("collapsed")), summary.get("mean_cosine"), summary.get("int8_non_finite", 0)
            )
        )
        is not None
    ]
    if not reasons:
        return ""
    return f'<p class="warning">The INT8 model looks broken: {_e("; ".join(reasons))}. See the worst layers below.</p>'


def _outputs_table(run: dict) -> str:
    """Every output validation compared, the lead one first, each with its own kind of metrics."""
    others = run.get("other_outputs") or []
    if not others:
        return ""
    rows = "".join(
        f"<tr><td>{_e(summary['output'])}{' (leads)' if not position else ''}</td><td>{_e(summary['metric'])}</td>"
        f"<td>{_e(shown_metrics(summary))}</td></tr>"
        for position, summary in enumerate([run["summary"], *others])
    )
    head = f"<tr><th>output</th><th>metrics</th><th>FP32 against {_precision(run)}</th></tr>"
    return f"<h2>Outputs</h2><table>{head}{rows}</table>"


def _precision(run: dict) -> str:
    """INT4 or INT8, as config.precision_name names the run's model."""
    quant = run["config"]["quant"]
    return precision_name(quant.get("scheme", "static"), quant.get("bits", 8))


def _tune(run: dict) -> str:
    """The tune search's section: what was reverted, the metric before and after, the sensitivity chart."""
    tune = run.get("tune")
    if not tune:
        return ""
    share = ", ".join(f"{v['int8']} of {v['total']} {op}" for op, v in sorted(tune["int8_share"].items()))
    taken = tune.get("reverted_groups", tune["reverted"])  # runs made before shared quantizer groups
    composite = tune.get("composite_groups", {})
    reverted = (
        ", ".join(
            f"<code>{_e(g)}</code>"
            + (f" ({composite[g]['kind']}, {len(composite[g]['nodes'])} nodes)" if g in composite else "")
            for g in taken
        )
        or "none"
    )
    status = "met" if tune["met"] else "<b>not met</b>"
    chart = ""
    if tune["ranking"]:
        isolated = {row["group"]: row["metric"] for row in tune["isolated"]}
        metric = tune["target"].split(">=")[0] if ">=" in tune["target"] else "accuracy"
        first = tune["ranking"][0]
        # The search ranks the groups without a weighted node first when there are any (pipeline/search.py).
        scope = f"groups without {'/'.join(WEIGHTED)}" if len(first) < tune["groups"] else ""
        png = plots.sensitivity_chart(first, isolated, set(taken), metric, scope)
        chart = _img(png, "sensitivity of each quantizer group")
    experiments = tune["experiments"]
    outputs = tune.get("judged_on", [])
    judged = f" (the lowest of outputs {', '.join(_e(o) for o in outputs)})" if len(outputs) > 1 else ""
    return (
        f"<h2>Tune</h2><p>Target <code>{_e(tune['target'])}</code>: {status} ({_e(tune['stopped'])}). "
        f"{len(taken)} of {tune['groups']} quantizer groups kept in FP32 ({_plural(len(tune['reverted']), 'node')}): "
        f"{reverted}. "
        f"Metric{judged} on every validation row {_metric(tune['metric_before'])} → {_metric(tune['metric_after'])}; "
        f"{_precision(run)}: {_e(share) or '-'}. "
        f"{experiments['computed']} experiments run, {experiments['reused']} reused, "
        f"{_plural(tune['rounds'], 'ranking round')} on {tune['ranking_samples']} rows, "
        f"the walk on {tune.get('walk_samples', 'every')} (<code>trials.parquet</code>).</p>{chart}"
    )


def _metric(value: float | None) -> str:
    """A tune metric from run.json, where one that could not be measured (collapsed, not finite) is null."""
    return "n/a (collapsed or not finite)" if value is None else f"{value:.5f}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _run_record(run_dir: Path) -> dict:
    """run.json, or InputError when it is not one dask-quant wrote (corrupt, edited, another tool's)."""
    path = run_dir / results.RUN_FILE
    try:
        run = json.loads(path.read_text())
        for key in ("run_id", "created_utc", "config", "model", "data", "versions"):
            run[key]  # noqa: B018  (the keys every part of the report reads)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"{path}: not a run.json dask-quant wrote ({type(exc).__name__}); pass a folder under --out"
        raise InputError(msg) from None
    return run


# Why a scheme has no per-layer activation error.
_NO_LAYERS = {
    "dynamic": "Dynamic quantization computes each activation's scale at run time, from that input alone: no "
    "activation is quantized ahead of time, so there is no per-layer error to compare.",
    "weight-only": "Weight-only quantization keeps every activation in FP32 (MatMulNBits dequantizes its weight "
    "blocks as it runs), so there is no per-layer activation error to compare.",
}


def render(run_dir: Path) -> str:
    """The report page for a run directory."""
    run = _run_record(run_dir)
    layers = _read_table(run_dir / outputs.LAYERS.name)
    qparams = _read_table(run_dir / outputs.QPARAMS.name)
    name = Path(run["model"]["path"]).name
    if layers:
        per_layer = (
            f"<p>{len(layers)} quantized activations, FP32 against the INT8 model's dequantized tensors on the "
            f"validation set. Dotted lines at 25 and 35 dB.</p>{_img(plots.sqnr_chart(layers), 'per-layer SQNR')}"
            f"{_worst_table(layers)}<h2>Activation histograms of the worst layers</h2>"
            "<p>Validation-set values; shaded: outside the clip range the quantizer was given.</p>"
            f"{_histograms(layers, qparams)}"
        )
    elif run["config"].get("layers") == "none" and run.get("summary"):
        per_layer = "<p>The per-layer pass was skipped (<code>--layers none</code>).</p>"
    elif run["config"]["quant"].get("scheme", "static") != "static" and run.get("summary"):
        per_layer = f"<p>{_NO_LAYERS[run['config']['quant']['scheme']]}</p>"
    else:
        per_layer = "<p>No validation data was given (<code>--val</code>), so there is no per-layer error.</p>"
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>dask-quant · {_e(name)}</title>"
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>{_e(name)} → {_precision(run)}</h1><p class=sub>run {_e(run['run_id'])} · {_e(run['created_utc'])}</p>"
        '<div id="broken">Some charts failed to load.</div>'
        f"{_collapse(run)}"
        f'<div class="cards">{_cards(run)}</div>{_outputs_table(run)}{_tune(run)}<h2>Per-layer error</h2>{per_layer}'
        f"<h2>Configuration</h2>{_config_table(run)}</body></html>"
    )


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the report atomically (temp file, then rename) and return its path."""
    if not (run_dir / results.RUN_FILE).is_file():
        msg = f"{run_dir}: not a dask-quant run directory (no {results.RUN_FILE}); pass a folder under --out"
        raise InputError(msg)
    return write_page(render(run_dir), output or run_dir / REPORT_FILE)


def write_page(page: str, output: Path) -> Path:
    """`page` written to `output` atomically (temp file, then rename), readable as any file the user makes."""
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=".report-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(page)
        umask = os.umask(0)
        os.umask(umask)
        Path(temporary).chmod(0o666 & ~umask)  # mkstemp makes it private; a report is not
        Path(temporary).replace(output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return output
