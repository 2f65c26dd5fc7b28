"""The zoo's page, OUT/zoo.html, made from the history alone: the last night's table of models x methods,
each lead metric's trend over the nights, and links to every run's own report."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from dask_quant.pipeline import plots, zoo_rows
from dask_quant.pipeline.report import _SCRIPT, _STYLE, REPORT_FILE, _e, _img, write_page
from dask_quant.pipeline.zoo_history import history_dir, read_history
from dask_quant.pipeline.zoo_rows import is_alert
from dask_quant.tasks.errors import InputError

ZOO_PAGE = "zoo.html"
_ZOO_STYLE = "tr.alert td { background: #ffebee; } td.bad { color: #b71c1c; font-weight: 600; }"


def write_zoo_report(out: Path, output: Path | None = None) -> Path:
    """Write the page (atomically) and return its path; InputError when `out` holds no zoo history."""
    out = Path(out)
    rows = read_history(out)
    if not rows:
        msg = f"{out}: no zoo history ({history_dir(out)} is empty or missing); pass the --out of `dask-quant zoo run`"
        raise InputError(msg)
    output = output or out / ZOO_PAGE
    return write_page(render(rows, output.parent), output)


def render(rows: list[dict], folder: Path) -> str:
    night = max(row["date"] for row in rows)
    last = [row for row in rows if row["date"] == night]
    latest = {(row["model"], row["method"]): row for row in last}  # a night run twice: its last rows
    alerts = sum(is_alert(row) for row in latest.values())
    nights = sorted({row["date"] for row in rows})
    verdict = (
        f'<p class="warning">{alerts} of {len(latest)} jobs failed, regressed or changed unexpectedly</p>'
        if alerts
        else f"<p>All {len(latest)} jobs good.</p>"
    )
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>dask-quant zoo · {_e(night)}</title>"
        f"<style>{_STYLE}{_ZOO_STYLE}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>Model zoo, night of {_e(night)}</h1>"
        f"<p class=sub>{len(nights)} night(s) in the history, {_e(nights[0])} to {_e(nights[-1])}</p>"
        '<div id="broken">Some charts failed to load.</div>'
        f"{verdict}<h2>Models × methods</h2>{_table(list(latest.values()), folder)}"
        f"{_explanations(list(latest.values()))}<h2>Trends</h2>{_trends(rows)}</body></html>"
    )


def _number(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(rows: list[dict], folder: Path) -> str:
    head = (
        "<tr><th>model</th><th>method</th><th>status</th><th>lead metric</th><th>value</th>"
        "<th>change since last good</th><th>mean cosine</th><th>worst layer SQNR (dB)</th><th>run</th></tr>"
    )
    lines = []
    for row in sorted(rows, key=lambda r: (r["model"], r["method"])):
        status = "error" if row["status"] != "ok" else "reused" if row["reused"] else "ok"
        note = f" · {zoo_rows.note(row)}" if zoo_rows.note(row) else ""
        change = row.get("lead_change")
        report = Path(row["run_dir"] or "") / REPORT_FILE
        link = f'<a href="{_e(os.path.relpath(report, folder))}">report</a>' if row["run_dir"] else ""
        lines.append(
            f"<tr{' class=alert' if is_alert(row) else ''}><td>{_e(row['model'])}</td><td>{_e(row['method'])}</td>"
            f"<td{' class=bad' if is_alert(row) else ''}>{_e(status + note)}</td><td>{_e(row['lead'])}</td>"
            f"<td class=num>{_number(row['lead_value'])}</td>"
            f"<td class=num>{'' if change is None else f'{change:+.4f}'}</td>"
            f"<td class=num>{_number(row['mean_cosine'], 5)}</td>"
            f"<td class=num>{_number(row['worst_layer_sqnr_db'], 1)}</td>"
            f"<td>{link}</td></tr>"
        )
    return f"<table>{head}{''.join(lines)}</table>"


def _explanations(rows: list[dict]) -> str:
    """What changed, for each alert: the error, or the key's parts and the tensors that moved."""
    items = []
    for row in rows:
        if not is_alert(row):
            continue
        what = f"<b>{_e(row['model'])} {_e(row['method'])}</b>: "
        if row["status"] != "ok":
            items.append(f"<li>{what}failed: {_e(row['error'])}</li>")
            continue
        if zoo_rows.note(row) == "BROKEN":
            items.append(f"<li>{what}{_e(zoo_rows.BROKEN_WHY)}; see its report</li>")
            continue
        changed = json.loads(row.get("changed") or "[]")
        moved = json.loads(row.get("moved_tensors") or "[]")
        layers = json.loads(row.get("regressed_layers") or "[]")
        parts = f"changed: {_e(', '.join(changed))}" if changed else "nothing in its key changed"
        moved_text = ", ".join(_moved(m) for m in moved[:8])
        items.append(
            f"<li>{what}{_e(row['lead'])} {_number(row['previous_lead_value'])} → {_number(row['lead_value'])}; "
            f"{parts}; scales moved: {moved_text or 'none'}"
            + (f"; layers whose SQNR fell: {', '.join(_e(m['tensor']) for m in layers[:8])}" if layers else "")
            + "</li>"
        )
    return f"<h2>What changed</h2><ul>{''.join(items)}</ul>" if items else ""


def _moved(moved: dict) -> str:
    size = moved.get("relative_scale_change")
    return f"<code>{_e(moved['tensor'])}</code>" + (f" ({size:.0%})" if size is not None else f" ({moved['change']})")


def _trends(rows: list[dict]) -> str:
    by_lead: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        value = row["lead_value"] if row["status"] == "ok" else None
        by_lead[row["lead"]][f"{row['model']} {row['method']}"].append((row["date"], value))
    charts = []
    for lead, series in sorted(by_lead.items()):
        per_night = {label: sorted(dict(points).items()) for label, points in series.items()}  # last row per night
        charts.append(_img(plots.trend_chart(per_night, lead), f"{lead} night by night"))
    return "".join(charts)
