"""Masks, overlays, grids, statistics and region masses on hand-built attribution maps."""

import io
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from attribution import masks
from attribution.masks import (
    attribution_grid,
    attribution_statistics,
    mask_png,
    overlay_png,
    region_masses,
    signed_mask_png,
)


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def colour(cmap: str, value: float) -> np.ndarray:
    return np.array(matplotlib.colormaps[cmap](value, bytes=True)[:3])


def channels(signed: np.ndarray) -> np.ndarray:
    """[H, W, 3] attributions whose channel sum is ``signed`` (spread unevenly over channels)."""
    signed = np.asarray(signed, dtype=np.float32)
    return np.stack([0.5 * signed, 0.25 * signed, 0.25 * signed], axis=-1)


def one_hot(height, width, row, col, value=1.0) -> np.ndarray:
    signed = np.zeros((height, width), np.float32)
    signed[row, col] = value
    return channels(signed)


def draw_all(attributions) -> None:
    height, width = np.shape(attributions)[:2]
    image = np.full((height, width, 3), 0.5, np.float32)
    for png in (
        mask_png(attributions),
        overlay_png(image, attributions),
        signed_mask_png(attributions),
    ):
        assert decode(png).shape == (height, width, 3)


# ---- PNGs -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (224, 224)])
def test_pngs_decode_to_model_input_size(shape):
    attributions = np.random.default_rng(0).normal(size=(*shape, 3)).astype(np.float32)
    draw_all(attributions)


def test_mask_brightest_pixel_is_largest_mass():
    rng = np.random.default_rng(1)
    attributions = rng.uniform(-0.5, 0.5, size=(9, 13, 3)).astype(np.float32) / 3
    attributions[4, 10] = (-2.0, 1.0, 1.0)  # |IG| mass 4 vs at most 0.5 elsewhere
    for percentile in (99.0, 100.0):
        luminance = decode(mask_png(attributions, clip_percentile=percentile)).astype(int).sum(-1)
        assert luminance[4, 10] == luminance.max()
    luminance = decode(mask_png(attributions, clip_percentile=100.0)).astype(int).sum(-1)
    assert np.unravel_index(np.argmax(luminance), luminance.shape) == (4, 10)
    assert np.count_nonzero(luminance == luminance.max()) == 1


def test_mask_colours_are_clipped_normalised_abs_sum():
    attributions = np.array([[[1, -1, 0], [0, 0, 0.5]], [[0, 0, -2], [4, 0, 0]]], np.float32)
    # |IG| mass [[2, 0.5], [2, 4]]; clipped at the max, then at the 50th percentile (2).
    expected_full = [[0.5, 0.125], [0.5, 1.0]]
    expected_clipped = [[1.0, 0.25], [1.0, 1.0]]
    for percentile, expected in ((100.0, expected_full), (50.0, expected_clipped)):
        got = decode(mask_png(attributions, clip_percentile=percentile, cmap="viridis"))
        want = matplotlib.colormaps["viridis"](np.array(expected), bytes=True)[..., :3]
        np.testing.assert_array_equal(got, want)


def test_sparse_mask_still_shows_its_hot_pixel():
    # 1 hot pixel in 400: the 99th percentile is 0, so the scale falls back to the maximum.
    got = decode(mask_png(one_hot(20, 20, 3, 17)))
    assert np.array_equal(got[3, 17], colour("inferno", 1.0))
    cold = np.delete(got.reshape(-1, 3), 3 * 20 + 17, axis=0)
    assert (cold == colour("inferno", 0.0)).all()


def test_overlay_with_alpha_zero_is_the_image():
    image = np.random.default_rng(2).uniform(size=(6, 11, 3)).astype(np.float32)
    attributions = np.random.default_rng(3).normal(size=(6, 11, 3)).astype(np.float32)
    got = decode(overlay_png(image, attributions, alpha=0.0)).astype(int)
    assert np.abs(got - np.rint(image * 255)).max() <= 1


def test_overlay_blends_the_mask_colour_where_it_is_hot():
    image = np.random.default_rng(4).uniform(size=(8, 8, 3)).astype(np.float32)
    got = decode(overlay_png(image, one_hot(8, 8, 2, 6), alpha=0.4)).astype(int)
    hot = 0.6 * image[2, 6] * 255 + 0.4 * colour("inferno", 1.0)
    cold = 0.6 * image[5, 1] * 255 + 0.4 * colour("inferno", 0.0)
    assert np.abs(got[2, 6] - np.rint(hot)).max() <= 1
    assert np.abs(got[5, 1] - np.rint(cold)).max() <= 1
    assert np.abs(got[2, 6] - np.rint(image[2, 6] * 255)).max() > 30


