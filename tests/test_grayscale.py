"""1-channel (grayscale) models: gray inputs, [H, W, 1] attributions, masks, overlays, regions."""

import io
import json
import os

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from job_argv import job_argv
from PIL import Image

from attribution import masks
from attribution.baselines import BASELINES, make_baseline
from attribution.images import model_input, resize_with_pad, to_grayscale
from attribution.integrated_gradients import IntegratedGradients, Request
from attribution.models import load_model
from pipeline import run as job

SIZE = 16


def test_grayscale_uses_tf_rgb_to_grayscale_weights():
    rgb = np.random.default_rng(0).random((7, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(
        to_grayscale(rgb), tf.image.rgb_to_grayscale(rgb).numpy(), rtol=1e-6, atol=1e-7
    )
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\] RGB"):
        to_grayscale(rgb[..., :1])


def test_model_input_converts_after_resize_with_pad_so_padding_stays_black():
    rgb = np.random.default_rng(1).random((10, 30, 3)).astype(np.float32) * 0.5 + 0.5
    gray = model_input(rgb, (SIZE, SIZE), channels=1)
    expected = tf.image.rgb_to_grayscale(tf.image.resize_with_pad(rgb, SIZE, SIZE)).numpy()
    assert gray.shape == (SIZE, SIZE, 1)
    np.testing.assert_allclose(gray, expected, rtol=1e-5, atol=1e-6)
    assert gray[0].max() == 0 and gray[SIZE // 2].min() > 0  # padding rows black, content not
    np.testing.assert_array_equal(
        model_input(rgb, (SIZE, SIZE)), resize_with_pad(rgb, (SIZE, SIZE))
    )
    with pytest.raises(ValueError, match="channels must be one of"):
        model_input(rgb, (SIZE, SIZE), channels=4)


@pytest.mark.parametrize("kind", BASELINES)
def test_baselines_keep_the_gray_shape(kind):
    gray = np.random.default_rng(2).random((SIZE, SIZE, 1)).astype(np.float32)
    baseline = make_baseline(kind, gray, key="k")
    assert baseline.shape == gray.shape and baseline.dtype == np.float32
    assert 0 <= baseline.min() and baseline.max() <= 1


def test_gray_overlay_is_the_mask_over_the_gray_image_in_three_equal_channels():
    rng = np.random.default_rng(3)
    gray = rng.random((SIZE, SIZE, 1))
    attributions = rng.normal(size=(SIZE, SIZE, 1))
    ours = masks.overlay_png(gray, attributions)
    assert ours == masks.overlay_png(np.repeat(gray, 3, axis=-1), attributions)
    no_mask = np.asarray(Image.open(io.BytesIO(masks.overlay_png(gray, attributions, alpha=0))))
    assert no_mask.shape == (SIZE, SIZE, 3)
    assert (no_mask[..., 0] == no_mask[..., 1]).all() and (no_mask[..., 1] == no_mask[..., 2]).all()
    with pytest.raises(ValueError, match=r"\[H, W, 3\] or \[H, W, 1\]"):
        masks.overlay_png(np.zeros((SIZE, SIZE, 2)), attributions)


def _gray_model(path):
    keras.utils.set_random_seed(11)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    model.save(path)
    return model


def test_engine_attributes_one_channel_images_with_completeness(tmp_path):
    _gray_model(tmp_path / "gray.keras")
    model = load_model(str(tmp_path / "gray.keras"))
    assert model.channels == 1
    ig = IntegratedGradients(
        model.fn, image_size=model.image_size, tolerance=0.005, channels=model.channels
    )
    image = np.random.default_rng(4).random((SIZE, SIZE, 1)).astype(np.float32)
    (result,) = ig.attribute([Request(0, image, np.zeros_like(image))])
    assert result.attributions.shape == (SIZE, SIZE, 1)
    assert result.converged and result.relative_completeness_error <= 0.005
    with pytest.raises(ValueError, match=r"the model needs \(16, 16, 1\)"):
        ig.attribute(
            [
                Request(
                    0, np.zeros((SIZE, SIZE, 3), np.float32), np.zeros((SIZE, SIZE, 3), np.float32)
                )
            ]
        )


def test_gray_model_through_the_pipeline(tmp_path, mixed_folder):
    folder, names, bad = mixed_folder
    model = _gray_model(tmp_path / "gray.keras")
    regions = tmp_path / "regions.csv"
    regions.write_text("image,region,x0,y0,x1,y1\nrgb.png,left,0,0,16,24\n")
    out = tmp_path / "out"
    assert (
        job.main(
            [
                *job_argv(f"{folder}/*", str(out), str(tmp_path / "gray.keras")),
                "--write_raw",
                "--regions",
                str(regions),
                "--baseline",
                "blur",
                "--tolerance",
                "0.01",
                "--progress_interval",
                "0",
                "--no_report",
            ]
        )
        == 0
    )
    rows = pq.read_table(out / "summaries").to_pylist()
    assert sorted(os.path.basename(r["image_uri"]) for r in rows) == sorted(names - bad)
    for row in rows:
        raw = np.load(row["raw_uri"])
        assert raw.shape == (SIZE, SIZE, 1)
        assert row["converged"] and row["relative_completeness_error"] <= 0.01
        mass = 1 if np.abs(raw).sum() > 0 else 0  # blur of a flat image is the image itself
        assert len(row["grid"]) == 14 * 14 and np.isclose(sum(row["grid"]), mass, atol=1e-4)
        for key in ("mask_uri", "overlay_uri"):
            with Image.open(row[key]) as png:
                assert (png.size, png.mode) == ((SIZE, SIZE), "RGB")
    by_name = {os.path.basename(r["image_uri"]): r for r in rows}
    assert by_name["rgb.png"]["regions"][0]["name"] == "left"
    # the scores are the model's on the gray image, made with TensorFlow alone
    with Image.open(folder / "rgb.png") as image:
        rgb = np.asarray(image.convert("RGB"), np.float32) / 255
    gray = tf.image.rgb_to_grayscale(tf.image.resize_with_pad(rgb, SIZE, SIZE))
    probabilities = tf.nn.softmax(model(gray[None])).numpy()[0]
    row = by_name["rgb.png"]
    np.testing.assert_allclose(
        row["target_score"], probabilities[row["target_class"]], rtol=1e-4, atol=1e-6
    )
    with open(out / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["model"]["channels"] == 1


def test_four_channel_model_exits_3_with_the_reason(tmp_path, capsys):
    inputs = keras.Input((SIZE, SIZE, 4))
    path = tmp_path / "rgba.keras"
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(path)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "x.png")
    assert (
        job.main(
            [
                *job_argv(f"{folder}/*", str(tmp_path / "out"), str(path)),
            ]
        )
        == 3
    )
    err = capsys.readouterr().err
    assert "takes 4-channel input" in err and "1-channel (grayscale)" in err
    assert not (tmp_path / "out").exists()


def test_gray_rerun_with_reuse_from_reuses_and_computes_gray(tmp_path):
    _gray_model(tmp_path / "gray.keras")
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    common = [
        "--model",
        str(tmp_path / "gray.keras"),
        "--input_pattern",
        f"{folder}/*",
        "--write_raw",
        "--progress_interval",
        "0",
        "--no_report",
    ]
    assert job.main([*common, "--output_dir", str(tmp_path / "first")]) == 0
    Image.fromarray((rng.random((9, 30, 3)) * 255).astype(np.uint8)).save(folder / "b.png")
    assert (
        job.main(
            [
                *common,
                "--output_dir",
                str(tmp_path / "second"),
                "--reuse_from",
                str(tmp_path / "first"),
            ]
        )
        == 0
    )
    with open(tmp_path / "second" / "manifest.json") as f:
        counts = json.load(f)["counts"]
    assert (counts["reused"], counts["computed"]) == (1, 1)
    for row in pq.read_table(tmp_path / "second" / "summaries").to_pylist():
        assert np.load(row["raw_uri"]).shape == (SIZE, SIZE, 1)
