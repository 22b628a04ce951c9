"""``--fail_on "METRIC<VALUE"``: the thresholds a comparison is gated on."""

from __future__ import annotations

import operator
import re

from pipeline.launch import UsageError

# Metrics of drift_summary.json that --fail_on may name.
METRICS = (
    "images_compared",
    "images_only_in_a",
    "images_only_in_b",
    "changed_prediction_count",
    "changed_prediction_fraction",
    "median_grid_correlation",
    "mean_grid_correlation",
    "p10_grid_correlation",
    "min_grid_correlation",
    "median_top5_iou",
    "mean_top5_iou",
    "p10_top5_iou",
    "min_top5_iou",
    "mean_abs_target_score_delta",
    "max_abs_target_score_delta",
    "mean_abs_predicted_score_delta",
    "max_abs_predicted_score_delta",
    "median_region_mass_delta",
    "max_region_mass_delta",
    # strategy drift (pipeline/compare/strategies.py)
    "strategy_classes_compared",
    "strategy_classes_flagged",
    "max_strategy_shift",
    "new_suspicious_strategies",
)
_THRESHOLD = re.compile(
    r"\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
)
_OPERATORS = {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}


def parse_threshold(text: str) -> tuple[str, str, float]:
    match = _THRESHOLD.fullmatch(text)
    if not match:
        raise UsageError(
            f"--fail_on {text!r}: expected METRIC<VALUE, METRIC>VALUE, <= or >=, "
            f"e.g. 'median_grid_correlation<0.8'"
        )
    metric, operator, value = match.group(1), match.group(2), float(match.group(3))
    if metric not in METRICS:
        raise UsageError(
            f"--fail_on {text!r}: unknown metric {metric!r}; one of {', '.join(METRICS)}"
        )
    return metric, operator, value


def check(metrics: dict, thresholds: list[str]) -> list[dict]:
    """Each threshold with the actual value and whether it is violated."""
    checked = []
    for text in thresholds:
        metric, operator, value = parse_threshold(text)
        actual = metrics.get(metric)
        violated = actual is None or bool(_OPERATORS[operator](actual, value))
        checked.append(
            {
                "threshold": f"{metric}{operator}{value:g}",
                "metric": metric,
                "operator": operator,
                "value": value,
                "actual": actual,
                "violated": violated,
            }
        )
    return checked
