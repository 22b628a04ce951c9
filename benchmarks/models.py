"""The benchmark's models and images, built offline in code and saved where every process
(the benchmark's workers and `python -m pipeline`) loads the same files.

Models (random weights unless the demo's trained model is available):
- ``small_cnn``: a 64x64 ReLU CNN, 10 classes.
- ``demo``: the demo's trained model (``demo.model.train_or_load``) when that module exists,
  else a stand-in ReLU CNN at the demo's input size (``demo.dataset.IMAGE_SIZE``), 4 classes.
- ``mobilenet_v2``: ``keras.applications.MobileNetV2(weights=None)`` at 224x224, 1000 logits,
  behind a [0, 1] -> [-1, 1] rescaling.
Random-weight models get small random conv biases (so ReLU kinks are not all at the black
baseline) and a data-dependent init of the last layer (``_calibrate_head``): classes vary
across images and predictions are confident, as with a trained model.

Images: uint8-quantized (so the PNGs the pipeline reads decode to the same arrays), seeded:
smooth noise backgrounds, a few filled shapes, a little pixel noise. The demo model gets the
demo's own held-out images (``demo.dataset.make_arrays``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

MODELS = ("small_cnn", "demo", "mobilenet_v2")
RECIPE = 2  # bump when a model recipe changes: cached files are rebuilt


@dataclass
class ModelInfo:
    name: str
    path: str  # .keras file or SavedModel folder, loadable by attribution.models
    image_size: tuple[int, int]
    num_classes: int
    description: str
    trained: bool

    def to_json(self) -> dict:
        return asdict(self)


def _keras():
    import keras

    return keras


def _calibrate_head(features_fn, dense, images: np.ndarray, logit_std: float) -> None:
    """Data-dependent init of the random last layer (as LSUV-style inits do): centre its input
    features on sample images and scale each class's logit to std ``logit_std``. Without it a
    random ReLU net predicts one class for every image with a near-uniform softmax; with it
    classes vary across images and predictions are confident, as with a trained model."""
    features = np.concatenate(
        [np.asarray(features_fn(images[i : i + 32]), np.float64) for i in range(0, len(images), 32)]
    )
    mean = features.mean(0)
    kernel = dense.get_weights()[0].astype(np.float64)
    std = ((features - mean) @ kernel).std(0)
    kernel = kernel / np.maximum(std, 1e-12) * logit_std
    dense.set_weights([kernel.astype(np.float32), (-mean @ kernel).astype(np.float32)])


def _small_cnn(size: int, classes: int, seed: int, logit_std: float):
    keras = _keras()
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    bias = keras.initializers.RandomNormal(stddev=0.05, seed=seed)  # ReLU kinks off the origin
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            layers.Conv2D(16, 3, padding="same", activation="relu", bias_initializer=bias),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu", bias_initializer=bias),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu", bias_initializer=bias),
            layers.GlobalAveragePooling2D(),
            layers.Dense(classes),
        ]
    )
    features = keras.Model(model.inputs, model.layers[-2].output)
    _calibrate_head(
        lambda x: features(x, training=False),
        model.layers[-1],
        synthetic_images(128, size, seed + 1000),
        logit_std,
    )
    return model


def _mobilenet_v2(seed: int, logit_std: float):
    keras = _keras()
    keras.utils.set_random_seed(seed)
    core = keras.applications.MobileNetV2(
        weights=None, classifier_activation=None, input_shape=(224, 224, 3)
    )
    model = keras.Sequential(
        [keras.Input((224, 224, 3)), keras.layers.Rescaling(2.0, offset=-1.0), core]
    )
    features = keras.Model(core.inputs, core.layers[-2].output)
    _calibrate_head(
        lambda x: features(x * 2.0 - 1.0, training=False),
        core.layers[-1],
        synthetic_images(64, 224, seed + 1000),
        logit_std,
    )
    return model


def demo_available() -> bool:
    try:
        return importlib.util.find_spec("demo.model") is not None
    except (ImportError, ValueError):
        return False


def demo_image_size() -> int:
    try:
        from demo import dataset

        return int(dataset.IMAGE_SIZE)
    except Exception:  # noqa: BLE001 - the demo is being written in parallel
        return 112


def build(name: str, cache_dir: str, seed: int = 0) -> ModelInfo:
    """Build (or reuse from ``cache_dir``) model ``name``; return where it is saved."""
    os.makedirs(cache_dir, exist_ok=True)
    record = os.path.join(cache_dir, f"{name}-{seed}-r{RECIPE}.json")
    if os.path.exists(record):
        with open(record) as f:
            info = ModelInfo(**{**json.load(f)})
        info.image_size = tuple(info.image_size)
        if os.path.exists(info.path) and (name != "demo" or info.trained == demo_available()):
            return info
    if name == "small_cnn":
        path = os.path.join(cache_dir, f"small_cnn-{seed}-r{RECIPE}.keras")
        _small_cnn(64, 10, seed, logit_std=3.0).save(path)
        info = ModelInfo(
            name,
            path,
            (64, 64),
            10,
            "small ReLU CNN 64x64 (3 conv, 10 classes), random weights + calibrated head",
            False,
        )
    elif name == "mobilenet_v2":
        path = os.path.join(cache_dir, f"mobilenet_v2-{seed}-r{RECIPE}.keras")
        _mobilenet_v2(seed, logit_std=18.0).save(path)
        info = ModelInfo(
            name,
            path,
            (224, 224),
            1000,
            "MobileNetV2 224x224 (weights=None, 1000 logits), random weights + calibrated head",
            False,
        )
    elif name == "demo":
        size = demo_image_size()
        info = None
        if demo_available():
            try:
                demo_model = importlib.import_module("demo.model")
                started = time.time()
                path = str(demo_model.train_or_load(os.path.join(cache_dir, "demo"), seed=seed))
                logging.info("demo model ready in %.0f s", time.time() - started)
                from attribution.models import load_model

                loaded = load_model(path)
                info = ModelInfo(
                    name,
                    path,
                    loaded.image_size,
                    loaded.num_classes,
                    f"the demo's trained model (demo.model.train_or_load), "
                    f"{loaded.image_size[0]}x{loaded.image_size[1]}",
                    True,
                )
            except Exception as e:  # noqa: BLE001 - fall back, and say so in the results
                logging.warning("demo.model.train_or_load failed (%s): using a stand-in", e)
        if info is None:
            path = os.path.join(cache_dir, f"demo_standin-{seed}-r{RECIPE}.keras")
            _small_cnn(size, 4, seed + 1, logit_std=3.0).save(path)
            info = ModelInfo(
                name,
                path,
                (size, size),
                4,
                f"STAND-IN for the demo model (demo.model not available): small "
                f"ReLU CNN {size}x{size}, 4 classes, random weights + calibrated head",
                False,
            )
    else:
        raise ValueError(f"unknown model {name!r}: one of {MODELS}")
    with open(record, "w") as f:
        json.dump(info.to_json(), f)
    return info


# --- images -----------------------------------------------------------------------------
def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    coarse = rng.random((cells + 1, cells + 1, 3))
    pos = np.linspace(0, cells, size)
    i = np.minimum(pos.astype(int), cells - 1)
    f = (pos - i)[:, None]
    rows = coarse[i] * (1 - f[:, :, None]) + coarse[i + 1] * f[:, :, None]  # [size, c+1, 3]
    g = f[None, :, :]
    return rows[:, i] * (1 - g) + rows[:, i + 1] * g


def synthetic_images(count: int, size: int, seed: int) -> np.ndarray:
    """float32 [count, size, size, 3] in [0, 1], multiples of 1/255."""
    out = np.empty((count, size, size, 3), np.float32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for k in range(count):
        rng = np.random.default_rng([seed, k])
        image = 0.2 + 0.6 * _smooth_noise(rng, size, int(rng.integers(2, 8)))
        for _ in range(int(rng.integers(1, 4))):
            colour = rng.random(3)
            cx, cy = rng.uniform(0.15, 0.85, 2) * size
            r = rng.uniform(0.08, 0.25) * size
            if rng.random() < 0.5:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            else:
                mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r * rng.uniform(0.5, 1.5))
            image[mask] = colour
        image += rng.normal(0, 0.03, image.shape)
        out[k] = np.round(np.clip(image, 0, 1) * 255) / 255
    return out


def images_for(info: ModelInfo, count: int, seed: int = 0) -> np.ndarray:
    h, w = info.image_size
    if info.name == "demo" and h == w == demo_image_size():
        try:
            from demo import dataset

            images, _, _ = dataset.make_arrays("heldout", count, seed)
            return images.astype(np.float32)
        except Exception as e:  # noqa: BLE001
            logging.warning("demo.dataset.make_arrays failed (%s): synthetic images", e)
    if h != w:
        raise ValueError("square models only")
    return synthetic_images(count, h, seed)