def test_signed_mask_is_symmetric_around_the_colormap_centre():
    attributions = channels([[2.0, -2.0], [0.0, -1.0]])
    got = decode(signed_mask_png(attributions, clip_percentile=100.0))
    for (row, col), value in {(0, 0): 1.0, (0, 1): 0.0, (1, 0): 0.5, (1, 1): 0.25}.items():
        assert np.array_equal(got[row, col], colour("RdBu_r", value)), (row, col)


def test_signed_mask_of_zero_attributions_is_the_centre_colour():
    got = decode(signed_mask_png(np.zeros((3, 4, 3), np.float32)))
    assert (got == colour("RdBu_r", 0.5)).all()


def test_pngs_use_fast_compression(monkeypatch):
    levels = []
    save = Image.Image.save

    def recording_save(self, fp, **options):
        levels.append(options.get("compress_level"))
        return save(self, fp, **options)

    monkeypatch.setattr(Image.Image, "save", recording_save)
    draw_all(np.ones((4, 4, 3), np.float32))
    assert levels == [1, 1, 1]


# ---- validation and degenerate maps -----------------------------------------------------

ALL_FUNCTIONS = {
    "mask_png": mask_png,
    "overlay_png": lambda a: overlay_png(np.zeros(np.shape(a)[:2] + (3,)), a),
    "signed_mask_png": signed_mask_png,
    "attribution_grid": attribution_grid,
    "attribution_statistics": attribution_statistics,
    "region_masses": lambda a: region_masses(a, [("all", (0, 0, 1e9, 1e9))]),
}


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_attributions_raise(name, bad):
    attributions = np.ones((4, 5, 3), np.float32)
    attributions[1, 2, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        ALL_FUNCTIONS[name](attributions)


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
@pytest.mark.parametrize("shape", [(4, 5), (0, 5, 3), (1, 4, 5, 3)])
def test_badly_shaped_attributions_raise(name, shape):
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        ALL_FUNCTIONS[name](np.ones(shape, np.float32))


@pytest.mark.parametrize(
    "attributions",
    [
        np.zeros((6, 9, 3), np.float32),
        np.full((6, 9, 3), 0.25, np.float32),
        np.full((6, 9, 3), -0.25, np.float32),
        np.full((1, 1, 3), 3.0, np.float32),
        np.zeros((1, 1, 3), np.float32),
    ],
    ids=["zeros", "constant", "negative-constant", "1x1", "1x1-zero"],
)
def test_degenerate_maps_give_finite_results(attributions):
    draw_all(attributions)
    grid = attribution_grid(attributions, cells=4)
    has_mass = bool(attributions.any())
    assert np.isfinite(grid).all()
    assert grid.sum() == pytest.approx(1.0 if has_mass else 0.0, abs=1e-6)
    assert all(np.isfinite(v) for v in attribution_statistics(attributions).values())
    assert region_masses(attributions, [("r", (0, 0, 2, 2))])[0]["mass_fraction"] >= 0.0


def test_constant_mask_is_uniform():
    got = decode(mask_png(np.full((5, 6, 3), 0.3, np.float32)))
    assert (got == colour("inferno", 1.0)).all()
    assert (decode(mask_png(np.zeros((5, 6, 3)))) == colour("inferno", 0.0)).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda a: mask_png(a, clip_percentile=0), "clip_percentile"),
        (lambda a: mask_png(a, clip_percentile=100.5), "clip_percentile"),
        (lambda a: signed_mask_png(a, clip_percentile=float("nan")), "clip_percentile"),
        (lambda a: mask_png(a, cmap="no-such-map"), "unknown colormap"),
        (lambda a: overlay_png(np.zeros((4, 5, 3)), a, alpha=1.5), "alpha"),
        (lambda a: overlay_png(np.zeros((5, 4, 3)), a), "attributions' size"),
        (lambda a: overlay_png(np.zeros((4, 5)), a), "attributions' size"),
        (lambda a: overlay_png(np.full((4, 5, 3), 255.0), a), "divide 8-bit images by 255"),
        (lambda a: overlay_png(np.full((4, 5, 3), np.nan), a), "NaN or inf"),
        (lambda a: attribution_grid(a, cells=0), "cells"),
        (lambda a: attribution_grid(a, cells=2.5), "cells"),
        (lambda a: attribution_grid(a, cells=True), "cells"),
    ],
)
def test_bad_options_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(np.ones((4, 5, 3), np.float32))


