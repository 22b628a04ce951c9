"""The randomization sanity check: IG on the demo model falls apart as the model is
randomized, an edge detector (which never looks at the model) does not and fails the check;
`python -m pipeline.sanity` runs the stages on Beam and writes its outputs."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from conftest import random_pngs

from attribution import randomization
from attribution.integrated_gradients import IntegratedGradients, Request
from attribution.models import load_model
from demo import make_arrays
from pipeline import sanity


@pytest.fixture(scope="module")
def demo_images():
    images, _, _ = make_arrays("heldout", 8, seed=1)
    return images


def ig_explainer(model, images):
    engine = IntegratedGradients(
        model.fn,
        image_size=model.image_size,
        method="riemann_trapezoid",
        steps=17,
        tolerance=None,
        batch_size=32,
    )
    requests = [Request(i, x, np.zeros_like(x)) for i, x in enumerate(images)]
    return lambda: {r.key: r.attributions for r in engine.attribute(requests)}


def edge_explainer(images):
    """A broken explainer: image gradients (an edge detector), blind to the model."""

    def explain():
        out = {}
        for i, x in enumerate(images):
            gy, gx = np.gradient(x.mean(axis=-1))
            out[i] = np.repeat(np.hypot(gx, gy)[..., None], 3, axis=-1)
        return out

    return explain


def test_ig_on_the_demo_model_passes_and_an_edge_detector_fails(demo_model, demo_images):
    model = load_model(str(demo_model))
    before = [v.numpy().copy() for v in model.variables]
    maps = randomization.cascade(model.variables, ig_explainer(model, demo_images), seed=0)
    assert all(np.array_equal(v.numpy(), b) for v, b in zip(model.variables, before))  # restored
    rows = randomization.compare(maps)
    assert len(rows) == 8 * len(randomization.STAGES)
    medians = randomization.medians(rows)
    # Measured (32 images): top_layer 0.75, top_25 0.64, top_50 0.66, top_100 0.34. The maps
    # keep the structure of the first conv layer until it is randomized too (all but conv0
    # random: 0.62), so on this model IG passes late, not by top_50 as in the paper.
    assert medians["top_100"]["rank_correlation"] < 0.5
    assert medians["top_100"]["rank_correlation"] < medians["top_layer"]["rank_correlation"]
    passed, text = randomization.verdict(rows)
    assert passed and "PASS" in text and "FAIL" not in text

    edges = randomization.cascade(model.variables, edge_explainer(demo_images), seed=0)
    rows = randomization.compare(edges)
    assert randomization.medians(rows)["top_50"]["rank_correlation"] > 0.99
    passed, text = randomization.verdict(rows)
    assert not passed and text.startswith("FAIL") and "barely change" in text


def test_stages_cascade_from_the_top_in_layer_order(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(5),
            keras.layers.Dense(3, name="top"),
        ]
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    for handle in (path, _export(model, tmp_path / "sm")):
        variables = load_model(handle).variables
        original = [v.numpy().copy() for v in variables]
        names = [str(getattr(v, "path", None) or v.name).split(":")[0] for v in variables]
        assert [n.rsplit("/", 2)[-2:] for n in names[-2:]] == [
            ["top", "kernel"],
            ["top", "bias"],
        ]  # top last
        n = len(variables)
        assert randomization.stage_indices(variables, "top_layer") == [n - 2, n - 1]
        assert randomization.stage_indices(variables, "top_25") == list(range(n - 3, n))
        assert randomization.stage_indices(variables, "top_50") == list(range(n - 5, n))
        assert randomization.stage_indices(variables, "top_100") == list(range(n))
    randomization.randomize(variables, "top_layer", seed=3)
    changed = [not np.array_equal(v.numpy(), o) for v, o in zip(variables, original)]
    # the top kernel is redrawn; its bias is all zeros (std 0), so it stays zero, as an
    # initializer would leave it; nothing below the top layer moves
    assert changed[-2:] == [True, False] and not any(changed[:-2])
    variables, again = load_model(handle).variables, load_model(handle).variables
    variances = [v for v in variables if "moving_variance" in str(getattr(v, "path", v.name))]
    randomization.randomize(variables, "top_100", seed=3)
    assert variances and all(np.all(v.numpy() >= 0) for v in variances)
    randomization.randomize(again, "top_100", seed=3)  # another worker draws the same weights
    assert all(np.array_equal(v.numpy(), w.numpy()) for v, w in zip(variables, again))


def _export(model, path):
    model.export(str(path), verbose=False)
    return str(path)


def test_python_m_pipeline_sanity_writes_parquet_and_html(tiny_model, tmp_path, capsys):
    folder = random_pngs(tmp_path / "images", 5)
    out = tmp_path / "sanity"
    code = sanity.main(
        [
            "--model",
            tiny_model,
            "--input_pattern",
            f"{folder}/*.png",
            "--output_dir",
            str(out),
            "--sample",
            "3",
            "--steps",
            "8",
            "--tolerance",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    assert code in (0, 1) and ("PASS" in printed or "FAIL" in printed)
    table = pq.read_table(out / "sanity.parquet").to_pylist()
    assert len(table) == 3 * len(randomization.STAGES)
    assert {r["stage"] for r in table} == set(randomization.STAGES)
    assert {r["image"] for r in table} <= {str(p) for p in folder.glob("*.png")}
    assert all(-1 <= r["rank_correlation"] <= 1 for r in table)
    html = (out / "sanity.html").read_text()
    assert "Randomization sanity check" in html and "top_50" in html
    assert ("PASS" if code == 0 else "FAIL") in html
    assert html.count("data:image/png;base64,") == 3 * (1 + len(randomization.STAGES))  # masks
    # the randomized runs really ran another model: their maps differ from the original
    top = [r["rank_correlation"] for r in table if r["stage"] == "top_100"]
    assert max(top) < 0.999


def test_sanity_refuses_options_it_sets(tiny_model, tmp_path, capsys):
    code = sanity.main(
        [
            "--model",
            tiny_model,
            "--input_pattern",
            "x/*",
            "--output_dir",
            str(tmp_path),
            "--randomize",
            "top_50",
        ]
    )
    assert code == 2 and "--randomize" in capsys.readouterr().err
    tf.keras.backend.clear_session()


@pytest.mark.parametrize(
    "trail, word, passed",
    [
        ((0.8, 0.6, 0.3, 0.1), "PASS:", True),
        ((0.8, 0.7, 0.6, 0.3), "LATE PASS:", True),
        ((0.99, 0.98, 0.97, 0.9), "FAIL:", False),
    ],
)
def test_verdict_levels(trail, word, passed):
    rows = [
        {"image": str(i), "stage": stage, "rank_correlation": value + 0.01 * i, "ssim": 0.5}
        for stage, value in zip(randomization.STAGES, trail)
        for i in range(3)
    ]
    ok, text = randomization.verdict(rows)
    assert ok is passed and text.startswith(word)


def test_a_rerun_into_the_same_folder_rewrites_it(tiny_model, tmp_path):
    folder = random_pngs(tmp_path / "images", 2)
    argv = [
        "--model",
        tiny_model,
        "--input_pattern",
        f"{folder}/*.png",
        "--output_dir",
        str(tmp_path / "sanity"),
        "--steps",
        "4",
        "--tolerance",
        "0",
    ]
    assert sanity.main(argv) in (0, 1)
    first = pq.read_table(tmp_path / "sanity" / "sanity.parquet").to_pylist()
    assert sanity.main(argv) == 2  # an earlier check's outputs: replaced only on request
    assert sanity.main([*argv, "--overwrite"]) in (0, 1)
    assert pq.read_table(tmp_path / "sanity" / "sanity.parquet").to_pylist() == first
