"""Shared fixtures: tiny models made in the test session, image folders made by code."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up noise out of logs

SIZE = 16


def tiny_cnn(filters: int = 4, activation: str = "relu", seed: int = 0):
    """A Keras 3 CNN mapping [N, 16, 16, 3] in [0, 1] to 3 logits."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(filters, 3, activation=activation),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_cnn() as a Keras 3 SavedModel (model.export)."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_cnn().export(str(path), verbose=False)
    return str(path)


def png_bomb(width=60000, height=60000) -> bytes:
    """A valid PNG header claiming a huge image, with a tiny body."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def _encoded(image, fmt, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def mixed_files(rng=None) -> tuple[dict[str, bytes], set[str]]:
    """{file name: bytes} of good and broken images, and the names that must fail."""
    rng = rng or np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8))
    jpeg = _encoded(rgb, "JPEG")
    frames = [Image.fromarray((rng.random((10, 12, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    good = {
        "rgb.png": _encoded(rgb, "PNG"),
        "photo.jpg": jpeg,
        "gray.png": _encoded(rgb.convert("L"), "PNG"),
        "rgba.png": _encoded(rgb.convert("RGBA"), "PNG"),
        "sixteen bit.png": _encoded(
            Image.fromarray((rng.random((20, 20)) * 65535).astype(np.uint16)), "PNG"
        ),
        "cmyk.jpg": _encoded(rgb.convert("CMYK"), "JPEG"),
        "animated.gif": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "one pixel.png": _encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "bitmap.bmp": _encoded(rgb, "BMP"),
        "ünïcødé 名前.png": _encoded(rgb.rotate(90), "PNG"),
        "..dots..png": _encoded(rgb.transpose(Image.FLIP_LEFT_RIGHT), "PNG"),
    }
    bad = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "zero bytes.png": b"",
        "text.jpg": b"this is not an image\n" * 10,
        "random.png": rng.bytes(500),
        "bomb.png": png_bomb(),
    }
    return {**good, **bad}, set(bad)


def random_pngs(folder, count: int, shape=(16, 16, 3), seed: int = 0, prefix: str = "img"):
    """``count`` seeded random RGB PNGs named <prefix><i>.png in a new ``folder``."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(
            folder / f"{prefix}{i}.png"
        )
    return folder


@pytest.fixture
def mixed_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    files, bad = mixed_files()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, set(files), bad


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    """The real demo model (demo.model.train_or_load), trained once per test session."""
    from demo import train_or_load

    return train_or_load(tmp_path_factory.mktemp("demo-cache"), seed=0)
