"""What every method returns: an IG ``Attribution`` with the method's name and extras, and
how per-baseline / per-copy IG results combine into one row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from attribution.integrated_gradients import Attribution, checked, converged


@dataclass
class Explanation(Attribution):
    """One (image, target) explained by ``attribution`` (a name from ATTRIBUTIONS).

    ``baseline`` names where the path(s) started (e.g. ``black,white``, ``blur:20``).
    The completeness fields are the method's own (see ``combine``); XRAI also fills
    ``xrai_heatmap`` (float [H, W] gain per pixel), ``xrai_ranks`` (int [H, W], 1 = best
    region, 0 = none) and ``xrai_region_ranks`` (list of {segment_area_fraction, gain}).
    """

    attribution: str = "ig"
    baseline: str = "black"
    xrai_heatmap: np.ndarray | None = None
    xrai_ranks: np.ndarray | None = None
    xrai_region_ranks: list | None = None
    split_half_correlation: float | None = None  # rise: maps of its two halves of masks


def explanation(result: Attribution, attribution: str, baseline: str, **extras) -> Explanation:
    values = {f.name: getattr(result, f.name) for f in fields(Attribution)}
    return Explanation(**values, attribution=attribution, baseline=baseline, **extras)


def pixel_map(
    *,
    key,
    target: int,
    image_scores: np.ndarray,
    heatmap: np.ndarray,
    channels: int,
    baseline_score: float | None,
    baseline_predicts_target: bool | None,
    evaluations: int,
) -> Attribution:
    """An ``Attribution`` of a method that gives one value per pixel (Grad-CAM, occlusion,
    RISE) and has no completeness axiom: the completeness fields, ``converged``, the rule
    (``method``, ``steps``) and the path are empty. The [H, W] map is spread evenly over the
    channels (each holds map / C), so a pixel's channel sum, what masks, statistics and the
    faithfulness order read, is the map; ``attribution_sum`` is the map's sum."""
    heatmap = np.asarray(heatmap, np.float64)
    result = checked(
        key=key,
        target=target,
        image_scores=image_scores,
        start_score=0.0,  # no path start: the check's fields are emptied below
        start_predicts_target=False,
        attributions=np.repeat(heatmap[..., None] / channels, channels, axis=-1),
        atol=0.0,
        tolerance=None,
        method=None,
        steps=None,
        evaluations=evaluations,
        path_alphas=[],
        path_scores=[],
    )
    return replace(
        result,
        baseline_score=baseline_score,
        baseline_predicts_target=baseline_predicts_target,
        attribution_sum=float(heatmap.sum()),
        completeness_error=None,
        relative_completeness_error=None,
        converged=None,
    )


def combine(
    parts: Sequence[Attribution],
    *,
    target_score: float,
    atol: float,
    tolerance: float | None,
    worst: bool,
) -> Attribution:
    """The mean of several IGs of one (image, target), each with its own completeness check.

    ``worst``: the row reports the largest per-part error (averaged baselines: every part
    explains the same image); otherwise the mean error over parts (SmoothGrad: each noisy
    copy is its own input). ``baseline_score`` is the mean F(baseline); the attribution sum
    is the mean of the parts' sums, so for exact parts it equals ``mean(F(x_k)) - mean(F(b_k))``.
    """
    first = parts[0]
    errors = np.array([p.completeness_error for p in parts])
    relatives = np.array([p.relative_completeness_error for p in parts])
    pick = np.max if worst else np.mean
    same_path = all(np.array_equal(p.path_alphas, first.path_alphas) for p in parts)
    attributions = np.mean([p.attributions.astype(np.float64) for p in parts], axis=0)
    both = (
        all(p.converged for p in parts)
        if worst
        else converged(float(pick(errors)), float(pick(relatives)), atol=atol, tolerance=tolerance)
    )
    return Attribution(
        key=first.key,
        target=first.target,
        predicted_class=first.predicted_class,
        predicted_score=first.predicted_score,
        target_score=target_score,
        baseline_score=float(np.mean([p.baseline_score for p in parts])),
        baseline_predicts_target=any(p.baseline_predicts_target for p in parts),
        attributions=attributions.astype(np.float32),
        attribution_sum=float(attributions.sum()),
        completeness_error=float(pick(errors)),
        relative_completeness_error=float(pick(relatives)),
        converged=both,
        method=first.method,
        steps=max(p.steps for p in parts),
        gradient_evaluations=sum(p.gradient_evaluations for p in parts),
        forward_evaluations=sum(p.forward_evaluations for p in parts),
        path_alphas=first.path_alphas,
        path_scores=(
            np.mean([p.path_scores for p in parts], axis=0).astype(np.float32)
            if same_path
            else first.path_scores
        ),
    )
