"""The per-image comparison as a Beam pipeline: read both runs' summaries, key by content
hash, CoGroupByKey, compare, write ``drift/`` and ``unmatched/`` Parquet."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from pipeline.compare.measures import compare_rows
from transforms.files import RunFolderError, parquet_parts, parquet_schema
from transforms.layout import SUMMARIES, join

NAMESPACE = "drift"
# What is read from each run's summaries (columns a run lacks are read as null).
COLUMNS = (
    "image_uri",
    "content_sha256",
    "target_rank",
    "target_class",
    "target_label",
    "predicted_class",
    "predicted_label",
    "predicted_score",
    "target_score",
    "grid_cells",
    "grid",
    "raw_uri",
    "overlay_uri",
    "regions",
    "model_fingerprint",
    "settings_hash",
    "deletion_auc",
    "insertion_auc",
)
REGION_DELTA = pa.struct(
    [
        ("name", pa.string()),
        ("mass_a", pa.float64()),
        ("mass_b", pa.float64()),
        ("delta", pa.float64()),
    ]
)
DRIFT_SCHEMA = pa.schema(
    [
        ("content_sha256", pa.string()),
        ("uri_a", pa.string()),
        ("uri_b", pa.string()),
        ("target_class_a", pa.int32()),
        ("target_class_b", pa.int32()),
        ("target_label_a", pa.string()),
        ("target_label_b", pa.string()),
        ("predicted_class_a", pa.int32()),
        ("predicted_class_b", pa.int32()),
        ("predicted_label_a", pa.string()),
        ("predicted_label_b", pa.string()),
        ("prediction_changed", pa.bool_()),
        ("predicted_score_a", pa.float64()),
        ("predicted_score_b", pa.float64()),
        ("predicted_score_delta", pa.float64()),
        ("target_score_a", pa.float64()),
        ("target_score_b", pa.float64()),
        ("target_score_delta", pa.float64()),
        ("grid_correlation", pa.float64()),  # Spearman of the two attribution grids
        ("top5_iou", pa.float64()),
        ("iou_source", pa.string()),  # "raw" | "grid" | null
        ("region_mass_max_abs_delta", pa.float64()),
        ("region_mass_deltas", pa.list_(REGION_DELTA)),
        ("overlay_uri_a", pa.string()),
        ("overlay_uri_b", pa.string()),
        ("same_model", pa.bool_()),
        ("same_settings", pa.bool_()),
        # faithfulness drift: normalised deletion / insertion AUC in each run (null without)
        ("deletion_auc_a", pa.float64()),
        ("deletion_auc_b", pa.float64()),
        ("deletion_auc_delta", pa.float64()),
        ("insertion_auc_a", pa.float64()),
        ("insertion_auc_b", pa.float64()),
        ("insertion_auc_delta", pa.float64()),
    ]
)
UNMATCHED_SCHEMA = pa.schema(
    [("content_sha256", pa.string()), ("image_uri", pa.string()), ("run", pa.string())]
)


def summary_columns(run: str) -> list[str]:
    """The COLUMNS the run's summaries have; RunFolderError when it has no summaries, one of
    them is unreadable, or they predate content hashes."""
    parts = parquet_parts(run, SUMMARIES)
    if not parts:
        raise RunFolderError(
            f"{run}: no summaries/*.parquet: pass the output folder of a "
            f"finished run of python -m pipeline"
        )
    names = [set(parquet_schema(path).names) for path in parts]
    if not all("content_sha256" in n for n in names):
        raise RunFolderError(
            f"{run}: its summaries have no content_sha256 column (made by an "
            f"older version): rerun it to compare"
        )
    return [c for c in COLUMNS if all(c in n for n in names)]


def key_first_target(row: dict):
    """(content hash, row) for the first target row of each image."""
    if row.get("content_sha256") and (row.get("target_rank") or 0) == 0:
        yield row["content_sha256"], row


def _pick(rows: list[dict], uri: str | None = None) -> dict:
    """The row for ``uri`` when present, else the smallest uri (identical copies)."""
    rows = sorted(rows, key=lambda r: r["image_uri"])
    return next((r for r in rows if r["image_uri"] == uri), rows[0])


class CompareFn(beam.DoFn):
    """(hash, {a: rows, b: rows}) -> drift row, or `unmatched` rows for one-sided images."""

    def __init__(self, folders: tuple[str, str] | None = None):
        self.folders = folders  # runs A and B: raw files are read from inside them only
        self.compared = Metrics.counter(NAMESPACE, "compared")
        self.unmatched = Metrics.counter(NAMESPACE, "unmatched")

    def process(self, element):
        sha, groups = element
        rows_a, rows_b = list(groups["a"]), list(groups["b"])
        if rows_a and rows_b:
            a = _pick(rows_a)
            self.compared.inc()
            yield compare_rows(a, _pick(rows_b, a["image_uri"]), self.folders)
            return
        for run, rows in (("a", rows_a), ("b", rows_b)):
            for row in rows:
                self.unmatched.inc()
                yield beam.pvalue.TaggedOutput(
                    "unmatched", {"content_sha256": sha, "image_uri": row["image_uri"], "run": run}
                )


def build(p: beam.Pipeline, runs: dict[str, tuple[str, list[str]]], output_dir: str) -> None:
    """``runs``: {"a": (folder, columns), "b": (folder, columns)}."""
    keyed = {}
    for name, (run, columns) in runs.items():
        keyed[name] = (
            p
            | f"Read{name.upper()}"
            >> beam.io.ReadFromParquet(join(run, SUMMARIES, "*.parquet"), columns=columns)
            | f"Key{name.upper()}" >> beam.FlatMap(key_first_target)
        )
    compared = (
        keyed
        | "JoinByContent" >> beam.CoGroupByKey()
        | "Compare"
        >> beam.ParDo(CompareFn((runs["a"][0], runs["b"][0]))).with_outputs(
            "unmatched", main="drift"
        )
    )
    out = output_dir.rstrip("/")
    _ = compared.drift | "WriteDrift" >> beam.io.WriteToParquet(
        f"{out}/drift/part", DRIFT_SCHEMA, codec="snappy", file_name_suffix=".parquet"
    )
    _ = compared.unmatched | "WriteUnmatched" >> beam.io.WriteToParquet(
        f"{out}/unmatched/part", UNMATCHED_SCHEMA, codec="snappy", file_name_suffix=".parquet"
    )