def test_overlay_clips_tiny_overshoot_from_resizing():
    image = np.full((2, 2, 3), 1.0 + 1e-4, np.float32)
    got = decode(overlay_png(image, np.zeros((2, 2, 3)), alpha=0.0))
    assert (got == 255).all()


# ---- attribution_grid ---------------------------------------------------------------------


def reference_grid(mass: np.ndarray, cells: int) -> np.ndarray:
    """Split every pixel into cells x cells equal sub-pixels: then each cell is a whole block."""
    height, width = mass.shape
    fine = np.kron(mass, np.ones((cells, cells))) / cells**2
    grid = fine.reshape(cells, height, cells, width).sum(axis=(1, 3))
    return grid / mass.sum()


def test_grid_matches_known_mass_per_cell_when_divisible():
    # 4 x 6 into 2 x 2 cells of 2 rows x 3 columns; |IG| mass per cell 4, 1, 0, 3 (total 8).
    signed = np.zeros((4, 6))
    signed[0, 0], signed[1, 2] = 1.0, -3.0  # cell (0, 0)
    signed[0, 3] = 1.0  # cell (0, 1)
    signed[3, 5], signed[2, 4] = 2.0, 1.0  # cell (1, 1)
    grid = attribution_grid(channels(signed), cells=2)
    assert grid.dtype == np.float32 and grid.shape == (2, 2)
    np.testing.assert_allclose(grid, [[4 / 8, 1 / 8], [0.0, 3 / 8]], atol=1e-6)


def test_grid_splits_a_straddling_pixel_by_area():
    # 5 x 5 into 2 x 2 cells: edges at 2.5, so the centre pixel is split in four equal parts.
    grid = attribution_grid(one_hot(5, 5, 2, 2), cells=2)
    np.testing.assert_allclose(grid, np.full((2, 2), 0.25), atol=1e-6)
    # Pixel (2, 0) straddles only the row edge.
    grid = attribution_grid(one_hot(5, 5, 2, 0), cells=2)
    np.testing.assert_allclose(grid, [[0.5, 0.0], [0.5, 0.0]], atol=1e-6)


@pytest.mark.parametrize(
    "shape, cells",
    [((7, 10), 3), ((224, 224), 14), ((13, 5), 14), ((3, 3), 6), ((1, 1), 4), ((1, 9), 2)],
)
def test_grid_is_area_exact_for_any_size(shape, cells):
    attributions = np.random.default_rng(5).normal(size=(*shape, 3)).astype(np.float32)
    grid = attribution_grid(attributions, cells=cells)
    mass = np.abs(attributions.astype(np.float64)).sum(-1)
    np.testing.assert_allclose(grid, reference_grid(mass, cells), atol=1e-6)
    assert grid.sum() == pytest.approx(1.0, abs=1e-6)


def test_grid_without_mass_is_zero():
    grid = attribution_grid(np.zeros((7, 7, 3)), cells=3)
    assert grid.dtype == np.float32 and not grid.any()


# ---- attribution_statistics ----------------------------------------------------------------


def test_statistics_of_a_single_hot_pixel():
    attributions = np.zeros((4, 8, 3), np.float32)
    attributions[2, 5] = (3.0, -1.0, 0.0)  # signed sum 2, |IG| mass 4
    stats = attribution_statistics(attributions)
    assert stats == pytest.approx(
        {
            "positive_mass": 2.0,
            "negative_mass": 0.0,
            "abs_mass": 4.0,
            "top5_share": 1.0,
            "top1_share": 1.0,
            "centroid_x": 5.5 / 8,
            "centroid_y": 2.5 / 4,
            "peak_x": 5.0,
            "peak_y": 2.0,
            "gini": 1 - 1 / 32,
        }
    )
    assert all(type(value) is float for value in stats.values())


def test_statistics_of_mixed_signs():
    # One row of 4 pixels; pixel 2 cancels across channels.
    attributions = np.array([[[1, 0, 0], [-1, -2, 0], [1, -1, 0], [0, 0, 0]]], np.float32)
    stats = attribution_statistics(attributions)
    # signed sums [1, -3, 0, 0]; |IG| mass [1, 3, 2, 0], total 6
    assert stats["positive_mass"] == pytest.approx(1.0)
    assert stats["negative_mass"] == pytest.approx(3.0)
    assert stats["abs_mass"] == pytest.approx(6.0)
    assert stats["top1_share"] == pytest.approx(3 / 6)  # ceil(4 * 1%) = 1 pixel
    assert stats["top5_share"] == pytest.approx(3 / 6)
    assert stats["centroid_x"] == pytest.approx((1 * 0.5 + 3 * 1.5 + 2 * 2.5) / 6 / 4)
    assert stats["centroid_y"] == pytest.approx(0.5)
    assert (stats["peak_x"], stats["peak_y"]) == (0.0, 0.0)
    # sorted [0, 1, 2, 3]: 2 * (1*0 + 2*1 + 3*2 + 4*3) / (4 * 6) - 5 / 4
    assert stats["gini"] == pytest.approx(2 * 20 / 24 - 5 / 4)


