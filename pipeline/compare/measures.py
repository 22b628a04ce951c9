"""How one image's attribution changed between two runs: rank correlation of the grids,
overlap of the top pixels, region mass deltas, and the drift row that holds them."""

from __future__ import annotations

import io
import logging
import math

import numpy as np

from transforms.files import read_artifact
from transforms.layout import RAW

TOP_FRACTION = 0.05  # the top-5% |IG| pixels (or grid cells) compared by IoU


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size)
    ranks[order] = ((starts + ends - 1) / 2 + 1)[group]
    return ranks


def spearman(a, b) -> float | None:
    """Spearman rank correlation; 1.0 for equal inputs, None when undefined (a constant
    input that the other does not equal, or different lengths)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size or a.size == 0:
        return None
    if np.array_equal(a, b):
        return 1.0
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denominator == 0:
        return None
    return float(np.clip(float(ra @ rb) / denominator, -1.0, 1.0))


def top_fraction_iou(mass_a, mass_b, fraction: float = TOP_FRACTION) -> float | None:
    """IoU of the ceil(fraction * n) largest entries of two equally shaped maps (ties broken
    by position, so equal maps give 1.0)."""
    a = np.asarray(mass_a, dtype=np.float64).ravel()
    b = np.asarray(mass_b, dtype=np.float64).ravel()
    if a.size != b.size or a.size == 0:
        return None
    k = max(1, math.ceil(round(fraction * a.size, 9)))
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(top_a & top_b) / len(top_a | top_b)


def region_deltas(regions_a, regions_b) -> tuple[list[dict] | None, float | None]:
    if not regions_a or not regions_b:
        return None, None
    a = {r["name"]: r["mass_fraction"] for r in regions_a if r["mass_fraction"] is not None}
    b = {r["name"]: r["mass_fraction"] for r in regions_b if r["mass_fraction"] is not None}
    deltas = [
        {"name": name, "mass_a": a[name], "mass_b": b[name], "delta": b[name] - a[name]}
        for name in sorted(set(a) & set(b))
    ]
    if not deltas:
        return None, None
    return deltas, max(abs(d["delta"]) for d in deltas)


def _load_raw(folder: str | None, uri: str | None):
    """A row's raw attributions, read from inside its run ``folder`` only (never from where
    the row says: ``read_artifact``); None (compare grids) when there is none to read."""
    if not uri or not folder:
        return None
    try:
        return np.load(io.BytesIO(read_artifact(folder, RAW, uri)), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - a missing raw file falls back to the grid
        logging.warning("not reading %s (%s): comparing grids instead", uri, e)
        return None


def _delta(a, b):
    return None if a is None or b is None else float(b) - float(a)


def compare_rows(a: dict, b: dict, folders: tuple[str, str] | None = None) -> dict:
    """One DRIFT_SCHEMA row from the rank-0 summary rows of the same image in two runs;
    ``folders``: the two run folders their raw files are read from (none: grids only)."""
    grid_a, grid_b = a.get("grid"), b.get("grid")
    comparable_grids = (
        grid_a is not None
        and grid_b is not None
        and None not in grid_a
        and None not in grid_b
        and a.get("grid_cells") == b.get("grid_cells")
    )
    correlation = spearman(grid_a, grid_b) if comparable_grids else None
    iou, source = None, None
    if a.get("raw_uri") and b.get("raw_uri"):
        folder_a, folder_b = folders or (None, None)
        raw_a, raw_b = _load_raw(folder_a, a["raw_uri"]), _load_raw(folder_b, b["raw_uri"])
        if raw_a is not None and raw_b is not None and raw_a.shape == raw_b.shape:
            iou = top_fraction_iou(np.abs(raw_a).sum(axis=-1), np.abs(raw_b).sum(axis=-1))
            source = "raw"
    if source is None and comparable_grids:
        iou, source = top_fraction_iou(grid_a, grid_b), "grid"
    deltas, max_delta = region_deltas(a.get("regions"), b.get("regions"))
    return {
        "content_sha256": a["content_sha256"],
        "uri_a": a["image_uri"],
        "uri_b": b["image_uri"],
        "target_class_a": a.get("target_class"),
        "target_class_b": b.get("target_class"),
        "target_label_a": a.get("target_label"),
        "target_label_b": b.get("target_label"),
        "predicted_class_a": a.get("predicted_class"),
        "predicted_class_b": b.get("predicted_class"),
        "predicted_label_a": a.get("predicted_label"),
        "predicted_label_b": b.get("predicted_label"),
        "prediction_changed": a.get("predicted_class") != b.get("predicted_class"),
        "predicted_score_a": a.get("predicted_score"),
        "predicted_score_b": b.get("predicted_score"),
        "predicted_score_delta": _delta(a.get("predicted_score"), b.get("predicted_score")),
        "target_score_a": a.get("target_score"),
        "target_score_b": b.get("target_score"),
        "target_score_delta": _delta(a.get("target_score"), b.get("target_score")),
        "grid_correlation": correlation,
        "top5_iou": iou,
        "iou_source": source,
        "region_mass_max_abs_delta": max_delta,
        "region_mass_deltas": deltas,
        "overlay_uri_a": a.get("overlay_uri"),
        "overlay_uri_b": b.get("overlay_uri"),
        "same_model": a.get("model_fingerprint") == b.get("model_fingerprint"),
        "same_settings": a.get("settings_hash") == b.get("settings_hash"),
        **{
            f"{kind}_auc{suffix}": value
            for kind in ("deletion", "insertion")
            for suffix, value in (
                ("_a", a.get(f"{kind}_auc")),
                ("_b", b.get(f"{kind}_auc")),
                ("_delta", _delta(a.get(f"{kind}_auc"), b.get(f"{kind}_auc"))),
            )
        },
    }
