"""Baselines: reproducible noise per image, blur keeps the mean, known constants."""

import numpy as np
import pytest

from attribution.baselines import make_baseline


def test_black_and_white():
    image = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    assert not make_baseline("black", image).any()
    assert (make_baseline("white", image) == 1).all()


def test_noise_is_seeded_per_image_key():
    image = np.zeros((8, 8, 3), np.float32)
    a = make_baseline("uniform_noise", image, key="gs://b/x.png")
    np.testing.assert_array_equal(a, make_baseline("uniform_noise", image, key="gs://b/x.png"))
    assert not np.array_equal(a, make_baseline("uniform_noise", image, key="gs://b/y.png"))
    assert not np.array_equal(a, make_baseline("uniform_noise", image, key="gs://b/x.png", seed=1))
    assert a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1


def test_blur_smooths_and_keeps_constants():
    constant = np.full((16, 16, 3), 0.25, np.float32)
    np.testing.assert_allclose(make_baseline("blur", constant), constant, atol=1e-6)
    checker = (np.indices((16, 16)).sum(0) % 2).astype(np.float32)[..., None].repeat(3, -1)
    blurred = make_baseline("blur", checker, blur_sigma=2.0)
    assert blurred.std() < 0.05 * checker.std() + 0.01
    assert blurred.shape == checker.shape and blurred.dtype == np.float32


def test_unknown_baseline():
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("grey", np.zeros((2, 2, 3), np.float32))


@pytest.mark.parametrize("shape,sigma", [((64, 64, 3), 4.0), ((112, 80, 1), 2.0), ((3, 5, 3), 2.0)])
def test_blur_matches_scipy_gaussian_filter(shape, sigma):
    """The blur is a separable Gaussian truncated at 3 sigma with reflected borders: scipy's
    gaussian_filter1d (mode 'mirror' is numpy's 'reflect'; 'nearest' is 'edge', used when a
    side is too short to reflect) is an independent implementation of the same thing."""
    from scipy.ndimage import gaussian_filter1d

    image = np.random.default_rng(1).random(shape)
    mode = "mirror" if min(shape[:2]) > round(3 * sigma) else "nearest"
    expected = image
    for axis in (0, 1):
        expected = gaussian_filter1d(expected, sigma, axis=axis, mode=mode, truncate=3.0)
    got = make_baseline("blur", image.astype(np.float32), blur_sigma=sigma)
    np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=1e-6)
