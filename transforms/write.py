"""Parquet sinks with explicit schemas. Beam's file sinks write to a temporary folder and
publish each shard once at finalization, so retried bundles leave no duplicates."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

STATISTICS = ("positive_mass", "negative_mass", "abs_mass", "top5_share", "top1_share",
              "centroid_x", "centroid_y", "gini")

SUMMARY_SCHEMA = pa.schema([
    ("image_uri", pa.string()), ("image_id", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("content_sha256", pa.string()),
    ("target_class", pa.int32()), ("target_rank", pa.int32()), ("target_label", pa.string()),
    ("predicted_class", pa.int32()), ("predicted_label", pa.string()),
    ("predicted_score", pa.float64()), ("target_score", pa.float64()),
    ("baseline_score", pa.float64()), ("baseline_predicts_target", pa.bool_()),
    ("attribution_sum", pa.float64()), ("completeness_error", pa.float64()),
    ("relative_completeness_error", pa.float64()), ("converged", pa.bool_()),
    ("steps", pa.int32()), ("gradient_evaluations", pa.int32()),
    ("method", pa.string()), ("baseline", pa.string()), ("score", pa.string()),
    ("mask_uri", pa.string()), ("overlay_uri", pa.string()), ("raw_uri", pa.string()),
    ("model_fingerprint", pa.string()), ("settings_hash", pa.string()),
    *[(name, pa.float64()) for name in STATISTICS],
    ("peak_x", pa.int32()), ("peak_y", pa.int32()),
    ("grid_cells", pa.int32()), ("grid", pa.list_(pa.float32())),
    ("path_alphas", pa.list_(pa.float32())), ("path_scores", pa.list_(pa.float32())),
    ("regions", pa.list_(pa.struct([("name", pa.string()), ("mass_fraction", pa.float64()),
                                    ("area_fraction", pa.float64()),
                                    ("pointing_hit", pa.bool_())]))),
    ("true_class", pa.int32()), ("true_label", pa.string()),  # TFRecord --label_key
])

ERROR_SCHEMA = pa.schema([
    ("image_uri", pa.string()), ("stage", pa.string()),
    ("error_type", pa.string()), ("message", pa.string()),
])


class WriteParquet(beam.PTransform):
    """dict rows -> DIR/<folder>/part-SSSSS-of-NNNNN.parquet (snappy)."""

    def __init__(self, output_dir: str, folder: str, schema: pa.Schema):
        super().__init__()
        self.prefix = f"{output_dir.rstrip('/')}/{folder}/part"
        self.schema = schema

    def expand(self, rows):
        return rows | "WriteToParquet" >> beam.io.WriteToParquet(
            self.prefix, self.schema, codec="snappy", file_name_suffix=".parquet")
