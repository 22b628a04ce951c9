"""IG baselines: the reference input the path starts from."""

from __future__ import annotations

import functools
import hashlib

import numpy as np

BASELINES = ("black", "white", "uniform_noise", "blur")


def seed_for(key: str, seed: int = 0) -> int:
    """A stable 64-bit seed from an image key, so noise baselines reproduce across reruns."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


@functools.lru_cache(maxsize=32)
def _blur_matrix(length: int, sigma: float) -> np.ndarray:
    """[length, length] float64: one axis of the Gaussian blur as a matrix, the kernel
    truncated at 3 sigma and the border reflected (repeated when the axis is too short to
    reflect), so ``matrix @ v`` is the convolution of the padded ``v``. Built once per size
    and sigma (read-only): a job blurs every image at the model's size."""
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    source = np.arange(length)[:, None] + x.astype(np.int64)[None, :]  # [length, taps]
    if length > radius:  # reflect about the first and last sample (numpy's 'reflect')
        source = np.abs(source)
        source = np.where(source > length - 1, 2 * (length - 1) - source, source)
    else:  # numpy's 'edge'
        source = np.clip(source, 0, length - 1)
    matrix = np.zeros((length, length))
    np.add.at(
        matrix, (np.repeat(np.arange(length), len(x)), source.ravel()), np.tile(kernel, length)
    )
    matrix.setflags(write=False)
    return matrix


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] in float64: two small matrix products (down the
    columns, then along each row)."""
    h, w, c = image.shape
    down = _blur_matrix(h, float(sigma)) @ image.astype(np.float64).reshape(h, w * c)
    return _blur_matrix(w, float(sigma)) @ down.reshape(h, w, c)


def make_baseline(
    kind: str, image: np.ndarray, *, key: str = "", seed: int = 0, blur_sigma: float | None = None
) -> np.ndarray:
    """A float32 baseline shaped like ``image`` ([H, W, C] in [0, 1], C = 3 or 1 for gray).

    ``uniform_noise`` is seeded from (seed, key): the same image key gives the same noise.
    ``blur`` is a Gaussian blur with sigma = ``blur_sigma`` pixels (default: 1/16 of the
    larger side), the "blurred input" baseline of Sturmfels et al. (Distill, 2020).
    """
    if kind == "black":
        return np.zeros_like(image, dtype=np.float32)
    if kind == "white":
        return np.ones_like(image, dtype=np.float32)
    if kind == "uniform_noise":
        rng = np.random.default_rng(seed_for(key, seed))
        return rng.uniform(0.0, 1.0, size=image.shape).astype(np.float32)
    if kind == "blur":
        sigma = blur_sigma if blur_sigma is not None else max(image.shape[:2]) / 16.0
        if sigma <= 0:
            raise ValueError(f"blur sigma must be > 0, got {sigma}")
        return np.clip(_gaussian_blur(image, sigma), 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown baseline {kind!r}: use one of {', '.join(BASELINES)}")
