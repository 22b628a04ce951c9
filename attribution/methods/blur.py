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
from scipy import fft


class BlurPath:
    """gamma(t) and gamma'(t) for one image ([H, W, C] float).

    Each axis is blurred as one zero-padded FFT convolution (scipy.fft, no BLAS threads to
    fight TensorFlow's): the image's spectrum along the rows is computed once, then each
    point costs six real FFTs of its lines, whatever the kernel size.
    """

    def __init__(self, image: np.ndarray, max_sigma: float):
        if not max_sigma > 0:
            raise ValueError(f"max_sigma must be > 0, got {max_sigma!r}")
        self.image = np.asarray(image, np.float64)
        self.max_sigma = float(max_sigma)
        self.radius = math.ceil(4 * self.max_sigma)
        h, w = self.image.shape[:2]
        # lengths past size + radius: the circular convolution never wraps into the image
        self.lengths = (
            fft.next_fast_len(h + self.radius, real=True),
            fft.next_fast_len(w + self.radius, real=True),
        )
        self.rows_spectrum = fft.rfft(self.image, n=self.lengths[0], axis=0)

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
        (lh, lw), shape = self.lengths, (slice(None), None, None)
        rows, d_rows = _spectra(sigma, self.radius, lh)
        along = fft.irfft(self.rows_spectrum * rows[shape], n=lh, axis=0)[:h]
        d_along = fft.irfft(self.rows_spectrum * d_rows[shape], n=lh, axis=0)[:h]
        cols, d_cols = (k[None, :, None] for k in _spectra(sigma, self.radius, lw))
        spectrum, d_spectrum = fft.rfft(along, n=lw, axis=1), fft.rfft(d_along, n=lw, axis=1)
        point = fft.irfft(spectrum * cols, n=lw, axis=1)[:, :w]
        slope = fft.irfft(d_spectrum * cols + spectrum * d_cols, n=lw, axis=1)[:, :w]
        return point, slope


def _spectra(sigma: float, radius: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Real spectra of the 1-D normalised Gaussian on [-radius, radius] and of its sigma
    derivative, laid out circularly on ``length`` points (both kernels are even)."""
    u = np.arange(-radius, radius + 1, dtype=np.float64)
    e = np.exp(-0.5 * (u / sigma) ** 2)
    kernel = e / e.sum()
    # d/dsigma of e/sum(e): kernel * (u^2 - sum(kernel u^2)) / sigma^3
    d_kernel = kernel * (u**2 - (kernel * u**2).sum()) / sigma**3
    out = []
    for k in (kernel, d_kernel):
        circular = np.zeros(length)
        circular[: radius + 1], circular[length - radius :] = k[radius:], k[:radius]
        out.append(fft.rfft(circular))
    return out[0], out[1]
