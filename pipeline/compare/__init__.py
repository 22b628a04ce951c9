"""`python -m pipeline.compare RUN_A RUN_B --output_dir DIR`: what changed between two runs.

Images are matched by content (``content_sha256``), so a renamed file is still the same
image. The per-image comparison is a Beam pipeline (read both runs' summaries, key by content
hash, CoGroupByKey, compare, WriteToParquet), so a large comparison runs on Dataflow with
the usual Beam options; the summary is then computed from the written Parquet:

    DIR/drift/*.parquet       one row per image in both runs (DRIFT_SCHEMA)
    DIR/unmatched/*.parquet   images in only one of the runs (content hash, uri, run a|b)
    DIR/drift_summary.json    overall and per-class numbers, the thresholds and the verdict
    DIR/drift.html            self-contained page: numbers, per-class table, the most changed
                              images before | after (the runs' overlays embedded)

Each image is compared on its first target row (``target_rank`` 0: the predicted class with
the default ``--target predicted``). ``--fail_on "METRIC<VALUE"`` (or >, <=, >=) exits 1
naming every violated threshold; a threshold on a metric without a value (nothing compared)
counts as violated. Exit 2 for bad arguments or a folder that is not a finished run.

Modules: ``measures`` (how one image's attribution changed), ``graph`` (the Beam job),
``summary`` (drift_summary.json's numbers), ``thresholds`` (``--fail_on``), ``page``
(drift.html, in the report's page shell) and ``cli``. The names below are loaded on first
use (PEP 562), so ``--help`` starts without Beam or TensorFlow.
"""

from __future__ import annotations

from attribution.lazy import lazy_attributes

_EXPORTS = {  # submodule -> the names it defines
    "measures": (
        "TOP_FRACTION",
        "average_ranks",
        "compare_rows",
        "region_deltas",
        "spearman",
        "top_fraction_iou",
    ),
    "graph": ("DRIFT_SCHEMA", "UNMATCHED_SCHEMA", "CompareFn", "build", "key_first_target"),
    "summary": ("most_changed", "summarize"),
    "thresholds": ("METRICS", "check", "parse_threshold"),
    "strategies": ("class_drift", "cosine", "drift", "match"),
    "cli": ("main", "parser", "run"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, _EXPORTS.keys() | {"page"})