def test_statistics_of_an_even_spread():
    stats = attribution_statistics(np.full((7, 9, 3), 0.1, np.float32))
    # 63 pixels: top 5% is ceil(3.15) = 4 pixels, top 1% is ceil(0.63) = 1 pixel.
    assert stats["top5_share"] == pytest.approx(4 / 63)
    assert stats["top1_share"] == pytest.approx(1 / 63)
    assert stats["gini"] == pytest.approx(0.0, abs=1e-12) and stats["gini"] >= 0
    assert (stats["centroid_x"], stats["centroid_y"]) == pytest.approx((0.5, 0.5))
    assert (stats["peak_x"], stats["peak_y"]) == (0.0, 0.0)  # ties: first in row-major order


def test_statistics_without_mass():
    stats = attribution_statistics(np.zeros((3, 5, 3)))
    assert stats == {
        "positive_mass": 0.0,
        "negative_mass": 0.0,
        "abs_mass": 0.0,
        "top5_share": 0.0,
        "top1_share": 0.0,
        "centroid_x": 0.5,
        "centroid_y": 0.5,
        "peak_x": 0.0,
        "peak_y": 0.0,
        "gini": 0.0,
    }


def test_statistics_1x1():
    stats = attribution_statistics(np.full((1, 1, 3), -2.0))
    assert stats["negative_mass"] == 6.0 and stats["positive_mass"] == 0.0
    assert stats["top1_share"] == 1.0 and stats["gini"] == 0.0
    assert (stats["centroid_x"], stats["centroid_y"]) == (0.5, 0.5)


# ---- region_masses -----------------------------------------------------------------------


def region_map() -> np.ndarray:
    """4 x 6 map: positive mass 1, 2, 4 at (0, 0), (1, 1), (3, 4); one negative pixel; peak (3, 4)."""
    signed = np.zeros((4, 6))
    signed[0, 0], signed[1, 1], signed[3, 4] = 1.0, 2.0, 4.0
    signed[2, 2] = -10.0
    return channels(signed)


def by_name(results):
    return {r["name"]: (r["mass_fraction"], r["pointing_hit"]) for r in results}


def test_region_masses_whole_fractional_outside_and_overlapping_boxes():
    results = region_masses(
        region_map(),
        [
            ("image", (0, 0, 6, 4)),
            ("top-left", (0, 0, 2, 2)),  # pixels (0, 0) and (1, 1): 3 of 7
            ("overlaps-top-left", (1, 1, 2, 2)),  # pixel (1, 1) only: 2 of 7
            ("negative-only", (2, 2, 3, 3)),
            ("half-of-first", (0.5, 0, 1.5, 1)),  # half of pixel (0, 0): 0.5 of 7
            ("quarter-of-peak", (4, 3, 4.5, 3.5)),  # a quarter of pixel (3, 4), not its centre
            ("outside", (10, 10, 12, 12)),
            ("left-of-image", (-5, 0, 0, 4)),
            ("past-the-edge", (4, 3, 100, 100)),  # only the peak pixel is inside the image
            ("empty", (1, 1, 1, 3)),
        ],
    )
    assert [r["name"] for r in results][:2] == ["image", "top-left"]
    expected = {
        "image": (1.0, True),
        "top-left": (3 / 7, False),
        "overlaps-top-left": (2 / 7, False),
        "negative-only": (0.0, False),
        "half-of-first": (0.5 / 7, False),
        "quarter-of-peak": (1 / 7, False),
        "outside": (0.0, False),
        "left-of-image": (0.0, False),
        "past-the-edge": (4 / 7, True),
        "empty": (0.0, False),
    }
    got = by_name(results)
    for name, (fraction, hit) in expected.items():
        assert got[name][0] == pytest.approx(fraction, abs=1e-12), name
        assert got[name][1] is hit, name
    assert all(type(r["mass_fraction"]) is float for r in results)


