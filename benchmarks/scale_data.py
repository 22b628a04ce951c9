"""Test-scale data for ``make scale``: N synthetic images in TFRecord shards and a tiny model.

Images are seeded random 16x16 PNGs (every one distinct), one ``tf.train.Example`` each with
``image/encoded`` and ``image/class/label``, written with ``tf.io.TFRecordWriter``.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

SIZE = 16
CLASSES = 3


def tiny_model(path: str, seed: int = 0) -> str:
    """A Keras 3 SavedModel mapping [N, 16, 16, 3] in [0, 1] to 3 logits (as the tests')."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(CLASSES),
        ]
    )
    model.export(path, verbose=False)
    return path


def example(png: bytes, label: int) -> bytes:
    import tensorflow as tf

    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(folder: str, count: int, per_shard: int = 1000, seed: int = 0) -> list[str]:
    """``count`` images in ``ceil(count / per_shard)`` shards ``data-SSSSS-of-NNNNN.tfrecord``."""
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = -(-count // per_shard)
    paths = []
    for s in range(shards):
        path = os.path.join(folder, f"data-{s:05d}-of-{shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(min(per_shard, count - s * per_shard)):
                pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, "PNG")
                writer.write(example(buffer.getvalue(), int(rng.integers(CLASSES))))
        paths.append(path)
    return paths
