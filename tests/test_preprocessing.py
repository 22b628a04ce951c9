"""--preprocess: Keras Applications' input modes inside the explained function."""

import json
import os

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from job_argv import job_argv
from keras.applications import imagenet_utils
from PIL import Image

from attribution.models import ModelLoadError, load_model
from attribution.preprocessing import PREPROCESS, preprocessor
from pipeline import run as job
from transforms.settings import Settings

SIZE = 12
TOLERANCE = 0.005


def keras_preprocessed(pixels: np.ndarray, mode: str) -> np.ndarray:
    """What a model trained for ``mode`` is fed, from [0, 1] pixels, by Keras' own code."""
    x = np.asarray(pixels, np.float32) * 255.0
    if mode == "none":
        return x / 255.0
    if mode == "scale255":  # EfficientNet & co.: their preprocess_input passes 0-255 through
        return keras.applications.efficientnet.preprocess_input(x)
    return imagenet_utils.preprocess_input(x.copy(), mode=mode)


@pytest.mark.parametrize("mode", PREPROCESS)
def test_each_mode_is_keras_preprocess_input_on_0_255_pixels(mode):
    pixels = np.random.default_rng(1).random((2, 5, 4, 3)).astype(np.float32)
    ours = preprocessor(mode)(tf.constant(pixels)).numpy()
    np.testing.assert_allclose(ours, keras_preprocessed(pixels, mode), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "torch"])
def test_per_rgb_channel_modes_are_refused_for_grayscale_models(tmp_path, mode):
    inputs = keras.Input((SIZE, SIZE, 1))
    path = tmp_path / "gray.keras"
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(path)
    with pytest.raises(
        ModelLoadError,
        match=f"--preprocess {mode} subtracts ImageNet means per "
        "R, G, B channel.*use --preprocess none",
    ):
        load_model(str(path), preprocess=mode)
    for ok in ("none", "scale255", "tf"):
        assert load_model(str(path), preprocess=ok).channels == 1


def test_settings_hash_records_preprocess_and_keeps_old_hashes():
    base = {
        "model": "m",
        "output_dir": "o",
        "image_size": (8, 8),
        "num_classes": 2,
        "model_fingerprint": "f",
    }
    hashes = {mode: Settings(**base, preprocess=mode).settings_hash for mode in PREPROCESS}
    assert len(set(hashes.values())) == len(PREPROCESS)
    assert hashes["none"] == Settings(**base).settings_hash


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()[::16, ::16]).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.coffee()[::20, ::20]).save(folder / "coffee.png")
    return folder


def _model_for(mode: str, path) -> keras.Model:
    """A small CNN whose first layer expects ``mode``'s input range: its weights are scaled so
    activations are O(1) there, so a wrong range gives clearly different scores."""
    keras.utils.set_random_seed(7)
    scale = {"none": 1.0, "scale255": 1 / 255, "tf": 0.5, "caffe": 1 / 128, "torch": 0.25}[mode]
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(
        6, 3, activation="tanh", kernel_initializer=keras.initializers.RandomNormal(0, scale)
    )(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    model.save(path)
    return model


def _model_inputs(folder) -> dict[str, np.ndarray]:
    """The pipeline's model inputs, made with TensorFlow alone."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with Image.open(folder / name) as image:
            rgb = np.asarray(image.convert("RGB"), np.float32) / 255
        out[name] = tf.image.resize_with_pad(rgb, SIZE, SIZE).numpy()
    return out


@pytest.mark.parametrize("mode", PREPROCESS)
def test_pipeline_scores_equal_the_model_on_keras_preprocessed_inputs(mode, photos, tmp_path):
    model = _model_for(mode, tmp_path / f"{mode}.keras")
    out = tmp_path / "out"
    assert (
        job.main(
            [
                *job_argv(f"{photos}/*", str(out), str(tmp_path / f"{mode}.keras")),
                "--preprocess",
                mode,
                "--score",
                "logit",
                "--target",
                "topk:2",
                "--tolerance",
                str(TOLERANCE),
                "--write_raw",
                "--progress_interval",
                "0",
                "--no_report",
            ]
        )
        == 0
    )
    rows = pq.read_table(out / "summaries").to_pylist()
    inputs = _model_inputs(photos)
    assert sorted({os.path.basename(r["image_uri"]) for r in rows}) == sorted(inputs)
    black = model(keras_preprocessed(np.zeros((1, SIZE, SIZE, 3)), mode)).numpy()[0]
    for row in rows:
        pixels = inputs[os.path.basename(row["image_uri"])]
        logits = model(keras_preprocessed(pixels[None], mode)).numpy()[0]
        assert row["predicted_class"] == int(np.argmax(logits))
        np.testing.assert_allclose(
            row["target_score"], logits[row["target_class"]], rtol=1e-4, atol=1e-5
        )
        # the baseline is black pixels, whatever the model is fed for them
        np.testing.assert_allclose(
            row["baseline_score"], black[row["target_class"]], rtol=1e-4, atol=1e-5
        )
        # completeness in pixel space: the attributions over [0, 1] pixels add up
        raw = np.load(row["raw_uri"])
        assert raw.shape == (SIZE, SIZE, 3)
        delta = row["target_score"] - row["baseline_score"]
        assert abs(raw.sum(dtype=np.float64) - delta) <= TOLERANCE * abs(delta) + 1e-6, row
        assert row["converged"]
    with open(out / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["config"]["preprocess"] == mode
    assert manifest["model"]["preprocess"] == mode
    assert rows[0]["settings_hash"] == manifest["settings_hash"]
