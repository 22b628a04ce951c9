"""Start-up costs: an in-process worker reuses the model the launcher loaded, never a stale one."""

import shutil

from attribution.models import load_model


def test_same_unchanged_files_load_once_per_process(tiny_model, tmp_path):
    first = load_model(tiny_model)
    assert load_model(tiny_model, image_size=first.image_size) is first
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_model, copy)
    assert load_model(copy) is not first  # another handle


def test_changed_files_are_loaded_again(tmp_path):
    import keras

    path = str(tmp_path / "m.keras")

    def save(seed):
        keras.utils.set_random_seed(seed)
        keras.Sequential(
            [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
        ).save(path)

    save(0)
    first = load_model(path)
    save(1)
    second = load_model(path)
    assert second is not first and second.fingerprint != first.fingerprint


def test_a_randomized_worker_model_never_poisons_the_reused_one(tmp_path):
    """The sanity check randomizes a worker's model in place: that copy must be private, so the
    launcher's model (and a later stage's load) keeps the trained weights."""
    import dataclasses

    import keras
    import numpy as np
    import tensorflow as tf

    from transforms.attribute import _ProcessModel
    from transforms.settings import Settings

    path = str(tmp_path / "m.keras")
    keras.utils.set_random_seed(3)
    keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    ).save(path)
    launcher = load_model(path)
    x = tf.constant(np.random.default_rng(0).random((1, 8, 8, 3), np.float32))
    before = tf.function(launcher.fn)(x).numpy()
    settings = Settings(
        model=path,
        output_dir=str(tmp_path / "out"),
        image_size=(8, 8),
        num_classes=2,
        model_fingerprint=launcher.fingerprint,
    )
    worker = _ProcessModel(dataclasses.replace(settings, randomize="top_100"))
    randomized = tf.function(worker.engine.fn)(x).numpy()
    assert not np.allclose(randomized, before)  # the worker's copy was randomized
    again = load_model(path)
    assert again is launcher
    np.testing.assert_array_equal(tf.function(again.fn)(x).numpy(), before)
