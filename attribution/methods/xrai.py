"""XRAI (Kapishnikov et al., ICCV 2019): rank image regions by attribution density.

Segments: Felzenszwalb's graph segmentation (scikit-image) at scales 50, 100, 150, 250, 500
and 1200 (sigma 0.8, min_size 150) on the image rescaled to [-1, 1] and resized to 224 x 224,
each segment dilated by a disk of radius 5, as the authors' implementation (PAIR saliency).
Ranking: greedily add the segment whose not-yet-covered pixels have the highest mean
attribution (the per-pixel max over channels), skipping segments that add fewer than 50
pixels, until no segment is left; pixels no segment reached form a last region.

scikit-image and scipy are imported by the functions that segment: a job that runs no XRAI
(the summaries import this module for ``top_regions``) does not pay for them at start-up.
"""

from __future__ import annotations

import numpy as np

SCALES = (50, 100, 150, 250, 500, 1200)
SIGMA = 0.8
MIN_SEGMENT_SIZE = 150
SEGMENT_SIZE = (224, 224)
DILATION_RADIUS = 5
MIN_PIXEL_DIFF = 50


def segments(image: np.ndarray) -> list[np.ndarray]:
    """Boolean [H, W] masks of the multi-scale, dilated Felzenszwalb segments of ``image``."""
    from skimage import segmentation
    from skimage.morphology import disk
    from skimage.transform import resize

    image = np.asarray(image, np.float64)
    low, high = image.min(), image.max()
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    scaled = resize(
        scaled * 2.0 - 1.0,
        SEGMENT_SIZE,
        order=3,
        mode="constant",
        preserve_range=True,
        anti_aliasing=True,
    )
    footprint = disk(DILATION_RADIUS)
    masks = []
    for scale in SCALES:
        labels = segmentation.felzenszwalb(
            scaled, scale=scale, sigma=SIGMA, min_size=MIN_SEGMENT_SIZE
        )
        labels = resize(
            labels,
            image.shape[:2],
            order=0,
            preserve_range=True,
            mode="constant",
            anti_aliasing=False,
        ).astype(int)
        masks.extend(_dilated_masks(labels, footprint))
    return masks


def _dilated_masks(labels: np.ndarray, footprint: np.ndarray) -> list[np.ndarray]:
    """One dilated boolean mask per label value (lowest to highest, absent values give
    empty masks), each dilated inside its bounding box grown by the footprint's radius:
    the same pixels as dilating the whole image, at a fraction of the cost."""
    from scipy import ndimage
    from skimage.morphology import dilation

    low = labels.min()
    boxes = ndimage.find_objects(labels - low + 1)
    pad = footprint.shape[0] // 2
    masks = []
    for offset, box in enumerate(boxes):
        mask = np.zeros(labels.shape, bool)
        if box is not None:
            grown = tuple(
                slice(max(b.start - pad, 0), min(b.stop + pad, size))
                for b, size in zip(box, labels.shape)
            )
            mask[grown] = dilation(labels[grown] == low + offset, footprint=footprint)
        masks.append(mask)
    return masks


def rank_regions(
    attributions: np.ndarray, masks: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(heatmap [H, W] float: each pixel's region gain, ranks [H, W] int: 1 = the best
    region, list of {segment_area_fraction, gain} best first)."""
    attr = np.asarray(attributions, np.float64)
    if attr.ndim == 3:
        attr = attr.max(axis=-1)
    shape = attr.shape
    flat = attr.ravel()
    stack = np.array([m.ravel() for m in masks], bool).reshape(len(masks), -1)
    remaining = np.ones(len(masks), bool)
    # the not-yet-covered pixels of every segment, kept up to date as pixels get covered
    # (each pixel is subtracted once: no pass over all segments and pixels per step)
    counts = stack.sum(axis=1).astype(np.int64)
    sums = np.array([flat[m].sum() for m in stack])
    covered = np.zeros(flat.size, bool)
    heatmap = np.full(flat.size, -np.inf)
    trace = []  # (added pixels, gain)
    while True:
        remaining &= counts >= MIN_PIXEL_DIFF
        if not remaining.any():
            break
        gains = np.full(len(masks), -np.inf)
        gains[remaining] = sums[remaining] / counts[remaining]
        best = int(np.argmax(gains))
        added = stack[best] & ~covered
        trace.append((added, float(gains[best])))
        heatmap[added] = gains[best]
        covered |= added
        remaining[best] = False
        pixels = np.flatnonzero(added)
        hit = stack[:, pixels]
        counts -= hit.sum(axis=1)
        sums -= np.where(hit, flat[pixels], 0.0).sum(axis=1)
    rest = heatmap == -np.inf
    if rest.any():
        heatmap[rest] = flat[rest].mean()
    order = sorted(trace, key=lambda item: -item[1])
    if rest.any():
        order.append((rest, float(flat[rest].mean())))
    ranks = np.zeros(flat.size, np.int32)
    for rank, (pixels, _) in enumerate(order, start=1):
        ranks[pixels] = rank
    regions = [
        {"segment_area_fraction": float(pixels.mean()), "gain": gain} for pixels, gain in order
    ]
    return heatmap.reshape(shape), ranks.reshape(shape), regions


def top_regions(heatmap: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean [H, W]: the pixels of the highest-gain regions covering ``fraction`` of the
    image (the heat map at or above its (1 - fraction) quantile, as PAIR's visualisation)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return heatmap >= np.percentile(heatmap, 100 * (1 - fraction))
