"""The overall and per-class numbers of ``drift_summary.json``, computed from the written
drift and unmatched Parquet, and the most changed images the page shows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def _array(table: pa.Table, column: str) -> np.ndarray:
    """Floats with nulls as NaN."""
    return np.array(
        [np.nan if v is None else float(v) for v in table.column(column).to_pylist()],
        dtype=np.float64,
    )


def _stat(values: np.ndarray, how) -> float | None:
    values = values[~np.isnan(values)]
    return float(how(values)) if values.size else None


def _p10(values):
    return np.percentile(values, 10)


def summarize(drift: pa.Table, unmatched: pa.Table) -> tuple[dict, list[dict]]:
    """(metrics, per-class rows) from the written drift and unmatched Parquet."""
    n = drift.num_rows
    changed = (
        np.array(drift.column("prediction_changed").to_pylist(), dtype=bool)
        if n
        else np.zeros(0, bool)
    )
    runs = unmatched.column("run").to_pylist() if unmatched.num_rows else []
    correlation = _array(drift, "grid_correlation") if n else np.zeros(0)
    iou = _array(drift, "top5_iou") if n else np.zeros(0)
    target_delta = np.abs(_array(drift, "target_score_delta")) if n else np.zeros(0)
    predicted_delta = np.abs(_array(drift, "predicted_score_delta")) if n else np.zeros(0)
    region = _array(drift, "region_mass_max_abs_delta") if n else np.zeros(0)
    deletion = np.abs(_array(drift, "deletion_auc_delta")) if n else np.zeros(0)
    metrics = {
        "images_compared": n,
        "images_only_in_a": runs.count("a"),
        "images_only_in_b": runs.count("b"),
        "changed_prediction_count": int(changed.sum()),
        "changed_prediction_fraction": float(changed.mean()) if n else None,
        "median_grid_correlation": _stat(correlation, np.median),
        "mean_grid_correlation": _stat(correlation, np.mean),
        "p10_grid_correlation": _stat(correlation, _p10),
        "min_grid_correlation": _stat(correlation, np.min),
        "median_top5_iou": _stat(iou, np.median),
        "mean_top5_iou": _stat(iou, np.mean),
        "p10_top5_iou": _stat(iou, _p10),
        "min_top5_iou": _stat(iou, np.min),
        "mean_abs_target_score_delta": _stat(target_delta, np.mean),
        "max_abs_target_score_delta": _stat(target_delta, np.max),
        "mean_abs_predicted_score_delta": _stat(predicted_delta, np.mean),
        "max_abs_predicted_score_delta": _stat(predicted_delta, np.max),
        "median_region_mass_delta": _stat(region, np.median),
        "max_region_mass_delta": _stat(region, np.max),
        "mean_abs_deletion_auc_delta": _stat(deletion, np.mean),
        "max_abs_deletion_auc_delta": _stat(deletion, np.max),
    }
    classes = []
    if n:
        predicted = np.array(drift.column("predicted_class_a").to_pylist(), dtype=np.int64)
        labels = drift.column("predicted_label_a").to_pylist()
        for cls in np.unique(predicted):
            rows = predicted == cls
            classes.append(
                {
                    "class": int(cls),
                    "label": labels[int(np.flatnonzero(rows)[0])],
                    "images": int(rows.sum()),
                    "changed_prediction_fraction": float(changed[rows].mean()),
                    "median_grid_correlation": _stat(correlation[rows], np.median),
                    "median_top5_iou": _stat(iou[rows], np.median),
                    "mean_abs_target_score_delta": _stat(target_delta[rows], np.mean),
                }
            )
    return metrics, classes


def most_changed(drift: pa.Table, count: int) -> list[dict]:
    """Changed predictions first, then the lowest grid correlation, then the lowest IoU."""
    rows = (
        drift.select(
            [
                c
                for c in (
                    "uri_a",
                    "uri_b",
                    "predicted_label_a",
                    "predicted_label_b",
                    "prediction_changed",
                    "grid_correlation",
                    "top5_iou",
                    "iou_source",
                    "target_score_delta",
                    "overlay_uri_a",
                    "overlay_uri_b",
                )
            ]
        ).to_pylist()
        if drift.num_rows
        else []
    )
    nan_last = lambda v: 2.0 if v is None else v
    rows.sort(
        key=lambda r: (
            not r["prediction_changed"],
            nan_last(r["grid_correlation"]),
            nan_last(r["top5_iou"]),
            r["uri_b"],
        )
    )
    return [
        r
        for r in rows[:count]
        if r["prediction_changed"]
        or (r["grid_correlation"] or 0) < 1 - 1e-9
        or (r["top5_iou"] is not None and r["top5_iou"] < 1)
    ]
