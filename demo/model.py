"""The demo's classifier: a small ReLU CNN trained on the shortcut-laden train split.

``train_or_load`` trains it once per cache key (dataset and training code, seed, TF version),
exports a SavedModel (float32 [N, 112, 112, 3] in [0, 1] -> logits [N, 4]) and writes
``metrics.json`` next to it; later calls reuse it. The metrics measure the shortcut on the
held-out split, where the cue is on half of the images of every class.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from demo import dataset

TRAIN_COUNT = 2000
HELDOUT_COUNT = 1000
EPOCHS = 10
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
SAVED_MODEL = "saved_model"
METRICS = "metrics.json"


def build_model():
    """Conv(5x5, stride 2) -> pool -> conv -> pool -> conv -> conv -> global max pool -> logits.

    Global max pooling, not average: with average pooling the small shapes drown in the
    textured background and the net stays near chance within this training budget.
    """
    import keras

    layers = keras.layers

    def conv(x, filters, kernel=3, strides=1):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        return layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))

    images = keras.Input((dataset.IMAGE_SIZE, dataset.IMAGE_SIZE, 3), name="images")
    x = conv(images, 16, kernel=5, strides=2)
    x = layers.MaxPooling2D(2)(x)
    x = conv(x, 32)
    x = layers.MaxPooling2D(2)(x)
    x = conv(x, 48)
    x = conv(x, 48)
    x = layers.GlobalMaxPooling2D()(x)
    logits = layers.Dense(len(dataset.CLASSES), name="logits")(x)
    return keras.Model(images, logits, name="demo_shapes_cnn")


def cache_key(seed: int) -> str:
    """Hash of everything the trained model depends on."""
    import tensorflow as tf

    here = Path(__file__).resolve().parent
    parts = {
        "generator_version": dataset.GENERATOR_VERSION,
        "dataset_source": hashlib.sha256((here / "dataset.py").read_bytes()).hexdigest(),
        "training_source": hashlib.sha256((here / "model.py").read_bytes()).hexdigest(),
        "seed": int(seed),
        "tensorflow": tf.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def evaluate(predict, seed: int, count: int = HELDOUT_COUNT) -> dict:
    """Held-out accuracy, split by cue, and the shortcut rate, for ``predict(images) -> logits``."""
    images, labels, has_cue = dataset.make_arrays("heldout", count, seed)
    predicted = np.asarray(predict(images)).argmax(axis=1)
    cue_label = dataset.CLASSES.index(dataset.CUE_CLASS)
    correct = predicted == labels
    other = labels != cue_label

    def rate(values, where):
        return float(values[where].mean()) if where.any() else float("nan")

    return {
        "heldout_count": count,
        "cue_class": dataset.CUE_CLASS,
        "heldout_accuracy": rate(correct, np.ones_like(correct)),
        "accuracy_without_cue": rate(correct, ~has_cue),
        "accuracy_with_cue": rate(correct, has_cue),
        # Non-cue-class images predicted as the cue class, with and without the stamp.
        "shortcut_rate": rate(predicted == cue_label, other & has_cue),
        "shortcut_rate_without_cue": rate(predicted == cue_label, other & ~has_cue),
        "per_class_accuracy": {
            name: {
                "without_cue": rate(correct, (labels == k) & ~has_cue),
                "with_cue": rate(correct, (labels == k) & has_cue),
            }
            for k, name in enumerate(dataset.CLASSES)
        },
    }


def train(
    out_dir,
    *,
    seed: int,
    train_count: int = TRAIN_COUNT,
    epochs: int = EPOCHS,
    heldout_count: int = HELDOUT_COUNT,
) -> dict:
    """Train, export ``out_dir/saved_model`` and write ``out_dir/metrics.json``; return metrics."""
    import keras

    out = Path(out_dir)
    keras.utils.set_random_seed(seed)
    images, labels, _ = dataset.make_arrays("train", train_count, seed)
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    started = time.perf_counter()
    model.fit(images, labels, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0)
    train_seconds = time.perf_counter() - started
    model.export(str(out / SAVED_MODEL), verbose=False)
    metrics = evaluate(lambda x: model.predict(x, batch_size=256, verbose=0), seed, heldout_count)
    metrics.update(
        seed=seed,
        train_count=train_count,
        epochs=epochs,
        train_seconds=round(train_seconds, 1),
        params=model.count_params(),
    )
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in dataset.CLASSES))
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def train_or_load(cache_dir, *, seed: int = 0) -> Path:
    """The SavedModel folder of the demo model for ``seed``, trained only on a cache miss.

    Layout: ``cache_dir/shapes-cnn-<key>/{saved_model/, metrics.json, labels.txt}``. Training
    happens in a temporary folder renamed into place at the end, so an interrupted run never
    leaves a cache entry behind.
    """
    cache = Path(cache_dir)
    entry = cache / f"shapes-cnn-{cache_key(seed)[:16]}"
    if (entry / METRICS).is_file() and (entry / SAVED_MODEL).is_dir():
        metrics = json.loads((entry / METRICS).read_text())
        print_metrics(metrics, cached=True)
        return entry / SAVED_MODEL
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".training-", dir=cache))
    try:
        metrics = train(scratch, seed=seed)
        shutil.rmtree(entry, ignore_errors=True)
        scratch.rename(entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_metrics(metrics, cached=False)
    return entry / SAVED_MODEL


def print_metrics(metrics: dict, *, cached: bool) -> None:
    """Print the model's held-out numbers in a few lines."""
    how = "reused from cache" if cached else f"trained in {metrics['train_seconds']:.0f} s"
    cue = metrics["cue_class"]
    print(
        f"demo model ({how}): held-out accuracy {metrics['heldout_accuracy']:.1%} "
        f"on {metrics['heldout_count']} images; "
        f"{metrics['accuracy_without_cue']:.1%} without the cue, "
        f"{metrics['accuracy_with_cue']:.1%} with it"
    )
    print(
        f"shortcut: {metrics['shortcut_rate']:.1%} of non-{cue} images carrying the cue are "
        f"predicted '{cue}' ({metrics['shortcut_rate_without_cue']:.1%} without the cue)"
    )
