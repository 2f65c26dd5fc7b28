"""The short summary a run prints."""

from __future__ import annotations

from dask_quant.pipeline.job import RunResult
from dask_quant.pipeline.metrics import headline_metrics, shown_metrics
from dask_quant.pipeline.records import summary_record
from dask_quant.pipeline.report import REPORT_FILE, file_size


def format_summary(result: RunResult) -> str:
    lines = [f"run {result.run_id}"]
    v = result.validation
    if v is None:
        lines.append("  validation       skipped (no --val)")
    else:
        record = summary_record(v, result.metric)
        lines += [f"  {label:<16} {value}" for label, value in headline_metrics(record)]
        several = bool(result.other_outputs)
        of, options = (f" of {result.output!r}", "--metric, --lead-output") if several else ("", "--metric")
        lines.append(f"  validated        {v.samples} samples{of}, {result.metric.value} metrics ({options})")
        for name, metric, stats in result.other_outputs:
            lines.append(f"  output {name!r:<9} {shown_metrics(summary_record(stats, metric))} ({metric.value})")
    if result.layers:
        worst = ", ".join(f"{row['tensor']} {row['sqnr_db']:.1f} dB" for row in result.layers[:3])
        lines.append(f"  worst layers     {worst} (SQNR)")
    ratio = result.fp32_bytes / result.int8_bytes
    change = f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger: Q/DQ nodes outweigh tiny weights"
    activations = sum(p.kind == "activation" for p in result.qparams)
    if result.latency:
        lat = result.latency
        lines.append(
            f"  latency          FP32 {lat.fp32_seconds_per_sample * 1e3:.3f} -> {result.quant.precision} "
            f"{lat.int8_seconds_per_sample * 1e3:.3f} ms/sample ({lat.speedup:.2f}x; batch {lat.batch_size}, "
            f"1 thread, median of {lat.repeats})"
        )
    lines += [
        f"  model size       FP32 {file_size(result.fp32_bytes)} -> {result.quant.precision} "
        f"{file_size(result.int8_bytes)} ({change})",
        f"  quantized        {_quantized(result.quant, activations, len(result.qparams) - activations)}",
        f"  workers          {result.workers}; {sum(result.timings.values()):.1f} s including cluster start",
        f"  written to       {result.run_dir}",
        f"  report           {result.run_dir}/{REPORT_FILE}",  # a folder, or a URL (--out at a URL)
    ]
    if result.dashboard:
        lines.append(f"  dashboard        {result.dashboard}")
    return "\n".join(lines)


def _quantized(quant, activations: int, weights: int) -> str:
    scheme = None if quant is None else quant.scheme.value
    if scheme == "dynamic":  # scales computed per input when the model runs
        return f"{weights} weights; activations at run time (dynamic)"
    if scheme == "weight-only":
        blocks = f"{quant.bits}-bit blocks of {quant.block_size} ({quant.algorithm.value})"
        return f"{weights} MatMul weights in {blocks}; activations FP32 (weight-only)"
    return f"{activations} activations, {weights} weights"
