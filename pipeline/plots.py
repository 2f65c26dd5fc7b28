"""The report's charts, rendered with matplotlib to PNG bytes."""

from __future__ import annotations

import io

import numpy as np

_GOOD, _FAIR, _POOR = "#2e7d32", "#ef6c00", "#c62828"
MAX_BARS = 40


def literal(text: str) -> str:
    """`text` drawn as written: matplotlib reads $...$ as math (a tensor named 'a$b$c' would crash it)."""
    return text.replace("$", r"\$")


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def sqnr_colour(sqnr_db: float) -> str:
    return _POOR if sqnr_db < 25 else _FAIR if sqnr_db < 35 else _GOOD


def sqnr_chart(layers: list[dict]) -> bytes:
    """Horizontal bars of per-layer SQNR, worst at the top (at most MAX_BARS layers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = layers[:MAX_BARS]
    values = [min(row["sqnr_db"], 99.0) for row in shown]  # an exact layer (inf dB) is drawn at 99
    labels = [literal(f"{row['tensor']}  ({row['op_type'].strip('()')})") for row in shown]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(shown) + 1.2))
    y = np.arange(len(shown))
    ax.barh(y, values, color=[sqnr_colour(v) for v in values], height=0.7)
    ax.set_yticks(y, labels, fontsize=9)
    ax.invert_yaxis()
    for yi, value in zip(y, values, strict=True):
        ax.text(value + 0.5, yi, f"{value:.1f}", va="center", fontsize=8)
    ax.set_xlabel("SQNR (dB), higher is better")
    ax.set_xlim(0, max(values) * 1.12 + 1)
    for threshold in (25, 35):
        ax.axvline(threshold, color="#9e9e9e", linestyle=":", linewidth=1)
    ax.spines[["top", "right"]].set_visible(False)
    title = "Per-layer SQNR, worst first" + (f" (worst {MAX_BARS} of {len(layers)})" if len(layers) > MAX_BARS else "")
    ax.set_title(title, loc="left", fontsize=11)
    return _png(fig)


def sensitivity_chart(
    ranking: list[dict], isolated: dict[str, float], reverted: set[str], metric: str, scope: str = ""
) -> bytes:
    """The tune search's first ranking: per group, the metric with it in FP32 (bar) and, when scored, with
    it alone quantized (dot); reverted groups in red. Most sensitive at the top (at most MAX_BARS).
    `scope` says which groups it ranked when not all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ranking[:MAX_BARS]
    # A metric that cannot be measured (outputs not finite, or collapsed) is NaN, and null in run.json.
    values = [np.nan if row["metric"] is None else row["metric"] for row in shown]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(shown) + 1.2))
    y = np.arange(len(shown))
    colours = [_POOR if row["group"] in reverted else "#607d8b" for row in shown]
    ax.barh(y, values, color=colours, height=0.7, label=f"{metric} with the group in FP32")
    alone = [np.nan if (v := isolated.get(row["group"])) is None else v for row in shown]
    if isolated:  # scored only with --isolated-errors
        ax.plot(alone, y, "o", color="#212121", markersize=4, label=f"{metric} with only the group quantized")
    ax.set_yticks(y, [literal(row["group"]) for row in shown], fontsize=9)
    ax.invert_yaxis()
    finite = [v for v in [*values, *alone] if np.isfinite(v)]
    low = min(finite) if finite else 0.0
    left = low - (1 - low) * 0.05 - 1e-6
    ax.set_xlim(left, 1 + (1 - low) * 0.02 + 1e-6)
    for position, value in zip(y, values, strict=True):
        if not np.isfinite(value):  # no bar: say why there is none
            ax.text(left, position, " n/a (collapsed or not finite)", va="center", fontsize=8, color=_POOR)
    ax.set_xlabel(f"{metric} on the ranking rows, higher is better")
    # Metrics close to 1 differ in the fifth decimal: write them out, not as an offset in a corner.
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.xaxis.set_major_locator(plt.MaxNLocator(4))
    ax.legend(loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    title = "Sensitivity, in the walk's order; red: kept in FP32"  # the README says the order
    notes = [f"top {MAX_BARS} of {len(ranking)}"] if len(ranking) > MAX_BARS else []
    notes += [scope] if scope else []
    ax.set_title(title + (f" ({', '.join(notes)})" if notes else ""), loc="left")
    return _png(fig)


def activation_histogram(layer: dict, clip: tuple[float, float], observed: tuple[float, float]) -> bytes:
    """One activation's validation-set histogram, with the quantization clip range marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(layer["hist_edges"], dtype=np.float64)
    counts = np.asarray(layer["hist_counts"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.2, 2.6))
    ax.stairs(counts, edges, fill=True, color="#5c6bc0", alpha=0.85)
    ax.set_yscale("symlog", linthresh=1)
    low, high = clip
    ax.axvspan(edges[0], low, color=_POOR, alpha=0.10)
    ax.axvspan(high, edges[-1], color=_POOR, alpha=0.10)
    ax.axvline(low, color=_POOR, linewidth=1.5, label=f"clip range [{low:.4g}, {high:.4g}]")
    ax.axvline(high, color=_POOR, linewidth=1.5)
    ax.axvline(observed[0], color="#424242", linestyle="--", linewidth=1, label="calibration min/max")
    ax.axvline(observed[1], color="#424242", linestyle="--", linewidth=1)
    # Show where the values and the ranges are, not the empty half of a [-T, T] grid.
    occupied = edges[:-1][counts > 0]
    left = min(low, observed[0], occupied.min() if occupied.size else low)
    right = max(high, observed[1], edges[1:][counts > 0].max() if occupied.size else high)
    margin = 0.04 * (right - left or 1.0)
    ax.set_xlim(left - margin, right + margin)
    ax.set_xlabel("value")
    ax.set_ylabel("count (log)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.set_title(literal(f"{layer['tensor']}  ·  SQNR {layer['sqnr_db']:.1f} dB"), loc="left", fontsize=10)
    return _png(fig)


def trend_chart(series: dict[str, list[tuple[str, float | None]]], metric: str) -> bytes:
    """One line per model x method: its lead metric night by night (a failed night leaves a gap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nights = sorted({night for points in series.values() for night, _ in points})
    position = {night: i for i, night in enumerate(nights)}
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for label, points in sorted(series.items()):
        xs = [position[night] for night, _ in points]
        ys = [np.nan if value is None else value for _, value in points]
        ax.plot(xs, ys, marker="o", markersize=4, label=literal(label))
    ax.set_xticks(range(len(nights)), nights, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(literal(metric))
    ax.ticklabel_format(axis="y", useOffset=False)  # 0.99978, not "8" under a "1e-5+9.997e-1" offset
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{literal(metric)} night by night", loc="left", fontsize=11)
    return _png(fig)
