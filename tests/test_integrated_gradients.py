"""The IG engine against ground truth: closed forms, completeness, batching invariance."""

import tracemalloc

import numpy as np
import pytest
import tensorflow as tf

from attribution.integrated_gradients import IntegratedGradients, Request
from attribution.quadrature import METHODS
from attribution.targets import Targets

H, W = 6, 5
RNG = np.random.default_rng(42)


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, H, W, 3), dtype=np.float32)


def requests(xs, baseline=None):
    return [
        Request(i, x, np.zeros_like(x) if baseline is None else baseline) for i, x in enumerate(xs)
    ]


# --- analytic models ------------------------------------------------------------------
A = RNG.normal(size=(H, W, 3)).astype(np.float32) * 0.1


def exp_model(x):
    """Class 0: exp(a . x); class 1: 0. IG_i = x_i a_i (e^s - 1) / s with s = a . x."""
    s = tf.reduce_sum(x * A, axis=[1, 2, 3])
    return tf.stack([tf.exp(s), tf.zeros_like(s)], axis=1)


def exp_model_ig(x):
    s = float((x.astype(np.float64) * A).sum())
    return x * A * (np.exp(s) - 1) / s


WEIGHTS = RNG.normal(size=(H * W * 3, 4)).astype(np.float32) * 0.3


def linear_logits(x):
    return tf.reshape(x, [-1, H * W * 3]) @ WEIGHTS


def softmax_linear_ig(x, target):
    """Exact IG of softmax(W x)[target] from a black baseline: the path integral is 1-D,
    evaluated in float64 with 200-point Gauss-Legendre (exact to machine precision)."""
    w = WEIGHTS.astype(np.float64)
    d = x.reshape(-1).astype(np.float64) @ w
    nodes, weights = np.polynomial.legendre.leggauss(200)
    alphas, weights = (nodes + 1) / 2, weights / 2
    z = alphas[:, None] * d[None]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dp_dz = p[:, [target]] * (np.eye(4)[target][None] - p)  # [alphas, classes]
    integral = weights @ dp_dz  # [classes]
    return (x.reshape(-1) * (w @ integral)).reshape(x.shape)


def small_cnn(activation, seed=0):
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential(
        [
            tf.keras.Input((H, W, 3)),
            tf.keras.layers.Conv2D(8, 3, padding="same", activation=activation),
            tf.keras.layers.Conv2D(8, 3, padding="same", activation=activation),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(5),
        ]
    )


def engine(fn, **kwargs):
    return IntegratedGradients(fn, image_size=(H, W), **kwargs)


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


# --- ground truth -----------------------------------------------------------------------
def test_gauss_legendre_matches_closed_form_of_exp_model():
    xs = images(3)
    results = engine(exp_model, score="logit", steps=8, tolerance=None).attribute(requests(xs), "0")
    for x, r in zip(xs, results):
        assert rel(r.attributions, exp_model_ig(x)) < 1e-5
        assert r.relative_completeness_error < 1e-5


@pytest.mark.parametrize("target", [0, 1, 2, 3])
def test_gauss_legendre_matches_closed_form_of_softmax_over_linear_map(target):
    xs = images(2, seed=1)
    results = engine(linear_logits, steps=16, tolerance=None).attribute(requests(xs), str(target))
    for x, r in zip(xs, results):
        assert r.target == target
        assert rel(r.attributions, softmax_linear_ig(x, target)) < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_every_rule_converges_to_the_closed_form(method):
    x = images(1, seed=2)
    exact = softmax_linear_ig(x[0], 0)
    errors = [
        rel(
            engine(linear_logits, method=method, steps=n, tolerance=None)
            .attribute(requests(x), "0")[0]
            .attributions,
            exact,
        )
        for n in (4, 64, 512)
    ]
    assert errors[2] < errors[0]
    assert errors[2] < 5e-3


def test_logit_score_of_linear_model_is_exact_with_one_point():
    x = images(1)
    r = engine(
        linear_logits, score="logit", method="riemann_left", steps=1, tolerance=None
    ).attribute(requests(x), "2")[0]
    np.testing.assert_allclose(
        r.attributions, x[0] * WEIGHTS[:, 2].reshape(H, W, 3), rtol=1e-5, atol=1e-7
    )


