"""The report's per-class confusion view, for runs whose inputs carry a true class (TFRecord
``--label_key``: the ``true_class`` / ``true_label`` columns).

Rows are the true classes, columns the predicted ones; each cell counts the images and gives
their mean ``top5_share`` (how concentrated the attribution is), so a class the model gets
wrong can be compared with where it looks when right. The mistakes follow, the most confident
first: they are the rows to open. One row per image (its first target). The summaries are
streamed a batch at a time, only the columns this view needs.
"""

from __future__ import annotations

import collections

from pipeline.html import pct
from pipeline.report.read import BATCH_ROWS, MAX_CLASSES, TABLE_ROWS, Run
from transforms.files import parquet_batches, parquet_parts, parquet_schema
from transforms.layout import SUMMARIES

COLUMNS = (
    "image_uri",
    "target_rank",
    "true_class",
    "true_label",
    "predicted_label",
    "predicted_score",
    "top5_share",
)


def _true(row: dict) -> str | None:
    if row["true_label"] is not None:
        return row["true_label"]
    return None if row["true_class"] is None else str(row["true_class"])


def confusion(output_dir: str) -> dict:
    """{(true label, predicted label): [images, sum of top5_share]} and the mistakes."""
    cells: dict = collections.defaultdict(lambda: [0, 0.0])
    mistakes = []
    for path in parquet_parts(output_dir, SUMMARIES):
        if not set(COLUMNS) <= set(parquet_schema(path).names):
            continue  # a run written before the true_class column
        for batch in parquet_batches(path, list(COLUMNS), BATCH_ROWS):
            for row in batch.to_pylist():
                true = _true(row)
                if row["target_rank"] != 0 or true is None:
                    continue
                cell = cells[(true, row["predicted_label"])]
                cell[0] += 1
                cell[1] += row["top5_share"] or 0.0
                if true != row["predicted_label"]:
                    mistakes.append(row)
    return {"cells": dict(cells), "mistakes": mistakes}


def confusion_section(run: Run) -> dict:
    found = confusion(run.output_dir)
    cells, mistakes = found["cells"], found["mistakes"]
    images = sum(n for n, _ in cells.values())
    if not images:
        return {"images": 0}
    by_true, by_predicted = collections.Counter(), collections.Counter()
    for (true, predicted), (n, _) in cells.items():
        by_true[true] += n
        by_predicted[predicted] += n
    rows_shown = [label for label, _ in by_true.most_common(MAX_CLASSES)]
    columns_shown = [label for label, _ in by_predicted.most_common(MAX_CLASSES)]
    table = []
    for true in rows_shown:
        row = []
        for predicted in columns_shown:
            n, top5 = cells.get((true, predicted), (0, 0.0))
            row.append(
                None if not n else {"n": n, "top5": f"{top5 / n:.3f}", "wrong": true != predicted}
            )
        table.append((true, by_true[true], row))
    mistakes.sort(key=lambda r: (-(r["predicted_score"] or 0.0), r["image_uri"]))
    return {
        "images": images,
        "accuracy": pct(1 - len(mistakes) / images),
        "mistakes_count": len(mistakes),
        "columns": columns_shown,
        "rows": table,
        "hidden_rows": len(by_true) - len(rows_shown),
        "hidden_columns": len(by_predicted) - len(columns_shown),
        "mistakes": [
            [r["image_uri"], _true(r), r["predicted_label"], r["predicted_score"], r["top5_share"]]
            for r in mistakes[:TABLE_ROWS]
        ],
        "more": max(0, len(mistakes) - TABLE_ROWS),
    }
