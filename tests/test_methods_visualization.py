"""The visualization options: defaults draw exactly the tutorial's mask and
overlay; polarity, clipping, overlays and outlines do what they say."""

import io

import numpy as np
import pytest
from PIL import Image

from attribution import masks
from attribution.methods import xrai

RNG = np.random.default_rng(5)
A = RNG.normal(size=(20, 24, 3))
IMAGE = RNG.random((20, 24, 3))


def pixels(png):
    return np.asarray(Image.open(io.BytesIO(png)))


def test_defaults_are_the_tutorials_mask_and_overlay():
    mask, overlay = masks.styled_pngs(IMAGE, masks.styled_values(A))
    assert np.array_equal(pixels(mask), pixels(masks.mask_png(A)))
    assert np.array_equal(pixels(overlay), pixels(masks.overlay_png(IMAGE, A)))


def test_polarities_select_the_evidence():
    signed = A.sum(-1)
    positive = masks.styled_values(A, polarity="positive", clip_high=100)
    negative = masks.styled_values(A, polarity="negative", clip_high=100)
    assert np.all(positive[signed <= 0] == 0) and np.all(negative[signed >= 0] == 0)
    assert positive.max() == 1 and negative.max() == 1
    both = masks.styled_values(A, polarity="both", clip_high=100)
    np.testing.assert_allclose(both, 0.5 + 0.5 * signed / np.abs(signed).max())


def test_clip_low_and_high_are_percentiles_of_the_values():
    mass = np.abs(A).sum(-1)
    values = masks.styled_values(A, clip_low=20, clip_high=80)
    low, high = np.percentile(mass, [20, 80])
    assert np.all(values[mass <= low] == 0) and np.all(values[mass >= high] == 1)
    inside = (mass > low) & (mass < high)
    np.testing.assert_allclose(values[inside], (mass[inside] - low) / (high - low))
    with pytest.raises(ValueError, match="clip_low < clip_high"):
        masks.styled_values(A, clip_low=50, clip_high=50)


def test_overlays_and_outlines():
    values = masks.styled_values(A)
    _, black = masks.styled_pngs(IMAGE, values, overlay="mask_black")
    np.testing.assert_allclose(pixels(black) / 255, IMAGE * values[..., None], atol=0.6 / 255)
    mask, alone = masks.styled_pngs(IMAGE, values, overlay="none")
    assert np.array_equal(pixels(mask), pixels(alone))
    _, gray = masks.styled_pngs(IMAGE, values, overlay="grayscale", cmap="gray")
    assert np.array_equal(pixels(gray)[..., 0], pixels(gray)[..., 1])
    top = np.zeros((20, 24), bool)
    top[5:12, 6:15] = True
    _, outlined = masks.styled_pngs(
        IMAGE, values, overlay="original", mask_type="outlines", outline=top, cmap="viridis"
    )
    drawn = pixels(outlined)
    edge_colour = masks._colorize(np.ones(1), "viridis")[0]
    assert np.all(drawn[5, 6:15] == edge_colour) and np.all(drawn[8, 6] == edge_colour)
    np.testing.assert_allclose(drawn[0, 0] / 255, IMAGE[0, 0], atol=0.6 / 255)  # untouched
    assert not np.all(drawn[8, 10] == edge_colour)  # inside, not on the boundary


def test_xrai_top_regions_cover_the_asked_fraction_of_the_heat_map():
    heatmap = np.repeat(np.arange(10.0), 10).reshape(10, 10)  # 10 regions of 10 pixels
    top = xrai.top_regions(heatmap, 0.3)
    assert top.mean() == pytest.approx(0.3) and heatmap[top].min() == 7
    values = masks.styled_values(heatmap)
    assert values.min() == 0 and values.max() == 1


def test_one_channel_attributions_are_not_taken_for_a_heat_map():
    gray = -np.abs(A[..., :1])  # a 1-channel model's map, all negative evidence
    np.testing.assert_allclose(
        masks.styled_values(gray, clip_high=100), np.abs(gray[..., 0]) / np.abs(gray).max()
    )