def test_probability_model_is_not_softmaxed_twice():
    xs = images(2)
    probabilities = lambda x: tf.nn.softmax(linear_logits(x))
    a = engine(linear_logits, steps=8, tolerance=None).attribute(requests(xs))
    b = engine(probabilities, model_output="probabilities", steps=8, tolerance=None).attribute(
        requests(xs)
    )
    for ra, rb in zip(a, b):
        assert ra.target == rb.target and np.isclose(ra.target_score, rb.target_score)
        np.testing.assert_allclose(ra.attributions, rb.attributions, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="^score 'logit' needs a model that outputs logits"):
        engine(probabilities, model_output="probabilities", score="logit")


# --- completeness on CNNs -------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "softplus", "tanh"])
def test_completeness_within_tolerance_on_small_cnns(activation):
    model = small_cnn(activation)
    fn = lambda x: model(x, training=False)
    results = engine(fn, steps=8, tolerance=0.005, max_steps=512).attribute(
        requests(images(4, seed=3)), "topk:2"
    )
    assert len(results) == 8
    for r in results:
        assert r.converged, r
        assert r.relative_completeness_error <= 0.005
        assert np.isclose(
            r.completeness_error, abs(r.attribution_sum - (r.target_score - r.baseline_score))
        )
        assert np.isclose(r.attributions.sum(), r.attribution_sum, rtol=1e-4)


def test_refinement_reuses_nested_points_and_equals_a_direct_run():
    model = small_cnn("relu", seed=1)
    fn = lambda x: model(x, training=False)
    xs = images(2, seed=4)
    refined = engine(
        fn, method="riemann_trapezoid", steps=3, tolerance=1e-9, max_steps=17, atol=0
    ).attribute(requests(xs))
    direct = engine(fn, method="riemann_trapezoid", steps=17, tolerance=None).attribute(
        requests(xs)
    )
    for r, d in zip(refined, direct):
        assert r.steps == 17 and r.gradient_evaluations == 17  # 3 -> 5 -> 9 -> 17, nothing twice
        assert not r.converged  # tolerance 1e-9 is out of reach: marked, not hidden
        np.testing.assert_allclose(r.attributions, d.attributions, rtol=1e-4, atol=1e-7)
        assert len(r.path_alphas) == 17 and r.path_alphas[0] == 0 and r.path_alphas[-1] == 1


def test_gauss_legendre_refinement_counts_every_evaluation():
    r = engine(linear_logits, steps=2, tolerance=1e-12, max_steps=8, atol=0).attribute(
        requests(images(1))
    )[0]
    assert r.steps == 8 and r.gradient_evaluations == 2 + 4 + 8


def test_path_scores_are_the_target_score_along_the_path():
    xs = images(1)
    ig = engine(exp_model, score="logit", steps=6, tolerance=None)
    r = ig.attribute(requests(xs), "0")[0]
    expected = np.exp(r.path_alphas.astype(np.float64) * (xs[0] * A).sum())
    np.testing.assert_allclose(r.path_scores, expected, rtol=1e-5)
    assert r.path_scores[0] == pytest.approx(r.baseline_score)
    assert r.path_scores[-1] == pytest.approx(r.target_score)


# --- batching ----------------------------------------------------------------------------
class CountingModel:
    """A CNN that counts its calls and rows inside the graph (not at trace time)."""

    def __init__(self):
        self.model = small_cnn("relu", seed=2)
        self.calls = tf.Variable(0, dtype=tf.int64)
        self.rows = tf.Variable(0, dtype=tf.int64)
        self.traces = 0

    def __call__(self, x):
        self.traces += 1
        self.calls.assign_add(1)
        self.rows.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return self.model(x, training=False)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_rows_are_packed_across_images_and_only_xla_pads_the_last_call(jit_compile):
    model = CountingModel()
    ig = engine(model, steps=8, tolerance=None, batch_size=32, jit_compile=jit_compile)
    xs = images(10)
    results = ig.attribute(requests(xs))
    # 11 forward rows (10 images + their one distinct baseline, black) = 1 call;
    # 10 x 8 gradient rows = 3 calls of 32, 32, 16 rows (XLA: padded to 32)
    assert int(model.calls.numpy()) == 1 + 3
    assert int(model.rows.numpy()) == (4 * 32 if jit_compile else 11 + 80)
    assert [r.gradient_evaluations for r in results] == [8] * 10
    # every image's baseline score is the black image's, scored once
    black = ig.scores(np.zeros((1, *xs.shape[1:]), np.float32))[0]
    for r in results:
        assert r.baseline_score == pytest.approx(float(black[r.target]), rel=1e-6, abs=1e-9)


