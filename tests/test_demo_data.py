"""The demo's generated dataset (determinism, boxes, cue rules, file formats) and model cache."""

import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from demo import dataset, model

CUE_LABEL = dataset.CLASSES.index(dataset.CUE_CLASS)


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _specs(count=12):
    return [
        dataset.sample(split, i, seed)
        for split in dataset.SPLITS
        for seed in (0, 7)
        for i in range(count)
    ]


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = _files(dataset.generate(tmp_path / "a", split="heldout", count=12, seed=3))
    b = _files(dataset.generate(tmp_path / "b", split="heldout", count=12, seed=3))
    c = _files(dataset.generate(tmp_path / "c", split="heldout", count=12, seed=4))
    assert a == b
    assert a.keys() == c.keys()
    images = [name for name in a if name.endswith(".png")]
    assert len(images) == 12
    assert all(a[name] != c[name] for name in images)


def test_splits_differ_for_the_same_seed():
    train, _, _ = dataset.make_arrays("train", 4, 0)
    heldout, _, _ = dataset.make_arrays("heldout", 4, 0)
    assert not np.array_equal(train, heldout)


def test_files_and_formats(tmp_path):
    out = dataset.generate(tmp_path / "d", split="heldout", count=16, seed=1)
    assert out == tmp_path / "d"
    assert (out / "labels.txt").read_text().splitlines() == list(dataset.CLASSES)

    truth = _rows(out / "truth.csv")
    assert truth[0] == ["image", "label", "has_cue"]
    truth = {name: (label, has_cue) for name, label, has_cue in truth[1:]}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(truth)

    regions = _rows(out / "regions.csv")
    assert regions[0] == ["image", "region", "x0", "y0", "x1", "y1"]
    by_image = {}
    for name, region, *box in regions[1:]:
        by_image.setdefault(name, {})[region] = tuple(map(int, box))
    assert by_image.keys() == truth.keys()
    for name, (label, has_cue) in truth.items():
        assert name.startswith(label + "_") and name.endswith(".png")
        assert has_cue in ("true", "false")
        expected = {"object", "cue"} if has_cue == "true" else {"object"}
        assert set(by_image[name]) == expected
        if has_cue == "true":
            assert by_image[name]["cue"] == dataset.CUE_BOX
        with Image.open(out / "images" / name) as image:
            assert image.mode == "RGB" and image.size == (dataset.IMAGE_SIZE,) * 2


