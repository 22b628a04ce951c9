"""Path integrals along curves that are not straight lines, over the engine's packed calls.

A curve is ``point(t) -> (gamma(t), gamma'(t))`` for t in [0, 1], from the path's start
(t = 0) to the image (t = 1). Its attribution is ``sum_k w_k grad F(gamma(t_k)) * gamma'(t_k)``
for a quadrature rule (t_k, w_k); completeness compares the sum with F(image) - F(start).
Rows of all curves are packed into ``IntegratedGradients.gradients`` calls; the rule, the
completeness check and the refinement are the engine's (``refine_until_complete``, ``checked``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from attribution import quadrature
from attribution.integrated_gradients import Attribution, checked


@dataclass
class Curve:
    key: object
    target: int
    point: Callable[[float], tuple[np.ndarray, np.ndarray]]
    image_scores: np.ndarray  # F(image), every class
    start_score: float  # F(gamma(0)) for the target
    start_predicts_target: bool
    integral: np.ndarray | None = None
    evaluations: int = 0
    path: dict = field(default_factory=dict)
    rule: quadrature.Rule | None = None  # of the latest round


def weighted_gradients(engine, rows) -> tuple[np.ndarray, list[np.ndarray]]:
    """rows: (target, make) with ``make() -> (point, multiplier)``; returns each row's score
    and ``multiplier * grad F(point)``, points built one packed call at a time."""
    scores, products = [], []
    for start in range(0, len(rows), engine.batch_size):
        chunk = rows[start : start + engine.batch_size]
        made = [make() for _, make in chunk]
        score, grads = engine.gradients(np.stack([p for p, _ in made]), [t for t, _ in chunk])
        scores.append(score)
        products.extend(m * g.astype(np.float64) for (_, m), g in zip(made, grads))
    return (np.concatenate(scores) if scores else np.zeros(0)), products


def integrate(engine, curves: list[Curve]) -> list[Attribution]:
    """Attributions along every curve at the engine's rule, refined as the engine refines IG
    (until completeness holds or max_steps)."""
    if engine.method == quadrature.SCORE_GUIDED:  # its scan is of straight paths (the engine's)
        raise ValueError(
            "the engine's method score_guided is for straight paths: not for blur_ig's curves"
        )
    first = []
    for curve in curves:
        curve.rule = quadrature.rule(engine.method, engine.steps)
        first.append((curve, curve.rule.alphas, curve.rule.weights))
    return engine.refine_until_complete(
        first,
        lambda pending: _evaluate(engine, pending),
        lambda curve: _finish(curve, engine.atol, engine.tolerance),
    )


def _evaluate(engine, pending) -> None:
    """One round: every pending (curve, alphas, weights) row into its curve's integral."""
    rows = [
        (c.target, (lambda c=c, t=t, w=w: _row(c, t, w)), c, t)
        for c, alphas, weights in pending
        for t, w in zip(alphas, weights)
    ]
    scores, products = weighted_gradients(engine, [(t, make) for t, make, _, _ in rows])
    for (_, _, curve, t), score, product in zip(rows, scores, products):
        curve.integral = product if curve.integral is None else curve.integral + product
        curve.evaluations += 1
        curve.path[float(t)] = float(score)


def _row(curve: Curve, t: float, weight: float):
    point, velocity = curve.point(float(t))
    return point, weight * velocity


def _finish(curve: Curve, atol, tolerance) -> Attribution:
    path = dict(curve.path)
    path.setdefault(0.0, curve.start_score)
    path.setdefault(1.0, float(curve.image_scores[curve.target]))
    alphas = sorted(path)
    return checked(
        key=curve.key,
        target=curve.target,
        image_scores=curve.image_scores,
        start_score=curve.start_score,
        start_predicts_target=curve.start_predicts_target,
        attributions=curve.integral,
        atol=atol,
        tolerance=tolerance,
        method=curve.rule.method,
        steps=curve.rule.steps,
        evaluations=curve.evaluations,
        path_alphas=alphas,
        path_scores=[path[a] for a in alphas],
    )
