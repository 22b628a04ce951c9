"""Quadrature rules on [0, 1] as (points, weights), and how each one refines.

Every rule integrates g over [0, 1] as ``sum(weights * g(alphas))``; the IG engine has one
integration path for all of them. ``steps`` is always the number of points of the rule.

Refinement reuses what was computed where the rule allows it: a refined integral is
``scale * previous_integral + sum(new_weights * g(new_alphas))``. The Riemann and trapezoid
rules nest (scale > 0, only new points are evaluated); Gauss-Legendre does not (scale 0).

``score_guided`` places the points by the path's score curve, scanned first with forward
rows (alpha = k / 16, then up to two rounds bisecting the intervals where the curve moves,
``scan_bisections``): a density ``p`` on [0, 1], piecewise linear through the scan's knots
and proportional to the curve's slope |dF/dalpha| plus a floor, maps the base rule's points ``u`` to
``alpha = C^-1(u)`` (``C`` the density's CDF), with weights ``w / p(alpha)`` (the Jacobian of
the change of variables, exact). It is the base rule applied to ``g(C^-1(u)) / p(C^-1(u))``
on [0, 1], the same integral: consistent, nested when the base rule nests (the map is fixed
per path), and the base rule itself on a flat curve (``rule`` builds it so: no scan yet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORE_GUIDED = "score_guided"
METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
    SCORE_GUIDED,
)
GUIDED_BASE = "riemann_trapezoid"  # score_guided's rule in u: nested, measured best
SCAN_INTERVALS = 16  # score_guided's scan: alpha = k / 16, the 15 inner points forward rows
SCAN_LEVELS = 2  # then up to 2 rounds of bisecting where the curve moves: knots down to 1/64
SCAN_SHARE = 0.05  # an interval is bisected when it or a neighbour holds 5% of the variation
GUIDED_FLOOR = 0.25  # share of the density that is uniform (the curve may move between knots)
# A rule's version, raised whenever the rule places its points differently for the same
# options. settings_hash (transforms/settings.py) counts it, so --reuse_from and --resume never
# lend rows an older placement computed to a run of this one. A rule at version 0 is left out
# of the hash: hashes of runs made before versions existed stay valid while the rule is
# unchanged. score_guided 1: the trapezoid base (ff1be2d) and the bisecting scan (5507dbb),
# both changed after its first rows (5d2a85d) under the same hash.
RULE_VERSIONS = {SCORE_GUIDED: 1}


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


def base(method: str) -> str:
    """The rule whose points a method evaluates (score_guided maps its base rule's)."""
    return GUIDED_BASE if method == SCORE_GUIDED else method


def _check(method: str, steps: int) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    minimum = 2 if base(method) == "riemann_trapezoid" else 1
    if int(steps) != steps or steps < minimum:
        raise ValueError(f"steps must be an integer >= {minimum} for {method}, got {steps!r}")


def rule(method: str, steps: int) -> Rule:
    """The ``method`` rule with ``steps`` points."""
    _check(method, steps)
    n = int(steps)
    if method == SCORE_GUIDED:  # before any scan: the flat curve's density, uniform
        return _relabel(rule(GUIDED_BASE, n))
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
    if method == SCORE_GUIDED:
        step = refine(_relabel(previous, GUIDED_BASE))
        return Refinement(_relabel(step.rule), step.scale, step.alphas, step.weights)
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


def _relabel(r: Rule, method: str = SCORE_GUIDED) -> Rule:
    return Rule(method, r.steps, r.alphas, r.weights)


@dataclass(frozen=True)
class Density:
    """A density on [0, 1], linear between ``knots`` (float64, 0 and 1 included) through
    ``values`` (> 0), integrating to 1; ``cdf`` is its integral at the knots."""

    knots: np.ndarray
    values: np.ndarray
    cdf: np.ndarray

    @classmethod
    def from_scores(cls, knots, scores, floor: float | None = None) -> Density:
        """The density of ``score_guided`` for a scanned curve: at each knot the larger
        slope |dF/dalpha| of the two scan intervals beside it (a step inside an interval
        raises both its ends), mixed with the uniform density by ``floor``."""
        floor = GUIDED_FLOOR if floor is None else floor
        knots = np.asarray(knots, np.float64)
        scores = np.asarray(scores, np.float64)
        widths = np.diff(knots)
        if len(knots) < 2 or knots[0] != 0 or knots[-1] != 1 or not (widths > 0).all():
            raise ValueError("knots must rise from 0 to 1")
        if not 0 < floor <= 1:
            raise ValueError(f"floor must be in (0, 1], got {floor!r}")
        slopes = np.abs(np.diff(scores)) / widths
        at = np.maximum(np.concatenate([slopes[:1], slopes]), np.concatenate([slopes, slopes[-1:]]))
        mass = float(np.sum(widths * (at[:-1] + at[1:]) / 2))
        if not (np.isfinite(mass) and mass > 0):  # a flat or broken curve: no information
            values = np.ones_like(knots)
        else:
            values = (1 - floor) * at / mass + floor
        cdf = np.concatenate([[0.0], np.cumsum(widths * (values[:-1] + values[1:]) / 2)])
        return cls(knots, values / cdf[-1], cdf / cdf[-1])

    def __call__(self, alphas) -> np.ndarray:
        return np.interp(np.asarray(alphas, np.float64), self.knots, self.values)

    def inverse(self, u) -> np.ndarray:
        """C^-1(u): on a knot interval C is quadratic; the stable root of
        ``p0 t + s t^2 / 2 = r`` is ``t = 2 r / (p0 + sqrt(p0^2 + 2 s r))``."""
        u = np.asarray(u, np.float64)
        k = np.clip(np.searchsorted(self.cdf, u, side="right") - 1, 0, len(self.knots) - 2)
        widths = np.diff(self.knots)[k]
        p0 = self.values[k]
        s = (self.values[k + 1] - p0) / widths
        r = u - self.cdf[k]
        t = 2 * r / (p0 + np.sqrt(np.maximum(p0 * p0 + 2 * s * r, 0.0)))
        return self.knots[k] + np.clip(t, 0.0, widths)

    def place(self, alphas, weights) -> tuple[np.ndarray, np.ndarray]:
        """A base rule's points u and weights w as points C^-1(u), weights w / p(C^-1(u))."""
        mapped = self.inverse(alphas)
        return mapped, np.asarray(weights, np.float64) / self(mapped)


def scan_alphas(intervals: int | None = None) -> np.ndarray:
    """The inner points of score_guided's first scan round (0 and 1 are scored anyway)."""
    intervals = SCAN_INTERVALS if intervals is None else intervals
    return np.arange(1, intervals) / intervals


def scan_bisections(knots, curves, *, share: float = SCAN_SHARE) -> np.ndarray:
    """The next scan round's points: the midpoints of the knot intervals where the curve
    moves. ``knots`` rise from 0 to 1; ``curves`` [T, K] are the scores there of the targets
    sharing the path. An interval is bisected when, for some target, it or an interval
    beside it holds more than ``share`` of the curve's variation (sum of |dF| over the
    intervals; the neighbours too, since a curve that rises and falls back inside one
    interval shows little change across it), and it is wider than the finest scan
    (1 / (SCAN_INTERVALS 2^SCAN_LEVELS)). Empty when nothing is left to bisect."""
    knots = np.asarray(knots, np.float64)
    changes = np.abs(np.diff(np.atleast_2d(np.asarray(curves, np.float64)), axis=1))
    totals = changes.sum(axis=1, keepdims=True)
    held = ((changes > share * totals) & (totals > 0) & np.isfinite(totals)).any(axis=0)
    moving = held.copy()
    moving[1:] |= held[:-1]
    moving[:-1] |= held[1:]
    finest = 1.0 / (SCAN_INTERVALS * 2**SCAN_LEVELS)
    moving &= np.diff(knots) > 1.5 * finest
    return (knots[:-1][moving] + knots[1:][moving]) / 2