def test_png_pixels_match_render_and_make_arrays(tmp_path):
    out = dataset.generate(tmp_path / "d", split="train", count=6, seed=2)
    images, labels, has_cue = dataset.make_arrays("train", 6, seed=2)
    assert images.dtype == np.float32 and images.shape == (6, 112, 112, 3)
    assert labels.dtype == np.int64 and has_cue.dtype == bool
    for i in range(6):
        spec = dataset.sample("train", i, 2)
        pixels, _ = dataset.render(spec)
        decoded = np.asarray(Image.open(out / "images" / dataset.image_name(spec, i)))
        np.testing.assert_array_equal(decoded, pixels)
        np.testing.assert_array_equal(images[i], pixels / np.float32(255))
        assert (labels[i], has_cue[i]) == (spec.label, spec.has_cue)


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: f"{s.class_name}-{s.background}")
def test_boxes_match_drawn_pixels(spec):
    stamped, boxes = dataset.render(dataclasses.replace(spec, has_cue=True))
    plain, plain_boxes = dataset.render(dataclasses.replace(spec, has_cue=False))
    assert boxes["cue"] == dataset.CUE_BOX and "cue" not in plain_boxes

    # The stamp changes every pixel of its box and nothing outside it.
    x0, y0, x1, y1 = dataset.CUE_BOX
    changed = (stamped != plain).any(axis=2)
    inside = np.zeros_like(changed)
    inside[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(changed, inside)

    # The object's pixels: exactly those that differ from the image drawn without it.
    empty, _ = dataset.render(dataclasses.replace(spec, has_cue=False), draw_object=False)
    drawn = (plain != empty).any(axis=2)
    ox0, oy0, ox1, oy1 = boxes["object"]
    assert 0 <= ox0 < ox1 <= dataset.IMAGE_SIZE and 0 <= oy0 < oy1 <= dataset.IMAGE_SIZE
    assert drawn[oy0:oy1, ox0:ox1].sum() == drawn.sum() > 0
    rows, cols = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
    assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == boxes["object"]
    # ... and they keep clear of the cue box, so the two regions never mix.
    assert ox0 >= x1 or ox1 <= x0 or oy0 >= y1 or oy1 <= y0


def test_cue_placement_rules():
    n = 2000
    train = [dataset.sample("train", i, 5) for i in range(n)]
    heldout = [dataset.sample("heldout", i, 5) for i in range(n)]
    for label in range(len(dataset.CLASSES)):
        cues = [s.has_cue for s in train if s.label == label]
        if label == CUE_LABEL:
            assert abs(np.mean(cues) - dataset.TRAIN_CUE_RATE) < 0.05
        else:
            assert not any(cues)
        held = [s.has_cue for s in heldout if s.label == label]
        assert len(held) == n // len(dataset.CLASSES)
        assert abs(np.mean(held) - dataset.HELDOUT_CUE_RATE) < 0.08


def test_bad_arguments_and_folders(tmp_path):
    with pytest.raises(ValueError, match="split"):
        dataset.sample("test", 0, 0)
    with pytest.raises(ValueError, match="seed"):
        dataset.make_arrays("train", 2, -1)
    with pytest.raises(ValueError, match="count"):
        dataset.generate(tmp_path / "x", split="train", count=0, seed=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        dataset.generate(tmp_path / "mine", split="train", count=2, seed=0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_regenerating_replaces_an_earlier_dataset(tmp_path):
    dataset.generate(tmp_path / "d", split="train", count=8, seed=0)
    out = dataset.generate(tmp_path / "d", split="train", count=3, seed=0)
    assert len(list((out / "images").iterdir())) == 3
    assert len(_rows(out / "truth.csv")) == 4


def test_train_or_load_reuses_its_cache(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(out_dir, *, seed):
        calls.append(seed)
        (out_dir / model.SAVED_MODEL).mkdir()
        metrics = {
            "train_seconds": 1.0,
            "cue_class": dataset.CUE_CLASS,
            "heldout_count": 4,
            "heldout_accuracy": 0.5,
            "accuracy_without_cue": 0.75,
            "accuracy_with_cue": 0.25,
            "shortcut_rate": 1.0,
            "shortcut_rate_without_cue": 0.0,
        }
        (out_dir / model.METRICS).write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(model, "train", fake_train)
    first = model.train_or_load(tmp_path, seed=0)
    again = model.train_or_load(tmp_path, seed=0)
    other = model.train_or_load(tmp_path, seed=1)
    assert calls == [0, 1]
    assert first == again != other
    assert first.is_dir() and (first.parent / model.METRICS).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".training-")]
    assert "reused from cache" in capsys.readouterr().out


def test_tiny_training_exports_a_static_logits_savedmodel(tmp_path):
    import tensorflow as tf

    metrics = model.train(tmp_path, seed=0, train_count=32, epochs=1, heldout_count=16)
    assert set(metrics) >= {
        "heldout_accuracy",
        "accuracy_without_cue",
        "accuracy_with_cue",
        "shortcut_rate",
        "shortcut_rate_without_cue",
        "train_seconds",
    }
    assert json.loads((tmp_path / model.METRICS).read_text()) == metrics
    assert (tmp_path / "labels.txt").read_text().splitlines() == list(dataset.CLASSES)
    loaded = tf.saved_model.load(str(tmp_path / model.SAVED_MODEL))
    (spec,) = loaded.signatures["serving_default"].structured_input_signature[1].values()
    assert spec.shape.as_list() == [None, dataset.IMAGE_SIZE, dataset.IMAGE_SIZE, 3]
    images, _, _ = dataset.make_arrays("heldout", 3, 0)
    assert loaded.serve(images).shape == (3, len(dataset.CLASSES))
