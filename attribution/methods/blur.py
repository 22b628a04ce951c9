"""Blur IG (Xu et al., CVPR 2020): the path runs from a Gaussian blur of the image with
sigma ``max_sigma`` (t = 0) to the image itself (t = 1), sigma(t) = (1 - t) max_sigma.

The blur is separable with zero padding beyond the border (as PAIR saliency's
``gaussian_blur``, mode 'constant') and one fixed kernel support, 4 max_sigma each side, for
every sigma: the path and its exact derivative d blur / d sigma (the derivative of the
normalised kernel, no finite difference) are then smooth in t, so the quadrature rule
converges and completeness against F(blurred) holds like IG's.
"""
from __future__ import annotations

import math

import numpy as np


class BlurPath:
    """gamma(t) and gamma'(t) for one image ([H, W, C] float)."""

    def __init__(self, image: np.ndarray, max_sigma: float):
        if not max_sigma > 0:
            raise ValueError(f"--max_blur_sigma must be > 0, got {max_sigma!r}")
        self.image = np.asarray(image, np.float64)
        self.max_sigma = float(max_sigma)
        self.radius = math.ceil(4 * self.max_sigma)

    def blurred(self, sigma: float) -> np.ndarray:
        return self._blur(sigma)[0]

    def __call__(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        sigma = (1.0 - t) * self.max_sigma
        point, d_sigma = self._blur(sigma)
        return point.astype(np.float32), -self.max_sigma * d_sigma

    def _blur(self, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """(blur of the image with sigma, its derivative in sigma)."""
        h, w = self.image.shape[:2]
        if sigma <= 1e-3:  # the kernel is a delta to float64 precision, and so is its slope
            return self.image.copy(), np.zeros_like(self.image)
        rows, d_rows = _matrices(h, sigma, self.radius)
        cols, d_cols = _matrices(w, sigma, self.radius)
        c = self.image.shape[2]
        # one matrix product per pass: rows act on [H, W * C], columns on [H * C, W]
        flat = self.image.reshape(h, -1)
        along_rows = (rows @ flat).reshape(h, w, c).transpose(0, 2, 1).reshape(h * c, w)
        d_along_rows = (d_rows @ flat).reshape(h, w, c).transpose(0, 2, 1).reshape(h * c, w)
        back = lambda a: a.reshape(h, c, w).transpose(0, 2, 1)
        point = back(along_rows @ cols.T)
        slope = back(d_along_rows @ cols.T + along_rows @ d_cols.T)
        return point, slope


def _matrices(size: int, sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """[size, size] matrices of the 1-D normalised Gaussian (zero padding) and its sigma
    derivative: out[i] = sum_j M[i, j] in[j]."""
    u = np.arange(-radius, radius + 1, dtype=np.float64)
    e = np.exp(-0.5 * (u / sigma) ** 2)
    kernel = e / e.sum()
    # d/dsigma of e/sum(e): kernel * (u^2 - sum(kernel u^2)) / sigma^3
    d_kernel = kernel * (u ** 2 - (kernel * u ** 2).sum()) / sigma ** 3
    offsets = np.arange(size)[None, :] - np.arange(size)[:, None]  # j - i
    inside = np.abs(offsets) <= radius
    index = np.clip(offsets + radius, 0, 2 * radius)
    return np.where(inside, kernel[index], 0.0), np.where(inside, d_kernel[index], 0.0)