def test_distinct_baselines_are_each_scored():
    model = CountingModel()
    ig = engine(model, steps=4, tolerance=None, batch_size=64)
    xs = images(4)
    noise = np.random.default_rng(9).random(xs.shape, dtype=np.float32)
    baselines = [np.zeros_like(xs[0]), noise[1], np.zeros_like(xs[0]), noise[3]]
    results = ig.attribute([Request(i, x, b) for i, (x, b) in enumerate(zip(xs, baselines))])
    assert int(model.rows.numpy()) == (4 + 3) + 4 * 4  # 3 distinct baselines
    scores = ig.scores(np.stack(baselines))
    for r, s in zip(results, scores):
        assert r.baseline_score == pytest.approx(float(s[r.target]), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_attributions_do_not_depend_on_call_size_or_the_mix_of_images(batch_size):
    model = small_cnn("softplus", seed=5)
    fn = lambda x: model(x, training=False)
    xs = images(6, seed=6)
    reference = engine(fn, steps=8, tolerance=None, batch_size=7).attribute(requests(xs))
    together = engine(fn, steps=8, tolerance=None, batch_size=batch_size).attribute(
        requests(xs[::-1])
    )[::-1]
    alone = [
        engine(fn, steps=8, tolerance=None, batch_size=batch_size).attribute(
            [Request(0, x, np.zeros_like(x))]
        )[0]
        for x in xs
    ]
    for ref, a, b in zip(reference, together, alone):
        for other in (a, b):
            assert other.target == ref.target
            np.testing.assert_allclose(other.attributions, ref.attributions, rtol=1e-4, atol=1e-7)


def test_no_retracing_after_warm_up_across_images_targets_and_short_batches():
    model = CountingModel()
    ig = engine(model, steps=5, tolerance=0.01, batch_size=16)
    ig.attribute(requests(images(3)))
    warm = ig.trace_count, model.traces
    assert warm[0] == 2  # one forward and one gradient function
    for n, target in [(1, "predicted"), (7, "3"), (2, "topk:3"), (5, "0")]:
        ig.attribute(requests(images(n, seed=n)), target)
    assert (ig.trace_count, model.traces) == warm


def test_out_of_memory_halves_the_call_size_and_gives_the_same_result():
    model = small_cnn("relu", seed=3)

    def fragile(x):
        # a real allocation failure (a 2^40-float tensor) whenever a call has more than 4
        # rows: the engine's functions take any number of rows, so it is decided at run time
        rows = tf.shape(x)[0]
        return tf.cond(
            rows > 4,
            lambda: model(x, training=False) + tf.reduce_max(tf.random.uniform([2**40])),
            lambda: model(x, training=False),
        )

    xs = images(3)
    reference = engine(
        lambda x: model(x, training=False), steps=6, tolerance=None, batch_size=4
    ).attribute(requests(xs))
    ig = engine(fragile, steps=6, tolerance=None, batch_size=32)
    results = ig.attribute(requests(xs))
    assert ig.batch_size == 4
    assert ig.trace_count == 2  # a smaller call size needs no new trace
    for r, ref in zip(results, reference):
        np.testing.assert_allclose(r.attributions, ref.attributions, rtol=1e-5, atol=1e-8)


def test_memory_is_flat_in_steps():
    x = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    fn = lambda t: tf.stack(
        [tf.reduce_sum(tf.sin(t), axis=[1, 2, 3]), tf.zeros(tf.shape(t)[:1])], axis=1
    )

    def peak_bytes(steps):
        ig = IntegratedGradients(
            fn,
            image_size=(64, 64),
            score="logit",
            method="riemann_trapezoid",
            steps=steps,
            tolerance=None,
        )
        ig.attribute(requests(x), "0")  # warm-up: tracing allocates too
        tracemalloc.start()
        r = ig.attribute(requests(x), "0")[0]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert r.gradient_evaluations == steps and r.relative_completeness_error < 1e-5
        return peak

    short, long = peak_bytes(128), peak_bytes(2000)
    # what grows with the steps is the path's score curve (a few Python floats a step,
    # about 0.3 MB at 2000), never the gradients: 2000 of them would be 2000 images
    assert long - short < 10 * x.nbytes
    assert long < 2000 * x.nbytes / 10  # holding the path would need 2000 images


# --- targets and validation --------------------------------------------------------------
def test_targets():
    scores = np.array([0.1, 0.5, 0.2, 0.2])
    assert Targets.parse("predicted").select(scores) == [1]
    assert Targets.parse("2").select(scores) == [2]
    assert Targets.parse("topk:3").select(scores) == [1, 2, 3]
    assert Targets.parse("topk:9").select(scores) == [1, 2, 3, 0]
    for bad in ("top3", "topk:0", "-1", "cat"):
        with pytest.raises(ValueError, match="--target"):
            Targets.parse(bad)
    with pytest.raises(ValueError, match="out of range"):
        Targets.parse("7").select(scores)


def test_topk_results_come_in_rank_order_per_image():
    results = engine(linear_logits, steps=4, tolerance=None).attribute(
        requests(images(3)), "topk:3"
    )
    assert [r.key for r in results] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i in range(3):
        scores = [r.target_score for r in results[3 * i : 3 * i + 3]]
        assert scores == sorted(scores, reverse=True)
        assert results[3 * i].target == results[3 * i].predicted_class


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"score": "margin"}, "^score must"),
        ({"method": "simpson"}, "unknown method"),
        ({"steps": 0}, "^steps must"),
        ({"tolerance": -1}, "^tolerance must"),
        ({"steps": 64, "max_steps": 8}, r"^max_steps \(8\) must be >= steps \(64\)"),
        ({"batch_size": 0}, "^batch_size must"),
        ({"model_output": "scores"}, "model_output"),
    ],
)
def test_bad_settings_are_refused_with_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        engine(linear_logits, **kwargs)


