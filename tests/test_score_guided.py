"""--method score_guided: a forward scan of each path places the gradient points by the score
curve (attribution.quadrature.Density), with exact Jacobian weights. The map against an
independent CDF, convergence to analytic integrals, the engine against the closed-form IG
of a sharp logistic, completeness on every row, batch invariance, no retracing."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from conftest import random_pngs
from job_argv import job_argv

from attribution import quadrature
from attribution.config import AttributionConfig
from attribution.integrated_gradients import IntegratedGradients, Request
from attribution.quadrature import SCORE_GUIDED, Density, refine, rule
from pipeline import run as job

H, W = 6, 5
STEEP, STEP_AT = 200.0, 0.37  # a logistic step at alpha 0.37, width ~1/200


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def step_curve(alphas):
    return sigmoid(STEEP * (np.asarray(alphas, np.float64) - STEP_AT))


def scanned(curve) -> Density:
    knots = np.concatenate([[0.0], quadrature.scan_alphas(), [1.0]])
    return Density.from_scores(knots, curve(knots))


def cdf_by_quadrature(density: Density, alphas) -> np.ndarray:
    """C(alpha), independently: 20-point Gauss-Legendre of np.interp of the knots on each
    piece (exact for the linear pieces up to rounding)."""
    nodes, weights = np.polynomial.legendre.leggauss(20)
    out = []
    for a in np.atleast_1d(alphas):
        edges = np.concatenate([density.knots[density.knots < a], [a]])
        total = 0.0
        for lo, hi in zip(edges[:-1], edges[1:]):
            x = lo + (nodes + 1) / 2 * (hi - lo)
            total += (hi - lo) / 2 * weights @ np.interp(x, density.knots, density.values)
        out.append(total)
    return np.array(out)


# --- the map and its weights ------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_density_integrates_to_one_and_its_inverse_is_the_cdfs(seed):
    rng = np.random.default_rng(seed)
    knots = np.concatenate([[0.0], np.sort(rng.uniform(0.01, 0.99, 9)), [1.0]])
    density = Density.from_scores(knots, np.cumsum(rng.normal(size=11)) ** 2)
    assert (density.values > 0).all()
    assert np.isclose(cdf_by_quadrature(density, [1.0])[0], 1.0, atol=1e-13)
    u = np.linspace(0, 1, 101)
    alphas = density.inverse(u)
    assert (np.diff(alphas) > 0).all() and alphas[0] == 0 and np.isclose(alphas[-1], 1)
    np.testing.assert_allclose(cdf_by_quadrature(density, alphas), u, atol=1e-12)


def test_weights_are_the_jacobian_so_the_density_itself_integrates_exactly():
    """sum w_i / p(a_i) * g(a_i) is the base rule on g(C^-1(u)) / p(C^-1(u)): for g = p q(C)
    it is the base rule on q, exact wherever the base rule is (lines, for the trapezoid)."""
    density = scanned(step_curve)
    base = rule(quadrature.GUIDED_BASE, 9)
    alphas, weights = density.place(base.alphas, base.weights)
    np.testing.assert_allclose(weights, base.weights / density(alphas), rtol=1e-15)
    u = cdf_by_quadrature(density, alphas)
    for q, integral in ((np.ones_like, 1.0), (lambda u: 2 * u, 1.0)):
        assert np.isclose(weights @ (density(alphas) * q(u)), integral, atol=1e-12)


def test_the_scan_puts_the_points_where_the_curve_moves():
    density = scanned(step_curve)
    alphas, _ = density.place(*(lambda r: (r.alphas, r.weights))(rule("riemann_trapezoid", 33)))
    near = np.abs(alphas - STEP_AT) < 1 / 16
    assert near.sum() >= 33 * 0.4  # a uniform rule puts 1/8 of its points there
    flat = Density.from_scores([0, 0.5, 1], [0.3, 0.3, 0.3])  # no information: uniform
    np.testing.assert_allclose(flat.inverse([0.1, 0.5, 0.9]), [0.1, 0.5, 0.9], atol=1e-15)


@pytest.mark.parametrize(
    "g,exact",
    [
        (lambda a: 5 * a**4, 1.0),
        (lambda a: STEEP * step_curve(a) * (1 - step_curve(a)), step_curve(1) - step_curve(0)),
    ],
    ids=["polynomial", "sharp_sigmoid_step"],
)
def test_the_guided_rule_converges_to_the_analytic_integral(g, exact):
    density = scanned(step_curve)
    errors = []
    for n in (9, 33, 129, 513):
        base = rule(quadrature.GUIDED_BASE, n)
        alphas, weights = density.place(base.alphas, base.weights)
        errors.append(abs(weights @ g(alphas) - exact))
    # the mapped integrand has kinks where the density does (at the scan's knots): second
    # order, so quartering the spacing divides the error by well over 3 at every refinement
    assert all(later < earlier / 3 for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] < 1e-3 * abs(exact)


def test_on_the_sharp_step_the_guided_rule_beats_its_base_rule_at_equal_points():
    g = lambda a: STEEP * step_curve(a) * (1 - step_curve(a))
    exact = step_curve(1) - step_curve(0)
    density = scanned(step_curve)
    for n in (9, 17, 33):
        base = rule(quadrature.GUIDED_BASE, n)
        alphas, weights = density.place(base.alphas, base.weights)
        assert abs(weights @ g(alphas) - exact) < 0.2 * abs(base.weights @ g(base.alphas) - exact)


def test_the_scan_bisects_where_the_curve_moves_down_to_the_finest_width():
    knots = np.concatenate([[0.0], quadrature.scan_alphas(), [1.0]])
    finest = 1 / (quadrature.SCAN_INTERVALS * 2**quadrature.SCAN_LEVELS)
    for _ in range(quadrature.SCAN_LEVELS + 1):
        new = quadrature.scan_bisections(knots, step_curve(knots)[None])
        # only intervals at or beside the step's (the logistic moves within ~0.05 of it)
        assert np.all(np.abs(new - STEP_AT) < 2 / quadrature.SCAN_INTERVALS)
        knots = np.sort(np.concatenate([knots, new]))
    assert len(new) == 0  # nothing wider than the finest scan is left to bisect near the step
    widths = np.diff(knots)
    assert widths.min() >= finest - 1e-15
    assert widths[np.searchsorted(knots, STEP_AT) - 1] == finest
    # a flat curve, or a broken one, asks for nothing; any target moving asks for its part
    assert len(quadrature.scan_bisections([0, 0.5, 1], [[0.3, 0.3, 0.3]])) == 0
    assert len(quadrature.scan_bisections([0, 0.5, 1], [[0.3, np.nan, 0.3]])) == 0
    both = quadrature.scan_bisections(knots[:3], [[0.3, 0.3, 0.3], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(both, (knots[:2] + knots[1:3]) / 2)


def test_refinement_nests_through_the_map():
    density = scanned(step_curve)
    g = lambda a: np.exp(2 * a) * np.cos(3 * a)
    r = rule(SCORE_GUIDED, 9)
    estimate = g(density.place(r.alphas, r.weights)[0]) @ density.place(r.alphas, r.weights)[1]
    for _ in range(3):
        step = refine(r)
        assert step.rule.method == SCORE_GUIDED and step.scale == 0.5
        new_alphas, new_weights = density.place(step.alphas, step.weights)
        estimate = step.scale * estimate + new_weights @ g(new_alphas)
        fresh_alphas, fresh_weights = density.place(step.rule.alphas, step.rule.weights)
        assert np.isclose(estimate, fresh_weights @ g(fresh_alphas), rtol=1e-13)
        old = density.place(r.alphas, r.weights)[0]
        np.testing.assert_allclose(
            np.sort(np.concatenate([old, new_alphas])), np.sort(fresh_alphas), atol=1e-15
        )
        r = step.rule


# --- the engine -------------------------------------------------------------------------
RNG = np.random.default_rng(7)
A = RNG.normal(size=(H, W, 3)).astype(np.float32)


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, H, W, 3), dtype=np.float32)


def requests(xs):
    return [Request(i, x, np.zeros_like(x)) for i, x in enumerate(xs)]


def logistic(x):
    """Class 0's logit s(x) = STEEP (a.x / a.x0 - STEP_AT) for the first test image x0, so its
    probability steps at alpha = STEP_AT on x0's path; class 1's logit is 0. Along any black
    path the score is sigmoid(k alpha + c) of one linear form, so IG has a closed form."""
    s = tf.reduce_sum(x * A, axis=[1, 2, 3]) * SCALE - STEEP * STEP_AT
    return tf.stack([s, tf.zeros_like(s)], axis=1)


X0 = images(1, seed=3)[0]
SCALE = STEEP / float((X0.astype(np.float64) * A).sum())


def logistic_ig(x):
    """IG_i = x_i a_i SCALE / k (sigmoid(k + c) - sigmoid(c)), k = SCALE a.x, c = -STEEP STEP_AT."""
    k = SCALE * float((x.astype(np.float64) * A).sum())
    c = -STEEP * STEP_AT
    return x * A * SCALE / k * (sigmoid(k + c) - sigmoid(c))


def cnn(activation: str, seed: int):
    """A tiny CNN, 4 classes, as ``fn(images) -> logits``."""
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((H, W, 3)),
            tf.keras.layers.Conv2D(8, 3, padding="same", activation=activation),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(4),
        ]
    )
    return lambda x: model(x, training=False)


def engine(fn, **kwargs):
    return IntegratedGradients(fn, image_size=(H, W), method=SCORE_GUIDED, **kwargs)


def test_exact_on_the_closed_form_logistic_and_fewer_rows_than_its_base_rule():
    xs = np.stack([X0, 0.9 * X0 + 0.1 * images(1, seed=4)[0]])
    guided = engine(logistic, steps=9, tolerance=1e-3, max_steps=1025).attribute(requests(xs), "0")
    base = IntegratedGradients(
        logistic, image_size=(H, W), method="riemann_trapezoid", steps=9, tolerance=1e-3,
        max_steps=1025,
    ).attribute(requests(xs), "0")  # fmt: skip
    for x, r, b in zip(xs, guided, base):
        exact = logistic_ig(x)
        assert r.converged and r.method == SCORE_GUIDED
        # the completeness tolerance bounds the error of this 1-D integral: 1e-3 (+ float32)
        assert np.abs(r.attributions - exact).max() / np.abs(exact).max() < 2e-3
        # the first scan round, then at most SCAN_LEVELS rounds of bisections near the step
        first = len(quadrature.scan_alphas())
        assert first < r.forward_evaluations <= first + 3 * 2 * quadrature.SCAN_LEVELS
        assert b.converged and r.gradient_evaluations < b.gradient_evaluations


def test_completeness_holds_on_every_row_and_path_scores_include_the_scan():
    fn = cnn("relu", seed=1)
    xs = images(4, seed=5)
    ig = engine(fn, steps=9, tolerance=0.01, max_steps=257, batch_size=7)
    results = ig.attribute(requests(xs), "topk:2")
    assert len(results) == 8
    for r in results:
        x = xs[r.key]
        total = float(r.attributions.astype(np.float64).sum())
        assert np.isclose(r.attribution_sum, total, rtol=1e-5)
        assert np.isclose(
            r.completeness_error, abs(total - (r.target_score - r.baseline_score)), atol=1e-6
        )
        assert r.converged == (
            r.relative_completeness_error <= 0.01 or r.completeness_error <= 1e-6
        )
        assert set(quadrature.scan_alphas().astype(np.float32)) <= set(r.path_alphas.tolist())
        expected = ig.scores(r.path_alphas[:, None, None, None] * x[None])[:, r.target]
        np.testing.assert_allclose(r.path_scores, expected, atol=1e-5)
    assert all(r.converged for r in results)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_results_do_not_depend_on_call_size_or_the_mix_of_images(batch_size):
    fn = cnn("softplus", seed=5)
    xs = images(5, seed=6)
    reference = engine(fn, steps=9, tolerance=None, batch_size=7).attribute(requests(xs))
    together = engine(fn, steps=9, tolerance=None, batch_size=batch_size).attribute(
        requests(xs[::-1])
    )[::-1]
    alone = [
        engine(fn, steps=9, tolerance=None, batch_size=batch_size).attribute(requests([x]))[0]
        for x in xs
    ]
    for ref, a, b in zip(reference, together, alone):
        for other in (a, b):
            assert other.target == ref.target
            np.testing.assert_allclose(other.attributions, ref.attributions, rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(other.path_alphas, ref.path_alphas, atol=1e-7)


def test_no_retracing_after_warm_up():
    traces = []

    def fn(x):
        traces.append(1)
        return logistic(x)

    ig = engine(fn, steps=5, tolerance=0.01, batch_size=16)
    ig.attribute(requests(images(3)))
    warm = ig.trace_count, len(traces)
    assert warm[0] == 3  # forward, scan, gradients
    for n, target in [(1, "predicted"), (7, "1"), (2, "topk:2"), (5, "0")]:
        ig.attribute(requests(images(n, seed=n)), target)
    assert (ig.trace_count, len(traces)) == warm


def test_options_refuse_what_score_guided_cannot_do():
    AttributionConfig(method=SCORE_GUIDED).validate()
    with pytest.raises(ValueError, match="blur_ig"):
        AttributionConfig(method=SCORE_GUIDED, attribution="blur_ig").validate()
    with pytest.raises(ValueError, match="steps must be >= 2"):
        AttributionConfig(method=SCORE_GUIDED, steps=1).validate()


def test_the_job_runs_it_and_its_summaries_check_completeness(tiny_model, tmp_path):
    folder = random_pngs(tmp_path / "in", 3)
    out = tmp_path / "out"
    argv = [*job_argv(f"{folder}/*", out, tiny_model), "--method", SCORE_GUIDED]
    argv += ["--steps", "5", "--tolerance", "0.05", "--max_steps", "17"]
    assert job.main([*argv, "--progress_interval", "0", "--faithfulness", "none"]) == 0
    rows = pq.read_table(out / "summaries").to_pylist()
    assert len(rows) == 3
    for row in rows:
        assert row["method"] == SCORE_GUIDED and row["gradient_evaluations"] >= 5
        change = row["target_score"] - row["baseline_score"]
        assert np.isclose(row["completeness_error"], abs(row["attribution_sum"] - change))