@pytest.mark.parametrize(
    "box, hit",
    [
        ((4.5, 3, 5, 4), True),  # near x edge on the centre: inclusive
        ((4, 3.5, 5, 4), True),  # near y edge on the centre: inclusive
        ((4, 3, 4.5, 4), False),  # far x edge on the centre: exclusive
        ((4, 3, 5, 3.5), False),  # far y edge on the centre: exclusive
        ((4.49, 3.49, 4.51, 3.51), True),  # covers the centre only
        ((3, 2, 4.4, 4), False),  # covers part of the peak pixel, not its centre
    ],
)
def test_pointing_hit_uses_the_peak_pixel_centre_with_exclusive_far_edges(box, hit):
    # Peak pixel (3, 4) has centre (4.5, 3.5).
    assert region_masses(region_map(), [("box", box)])[0]["pointing_hit"] is hit


def test_region_masses_match_supersampling_on_random_fractional_boxes():
    rng = np.random.default_rng(6)
    attributions = channels(rng.normal(size=(9, 7)))
    signed = attributions.astype(np.float64).sum(-1)
    factor = 4  # boxes on a quarter-pixel lattice are whole sub-pixel blocks
    fine = np.kron(np.maximum(signed, 0), np.ones((factor, factor))) / factor**2
    regions = []
    for index in range(20):
        x0, x1 = np.sort(rng.integers(-8, 8 * factor, size=2)) / factor
        y0, y1 = np.sort(rng.integers(-8, 10 * factor, size=2)) / factor
        regions.append((f"r{index}", (x0, y0, x1, y1)))
    results = region_masses(attributions, regions)
    for (name, (x0, y0, x1, y1)), result in zip(regions, results):
        rows = slice(max(0, int(y0 * factor)), max(0, int(y1 * factor)))
        cols = slice(max(0, int(x0 * factor)), max(0, int(x1 * factor)))
        expected = fine[rows, cols].sum() / fine.sum()
        assert result["name"] == name
        assert result["mass_fraction"] == pytest.approx(expected, abs=1e-9), name


def test_region_masses_without_positive_mass():
    for attributions in (np.zeros((3, 3, 3)), np.full((3, 3, 3), -1.0)):
        assert region_masses(attributions, [("a", (0, 0, 3, 3)), ("b", (1, 1, 2, 2))]) == [
            {"name": "a", "mass_fraction": 0.0, "pointing_hit": False, "area_fraction": 1.0},
            {"name": "b", "mass_fraction": 0.0, "pointing_hit": False, "area_fraction": 1 / 9},
        ]


def test_region_area_fraction_is_the_share_of_the_image_inside_the_box():
    attributions = np.ones((4, 8, 3))
    results = region_masses(
        attributions,
        [
            ("half", (0, 0, 4, 4)),
            ("outside", (9, 0, 12, 4)),
            ("partly", (6, 2, 10, 6)),
            ("fractional", (0, 0, 1.5, 1)),
        ],
    )
    areas = [r["area_fraction"] for r in results]
    assert areas == pytest.approx([0.5, 0.0, 4 / 32, 1.5 / 32])
    # an even spread puts exactly the area's share of the mass in each box
    assert [r["mass_fraction"] for r in results] == pytest.approx(areas)
    assert region_masses(np.ones((2, 2, 3)), []) == []


@pytest.mark.parametrize(
    "region",
    [
        ("flipped-x", (3, 0, 1, 2)),
        ("flipped-y", (0, 3, 2, 1)),
        ("nan", (0, 0, float("nan"), 2)),
        ("three", (0, 0, 2)),
        (7, (0, 0, 1, 1)),
        ("no-box",),
        "just-a-name-of-eight",
    ],
)
def test_bad_regions_raise(region):
    with pytest.raises(ValueError, match="region"):
        region_masses(np.ones((4, 4, 3)), [region])


# ---- module hygiene ----------------------------------------------------------------------


def test_masks_needs_neither_tensorflow_nor_pyplot():
    path = Path(masks.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('masks', {str(path)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "bad = [m for m in ('tensorflow', 'matplotlib.pyplot', 'apache_beam') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("channels", [3, 1])
def test_mask_and_overlay_together_are_the_same_bytes_as_each_alone(channels):
    rng = np.random.default_rng(5)
    attributions = rng.normal(size=(12, 10, channels)).astype(np.float32)
    image = rng.random((12, 10, channels)).astype(np.float32)
    mask, overlay = masks.mask_and_overlay_pngs(image, attributions, clip_percentile=95)
    assert mask == masks.mask_png(attributions, clip_percentile=95)
    assert overlay == masks.overlay_png(image, attributions, clip_percentile=95)
    assert masks.mask_and_overlay_pngs(image, attributions, mask=False)[0] is None
    assert masks.mask_and_overlay_pngs(image, attributions, overlay=False)[1] is None
    with pytest.raises(ValueError, match="alpha"):
        masks.mask_and_overlay_pngs(image, attributions, alpha=1.5)