def test_engine_for_builds_the_engine_from_the_model_and_the_settings(tiny_model):
    """The one factory of the job, the RunInference handler and the benchmarks: the loaded
    model gives the function, input size, output kind and channels; a settings object gives
    every engine setting, a mapping some (the others keep the defaults); overrides win. Its
    engine computes what the constructor's does, bit for bit."""
    from types import SimpleNamespace

    from attribution.config import DEFAULTS
    from attribution.integrated_gradients import ENGINE_SETTINGS, engine_for
    from attribution.models import load_model

    model = load_model(tiny_model)
    values = {
        "score": "logit",
        "method": "riemann_trapezoid",
        "steps": 5,
        "tolerance": 1e-4,
        "max_steps": 9,
        "batch_size": 3,
        "jit_compile": False,
    }
    assert set(values) == set(ENGINE_SETTINGS)
    built = engine_for(model, SimpleNamespace(**values))
    assert (built.fn, built.image_size, built.channels) == (
        model.fn,
        model.image_size,
        model.channels,
    )
    assert (built.method, built.steps, built.tolerance, built.max_steps, built.batch_size) == (
        "riemann_trapezoid",
        5,
        1e-4,
        9,
        3,
    )
    x = np.random.default_rng(0).random((*model.image_size, 3)).astype(np.float32)
    request = [Request(0, x, np.zeros_like(x))]
    direct = IntegratedGradients(model.fn, image_size=model.image_size, **values)
    (a,), (b,) = built.attribute(request), direct.attribute(request)
    assert a.steps == b.steps and a.steps > 5  # refined: the tolerance reached the engine
    np.testing.assert_array_equal(a.attributions, b.attributions)
    partial = engine_for(model, {"steps": 8, "score": "logit"}, batch_size=2)
    assert (partial.steps, partial.batch_size, partial.method, partial.tolerance) == (
        8,
        2,
        DEFAULTS.method,
        DEFAULTS.tolerance,
    )
    with pytest.raises(TypeError):
        engine_for(model, {"steps": 8}, nonsense=1)


def test_wrong_image_shape_is_refused():
    with pytest.raises(ValueError, match="resize it first"):
        engine(linear_logits).attribute([Request(0, np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))])
