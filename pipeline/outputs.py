"""Every Parquet file a run writes, each declared once: its name, its schema and how its rows are made.

Readers (the report, Calibration.load, users' pandas or DuckDB queries) ask
these declarations, so a column cannot drift between writer and reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dask_quant.pipeline.qparams import qparam_rows
from dask_quant.tasks.errors import DaskQuantError, InputError
from dask_quant.tasks.exact_sum import to_float
from dask_quant.tasks.histogram import Histograms
from dask_quant.tasks.range_stats import RangeStats
from dask_quant.tasks.validate import ChunkValidation


@dataclass(frozen=True)
class ParquetFile:
    """One output table: `rows(*source)` builds its rows, `schema()` types them (run_id first)."""

    name: str
    schema: Callable
    rows: Callable[..., list[dict]]

    def write(self, folder: Path, run_id: str, *source, metadata: dict[str, str] | None = None) -> Path:
        """Write the rows of `rows(*source)` to folder/name."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self.rows(*source)
        schema = self.schema()
        unknown = {key for row in rows for key in row} - set(schema.names)
        if unknown:  # from_pylist would drop them without a word
            msg = f"{self.name}: the rows have columns its schema lacks: {', '.join(sorted(unknown))}"
            raise DaskQuantError(msg)
        table = pa.Table.from_pylist([{"run_id": run_id, **row} for row in rows], schema=schema)
        if metadata:
            table = table.replace_schema_metadata({f"dask_quant.{k}": v for k, v in metadata.items()})
        path = Path(folder) / self.name
        pq.write_table(table, path)
        return path

    def read(self, folder: Path):
        """(table, dask-quant metadata) of folder/name; InputError if missing, unreadable or of another schema."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(folder) / self.name
        if not path.is_file():
            msg = f"{path}: file not found; pass a run directory dask-quant wrote"
            raise InputError(msg)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            msg = f"{path}: not a readable Parquet file ({exc}); pass a run directory dask-quant wrote"
            raise InputError(msg) from None
        expected = self.schema()
        if not table.schema.remove_metadata().equals(expected):
            msg = f"{path}: columns differ from what dask-quant writes ({', '.join(expected.names)})"
            raise InputError(msg)
        raw = table.schema.metadata or {}
        metadata = {
            k.decode().removeprefix("dask_quant."): v.decode() for k, v in raw.items() if k.startswith(b"dask_quant.")
        }
        return table, metadata


def calibration_rows(stats: RangeStats) -> list[dict]:
    return [
        {"tensor": name, "dtype": r.dtype, "observed_min": r.min, "observed_max": r.max, "elements": r.count}
        for name, r in stats.ranges
    ]


def histogram_rows(histograms: Histograms) -> list[dict]:
    return [
        {
            "tensor": h.spec.tensor,
            "absolute": h.spec.absolute,
            "bins": h.spec.bins,
            "low": h.spec.low,
            "high": h.spec.high,
            "bin_edges": h.spec.edges().tolist(),
            "counts": h.counts.tolist(),
        }
        for _, h in histograms.entries
    ]


def validation_rows(chunks: list[ChunkValidation], outputs: tuple[str | None, ...] = (None,)) -> list[dict]:
    """One row per chunk and output compared (`outputs`: their names, the lead one first)."""
    return [
        {
            "chunk_index": c.index,
            "row_start": c.start,
            "row_stop": c.stop,
            "output": output,
            "lead": not position,
            "samples": stats.samples,
            "labelled": stats.labelled,
            "fp32_correct": stats.fp32_correct,
            "int8_correct": stats.int8_correct,
            "top1_agree": stats.top1_agree,
            "max_abs_error": stats.max_abs_error,
            "mean_cosine": stats.mean_cosine,
            "min_cosine": stats.min_cosine,
            "elements": stats.elements,
            "squared_error": to_float(stats.squared_error),
            "signal": to_float(stats.signal),
            "neighbour_agree": stats.neighbour_agree,
            "neighbour_queries": stats.neighbour_queries,
            "zero_pairs": stats.zero_pairs,
            "non_finite": stats.non_finite,
            "int8_non_finite": stats.int8_non_finite,
        }
        for c in chunks
        for position, (output, stats) in enumerate(zip(outputs, (c.stats, *c.others), strict=True))
    ]


def _qparams_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("tensor", pa.string()),
            ("kind", pa.string()),
            ("rmin", pa.float32()),
            ("rmax", pa.float32()),
            ("observed_min", pa.float32()),
            ("observed_max", pa.float32()),
            ("elements", pa.int64()),
            ("scale", pa.float32()),
            ("zero_point", pa.int32()),
            ("channel_scales", pa.list_(pa.float32())),
            ("channel_zero_points", pa.list_(pa.int32())),
            ("axis", pa.int32()),
            ("dtype", pa.string()),
            ("method", pa.string()),
            ("symmetric", pa.bool_()),
            ("percentile", pa.float64()),
            ("num_bins", pa.int32()),
            ("num_quantized_bins", pa.int32()),
        ]
    )


def _layers_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("tensor", pa.string()),
            ("op_type", pa.string()),
            ("node", pa.string()),
            ("sqnr_db", pa.float64()),
            ("cosine", pa.float64()),
            ("max_abs_error", pa.float64()),
            ("samples", pa.int64()),
            ("elements", pa.int64()),
            ("non_finite", pa.int64()),
            ("hist_edges", pa.list_(pa.float32())),
            ("hist_counts", pa.list_(pa.int64())),
        ]
    )


def _histograms_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("tensor", pa.string()),
            ("absolute", pa.bool_()),
            ("bins", pa.int32()),
            ("low", pa.float64()),
            ("high", pa.float64()),
            ("bin_edges", pa.list_(pa.float32())),
            ("counts", pa.list_(pa.int64())),
        ]
    )


def _validation_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("chunk_index", pa.int32()),
            ("row_start", pa.int64()),
            ("row_stop", pa.int64()),
            ("output", pa.string()),  # the model output these metrics are of
            ("lead", pa.bool_()),  # the output whose metrics lead (filter on it to count each sample once)
            ("samples", pa.int64()),
            ("labelled", pa.int64()),
            ("fp32_correct", pa.int64()),
            ("int8_correct", pa.int64()),
            ("top1_agree", pa.int64()),
            ("max_abs_error", pa.float64()),
            ("mean_cosine", pa.float64()),
            ("min_cosine", pa.float64()),
            ("elements", pa.int64()),
            ("squared_error", pa.float64()),
            ("signal", pa.float64()),
            ("neighbour_agree", pa.int64()),
            ("neighbour_queries", pa.int64()),
            ("zero_pairs", pa.int64()),
            ("non_finite", pa.int64()),  # elements inf or NaN under either model, left out of the two sums
            ("int8_non_finite", pa.int64()),  # of those, inf or NaN under INT8 where FP32 is finite
        ]
    )


def _calibration_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("tensor", pa.string()),
            ("dtype", pa.string()),
            ("observed_min", pa.float64()),
            ("observed_max", pa.float64()),
            ("elements", pa.int64()),
        ]
    )


def _trials_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("run_id", pa.string()),
            ("key", pa.string()),
            ("phase", pa.string()),
            ("group", pa.string()),
            ("reverted", pa.list_(pa.string())),
            ("reverted_count", pa.int32()),
            ("rows", pa.string()),
            ("samples", pa.int64()),
            ("metric", pa.float64()),
            ("mean_cosine", pa.float64()),
            ("agreement", pa.float64()),
            ("int8_accuracy", pa.float64()),
            ("seconds", pa.float64()),
            ("worker", pa.string()),
            ("finished_utc", pa.string()),
            ("stats_json", pa.string()),
        ]
    )


QPARAMS = ParquetFile("qparams.parquet", _qparams_schema, qparam_rows)
VALIDATION = ParquetFile("validation.parquet", _validation_schema, validation_rows)
# Validation builds these rows (pipeline.layers.layer_rows) as it measures them.
LAYERS = ParquetFile("layers.parquet", _layers_schema, list)
HISTOGRAMS = ParquetFile("histograms.parquet", _histograms_schema, histogram_rows)
CALIBRATION = ParquetFile("calibration.parquet", _calibration_schema, calibration_rows)
# The tune search builds these rows (pipeline.trials) as experiments finish.
TRIALS = ParquetFile("trials.parquet", _trials_schema, list)
