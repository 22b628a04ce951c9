"""Quadrature rules: exactness, nesting refinements, convergence to one answer."""

import numpy as np
import pytest

from attribution import quadrature
from attribution.quadrature import METHODS, refine, rule


@pytest.mark.parametrize("method", METHODS)
def test_weights_sum_to_one_and_points_in_unit_interval(method):
    for steps in (2, 3, 8, 50):
        r = rule(method, steps)
        assert len(r.alphas) == len(r.weights) == steps
        assert np.isclose(r.weights.sum(), 1.0, rtol=0, atol=1e-14)
        assert r.alphas.min() >= 0 and r.alphas.max() <= 1


def test_exactness_degrees():
    cubic = lambda a: 4 * a**3  # integral 1
    assert np.isclose(rule("gausslegendre", 2).weights @ cubic(rule("gausslegendre", 2).alphas), 1)
    # GL with n points is exact for degree 2n - 1
    r = rule("gausslegendre", 8)
    assert np.isclose(r.weights @ (16 * r.alphas**15), 1.0, atol=1e-13)
    # midpoint and trapezoid are exact for lines, not for quadratics
    for method in ("riemann_middle", "riemann_trapezoid"):
        r = rule(method, 5)
        assert np.isclose(r.weights @ (2 * r.alphas), 1.0, atol=1e-14)
        assert not np.isclose(r.weights @ (3 * r.alphas**2), 1.0, atol=1e-6)


def test_trapezoid_matches_tutorial_grid():
    r = rule("riemann_trapezoid", 51)  # the tutorial's m_steps=50: 51 points
    np.testing.assert_allclose(r.alphas, np.linspace(0, 1, 51))
    np.testing.assert_allclose(r.weights[1:-1], 1 / 50)
    np.testing.assert_allclose(r.weights[[0, -1]], 0.5 / 50)


@pytest.mark.parametrize("method", METHODS)
def test_refinement_equals_the_fresh_finer_rule(method):
    f = lambda a: np.exp(2 * a) * np.cos(3 * a)
    r = rule(method, 6)
    estimate = r.weights @ f(r.alphas)
    for _ in range(3):
        step = refine(r)
        estimate = step.scale * estimate + step.weights @ f(step.alphas)
        assert np.isclose(estimate, step.rule.weights @ f(step.rule.alphas), rtol=1e-13)
        if step.scale > 0:  # nested: the new points are exactly the ones not seen before
            seen_and_new = np.sort(np.concatenate([r.alphas, step.alphas]))
            np.testing.assert_allclose(seen_and_new, np.sort(step.rule.alphas), atol=1e-15)
        r = step.rule


@pytest.mark.parametrize("method", METHODS)
def test_every_rule_converges_to_the_same_integral(method):
    f = lambda a: 1 / (1 + 25 * (a - 0.3) ** 2)  # Runge-like bump
    exact = (np.arctan(5 * 0.7) + np.arctan(5 * 0.3)) / 5
    errors = [
        abs(rule(method, n).weights @ f(rule(method, n).alphas) - exact) for n in (8, 64, 512)
    ]
    assert errors[2] < errors[0]
    assert errors[2] < 2e-3


@pytest.mark.parametrize(
    "method,steps",
    [("nope", 4), ("gausslegendre", 0), ("riemann_trapezoid", 1), ("riemann_left", 2.5)],
)
def test_bad_rules_are_refused(method, steps):
    with pytest.raises(ValueError, match="method|steps"):
        quadrature.rule(method, steps)
