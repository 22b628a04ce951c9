"""The benchmark's baselines compute what the engine computes (apples to apples): the TF
tutorial re-implementation and Captum-style batching give the engine's attributions at the
same rule and steps on a tiny ReLU CNN. No timing here."""

import numpy as np
import pytest
import tensorflow as tf

from attribution.integrated_gradients import IntegratedGradients, Request
from attribution.quadrature import rule
from benchmarks.baselines import CaptumStyleIG, TutorialIG, gauss_legendre, trapezoid

H, W, CLASSES = 8, 8, 5


@pytest.fixture(scope="module")
def fn():
    tf.keras.utils.set_random_seed(3)
    bias = tf.keras.initializers.RandomNormal(stddev=0.1, seed=3)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((H, W, 3)),
            tf.keras.layers.Conv2D(6, 3, padding="same", activation="relu", bias_initializer=bias),
            tf.keras.layers.Conv2D(6, 3, padding="same", activation="relu", bias_initializer=bias),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(CLASSES, bias_initializer=bias),
        ]
    )
    return lambda x: model(x, training=False) * 4.0


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, H, W, 3), dtype=np.float32)


def engine_results(fn, xs, method, steps, batch_size=7):
    ig = IntegratedGradients(
        fn, image_size=(H, W), method=method, steps=steps, tolerance=None, batch_size=batch_size
    )
    return ig.attribute([Request(i, x, np.zeros_like(x)) for i, x in enumerate(xs)])


def assert_close(actual, expected):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("steps", [2, 9, 33, 51])  # 51 points: batches of 32 + 19
def test_tutorial_matches_engine_trapezoid(fn, steps):
    xs = images(3)
    expected = engine_results(fn, xs, "riemann_trapezoid", steps)
    tutorial = TutorialIG(fn)
    attributions, targets = tutorial.attribute(xs, np.zeros_like(xs), steps)
    assert targets == [r.target for r in expected]
    for a, r in zip(attributions, expected):
        assert_close(a, r.attributions)


def test_tutorial_keeps_every_gradient_batch(fn):
    """Not the tutorial's defect: with 51 points in batches of 32, completeness holds as
    well as the engine's, which it could not if the first batch were dropped."""
    xs = images(2, seed=5)
    expected = engine_results(fn, xs, "riemann_trapezoid", 51)
    attributions, _ = TutorialIG(fn).attribute(xs, np.zeros_like(xs), 51)
    for a, r in zip(attributions, expected):
        assert a.sum() == pytest.approx(r.attribution_sum, rel=1e-4, abs=1e-7)


def test_tutorial_retraces_like_the_tutorial(fn):
    """The tf.function has no input signature: a new class or a new short last batch traces."""
    tutorial = TutorialIG(fn)
    x = images(1)
    for target in (0, 0, 1):
        tutorial.attribute(x, np.zeros_like(x), 51, targets=[target])
    assert tutorial.trace_count == 4  # (32, 19) rows for class 0, then again for class 1


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gausslegendre"])
@pytest.mark.parametrize("steps,internal_batch_size", [(8, 32), (16, 5), (5, 1)])
def test_captum_style_matches_engine(fn, method, steps, internal_batch_size):
    xs = images(4, seed=1)
    expected = engine_results(fn, xs, method, steps)
    captum = CaptumStyleIG(
        fn, image_size=(H, W), method=method, steps=steps, internal_batch_size=internal_batch_size
    )
    attributions = captum.attribute(xs, np.zeros_like(xs), [r.target for r in expected])
    for a, r in zip(attributions, expected):
        assert_close(a, r.attributions)
    assert captum.trace_count == 1  # one shape-polymorphic function, short chunks included


@pytest.mark.parametrize("steps", [2, 3, 8, 50])
def test_rules_written_anew_equal_the_engines(steps):
    for ours, method in ((trapezoid, "riemann_trapezoid"), (gauss_legendre, "gausslegendre")):
        alphas, weights = ours(steps)
        expected = rule(method, steps)
        np.testing.assert_allclose(alphas, expected.alphas, atol=1e-12)
        np.testing.assert_allclose(weights, expected.weights, atol=1e-12)


def test_captum_style_logit_score_of_linear_model_is_exact():
    weights = np.random.default_rng(0).normal(size=(H * W * 3, CLASSES)).astype(np.float32)
    linear = lambda x: tf.reshape(x, [-1, H * W * 3]) @ weights  # noqa: E731
    xs = images(2, seed=2)
    a = CaptumStyleIG(
        linear, image_size=(H, W), method="gausslegendre", steps=2, score="logit"
    ).attribute(xs, np.zeros_like(xs), [1, 3])
    for x, got, t in zip(xs, a, [1, 3]):
        np.testing.assert_allclose(got, x * weights[:, t].reshape(H, W, 3), rtol=1e-5, atol=1e-6)
