"""Quadrature rules on [0, 1] as (points, weights), and how each one refines.

Every rule integrates g over [0, 1] as ``sum(weights * g(alphas))``; the IG engine has one
integration path for all of them. ``steps`` is always the number of points of the rule.

Refinement reuses what was computed where the rule allows it: a refined integral is
``scale * previous_integral + sum(new_weights * g(new_alphas))``. The Riemann and trapezoid
rules nest (scale > 0, only new points are evaluated); Gauss-Legendre does not (scale 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


@dataclass(frozen=True)
class Rule:
    method: str
    steps: int
    alphas: np.ndarray  # float64 [steps], in [0, 1]
    weights: np.ndarray  # float64 [steps], sum to 1


@dataclass(frozen=True)
class Refinement:
    rule: Rule  # the refined rule, as rule(method, rule.steps) would build it
    scale: float  # factor on the previous integral
    alphas: np.ndarray  # points to evaluate now
    weights: np.ndarray  # their weights in the refined rule


def _check(method: str, steps: int) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    minimum = 2 if method == "riemann_trapezoid" else 1
    if int(steps) != steps or steps < minimum:
        raise ValueError(f"--steps must be an integer >= {minimum} for {method}, got {steps!r}")


def rule(method: str, steps: int) -> Rule:
    """The ``method`` rule with ``steps`` points."""
    _check(method, steps)
    n = int(steps)
    if method == "riemann_left":
        alphas, weights = np.arange(n) / n, np.full(n, 1.0 / n)
    elif method == "riemann_right":
        alphas, weights = np.arange(1, n + 1) / n, np.full(n, 1.0 / n)
    elif method == "riemann_middle":
        alphas, weights = (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n)
    elif method == "riemann_trapezoid":
        intervals = n - 1
        alphas = np.arange(n) / intervals
        weights = np.full(n, 1.0 / intervals)
        weights[[0, -1]] = 0.5 / intervals
    else:
        x, w = np.polynomial.legendre.leggauss(n)
        alphas, weights = (x + 1.0) / 2.0, w / 2.0
    return Rule(method, n, alphas.astype(np.float64), weights.astype(np.float64))


def refine(previous: Rule) -> Refinement:
    """The next finer rule, and only the points it adds to ``previous`` (when it nests)."""
    method, n = previous.method, previous.steps
    if method in ("riemann_left", "riemann_right"):
        new = (2 * np.arange(n) + 1) / (2 * n)
        return Refinement(rule(method, 2 * n), 0.5, new, np.full(n, 1.0 / (2 * n)))
    if method == "riemann_middle":
        new = np.sort(np.concatenate([(np.arange(n) + 1 / 6) / n, (np.arange(n) + 5 / 6) / n]))
        return Refinement(rule(method, 3 * n), 1.0 / 3.0, new, np.full(2 * n, 1.0 / (3 * n)))
    if method == "riemann_trapezoid":
        intervals = n - 1
        new = (2 * np.arange(intervals) + 1) / (2 * intervals)
        return Refinement(
            rule(method, 2 * intervals + 1), 0.5, new, np.full(intervals, 1.0 / (2 * intervals))
        )
    finer = rule(method, 2 * n)
    return Refinement(finer, 0.0, finer.alphas, finer.weights)
