"""IG baselines: the reference input the path starts from."""

from __future__ import annotations

import hashlib

import numpy as np

BASELINES = ("black", "white", "uniform_noise", "blur")


def seed_for(key: str, seed: int = 0) -> int:
    """A stable 64-bit seed from an image key, so noise baselines reproduce across reruns."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        out = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)
    return out


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
