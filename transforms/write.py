"""Parquet part files with explicit schemas, published in the run's staging folder and
moved into place once by the commit (no Beam file sink: its ``beam-temp-*`` folders outlive
a killed job, and its shard names mix with an earlier run's)."""

from __future__ import annotations

import time
import uuid

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms.files import publish_table
from transforms.layout import parts_dir

STATISTICS = (
    "positive_mass",
    "negative_mass",
    "abs_mass",
    "top5_share",
    "top1_share",
    "centroid_x",
    "centroid_y",
    "gini",
)
FAITHFULNESS_AUCS = ("deletion_auc", "insertion_auc", "deletion_auc_random", "insertion_auc_random")

SUMMARY_SCHEMA = pa.schema(
    [
        ("image_uri", pa.string()),
        ("image_id", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("content_sha256", pa.string()),
        ("target_class", pa.int32()),
        ("target_rank", pa.int32()),
        ("target_label", pa.string()),
        ("predicted_class", pa.int32()),
        ("predicted_label", pa.string()),
        ("predicted_score", pa.float64()),
        ("target_score", pa.float64()),
        ("baseline_score", pa.float64()),
        ("baseline_predicts_target", pa.bool_()),
        ("attribution_sum", pa.float64()),
        ("completeness_error", pa.float64()),
        ("relative_completeness_error", pa.float64()),
        ("converged", pa.bool_()),
        ("steps", pa.int32()),
        ("gradient_evaluations", pa.int32()),
        # forward-only model rows: score_guided's scan, the faithfulness curves, MuFidelity
        # and region ablation of this row
        ("forward_evaluations", pa.int32()),
        ("method", pa.string()),
        ("baseline", pa.string()),
        ("score", pa.string()),
        ("mask_uri", pa.string()),
        ("overlay_uri", pa.string()),
        ("raw_uri", pa.string()),
        ("model_fingerprint", pa.string()),
        ("settings_hash", pa.string()),
        *[(name, pa.float64()) for name in STATISTICS],
        ("peak_x", pa.int32()),
        ("peak_y", pa.int32()),
        ("grid_cells", pa.int32()),
        ("grid", pa.list_(pa.float32())),
        ("path_alphas", pa.list_(pa.float32())),
        ("path_scores", pa.list_(pa.float32())),
        (
            "regions",
            pa.list_(
                pa.struct(
                    [
                        ("name", pa.string()),
                        ("mass_fraction", pa.float64()),
                        ("area_fraction", pa.float64()),
                        ("pointing_hit", pa.bool_()),
                        ("ablation_score", pa.float64()),
                        ("ablation_drop", pa.float64()),
                    ]
                )
            ),
        ),
        ("deletion_curve", pa.list_(pa.float32())),
        ("insertion_curve", pa.list_(pa.float32())),
        ("deletion_curve_random", pa.list_(pa.float32())),
        ("insertion_curve_random", pa.list_(pa.float32())),
        *[(name, pa.float64()) for name in FAITHFULNESS_AUCS],
        ("faithfulness_points", pa.int32()),
        ("mufidelity", pa.float64()),  # --faithfulness mufidelity; null when not asked
        ("true_class", pa.int32()),
        ("true_label", pa.string()),  # TFRecord --label_key
        ("attribution", pa.string()),
        (
            "xrai_region_ranks",
            pa.list_(pa.struct([("segment_area_fraction", pa.float64()), ("gain", pa.float64())])),
        ),
        ("split_half_correlation", pa.float64()),  # rise: its two halves of masks agree
        ("strategy", pa.int32()),  # the row's strategy in its class; null: not clustered
    ]
)

ERROR_SCHEMA = pa.schema(
    [
        ("image_uri", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


class WritePartsFn(beam.DoFn):
    """dict rows -> part files published under DIR/.staging/<folder>/<uuid>.parquet.

    A part is published (written whole, then renamed) at the end of a bundle, or as soon as
    it has gathered rows for ``commit_interval`` seconds, so a crash loses at most that much
    finished work per worker. The DoFn outputs one record per published part; only parts of
    bundles the runner committed reach the commit step (pipeline/commit.py), which moves them
    into DIR/<folder>/ and deletes the parts of failed or retried bundle attempts.
    """

    def __init__(
        self, output_dir: str, folder: str, schema: pa.Schema, origin: str, commit_interval: float
    ):
        self.output_dir, self.folder, self.schema = output_dir, folder, schema
        self.origin, self.commit_interval = origin, commit_interval

    def start_bundle(self):
        self.rows, self.since = [], None

    def process(self, row):
        self.rows.append(row)
        if self.since is None:
            self.since = time.monotonic()
        if time.monotonic() - self.since >= self.commit_interval:
            yield self._publish()

    def finish_bundle(self):
        if self.rows:
            yield WindowedValue(self._publish(), MIN_TIMESTAMP, [GlobalWindow()])

    def _publish(self) -> dict:
        rows, self.rows, self.since = self.rows, [], None
        name = f"{uuid.uuid4().hex}.parquet"
        table = pa.Table.from_pylist(rows, schema=self.schema)
        publish_table(f"{parts_dir(self.output_dir, self.folder)}/{name}", table)
        evaluations = int(sum(int(r.get("gradient_evaluations") or 0) for r in rows))
        return {
            "folder": self.folder,
            "name": name,
            "origin": self.origin,
            "rows": len(rows),
            "images": len({r["image_uri"] for r in rows if "image_uri" in r}),
            "gradient_evaluations": evaluations if self.origin == COMPUTED else 0,
        }


COMPUTED, REUSED = "computed", "reused"


class WriteParts(beam.PTransform):
    """dict rows -> records of the part files published in staging (see WritePartsFn)."""

    def __init__(
        self,
        output_dir: str,
        folder: str,
        schema: pa.Schema,
        origin: str = COMPUTED,
        commit_interval: float = 60.0,
    ):
        super().__init__()
        self.fn = WritePartsFn(output_dir, folder, schema, origin, commit_interval)

    def expand(self, rows):
        return rows | "WriteParts" >> beam.ParDo(self.fn)
