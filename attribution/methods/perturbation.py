"""Forward-only methods: Occlusion (Zeiler and Fergus 2014) and RISE (Petsiuk et al. 2018).

Both perturb the image many times and read the scores, never a gradient. Every perturbed
image is a row; rows of all images of a batch are packed into the engine's forward calls
(``IntegratedGradients.scores``), at most ``batch_size`` rows a call, built one call at a
time so memory stays at one call whatever the number of patches or masks. One row serves
every target of its image (the scores of all classes come back).

- **Occlusion**: a ``window`` x ``window`` patch, moved by ``stride`` pixels (and once more
  against the bottom / right edge when the stride does not land there, so every pixel is
  covered), is replaced by the row's baseline. A pixel's attribution is the mean, over the
  patches covering it, of F(x) - F(x with the patch replaced) (Captum's convention; Xplique
  sums instead of averaging, and skips the edge patch).
- **RISE**: ``masks`` binary ``grid`` x ``grid`` grids, each cell kept with probability
  ``p``, upsampled bilinearly (half-pixel centres, edges clamped, as ``tf.image.resize``) to
  ``(grid + 1) * ceil(H / grid)`` pixels a side and cropped at a random shift below one cell
  (the paper). The perturbed image is ``x * M + baseline * (1 - M)`` (with the black baseline,
  the paper's ``x * M``); the map is ``sum_i F(perturbed_i) M_i / (masks * p)``. Masks are drawn
  from ``--seed`` alone: every image of a run sees the same masks (as the paper and Xplique),
  and reruns reproduce. ``split_half_correlation`` is the Pearson correlation between the maps
  of the first and second half of the masks: low says more masks are needed.
"""

from __future__ import annotations

import math

import numpy as np

from attribution.baselines import seed_for
from attribution.methods.results import pixel_map


def anchors(length: int, window: int, stride: int) -> np.ndarray:
    """Start offsets of the patches along one axis: 0, stride, ... and length - window."""
    if not 1 <= window <= length or stride < 1:
        raise ValueError(
            f"window ({window}) must be from 1 to the image side {length}, stride ({stride}) >= 1"
        )
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return np.array(starts, np.int64)


def occlusion(engine, images, baselines, targets, window: int, stride: int):
    """One list of Attributions per image (targets by rank)."""
    n = len(images)
    height, width = images[0].shape[:2]
    patches = [
        (y, x) for y in anchors(height, window, stride) for x in anchors(width, window, stride)
    ]
    scores = engine.scores(np.concatenate([np.stack(images), np.stack(baselines)]))
    image_scores, baseline_scores = scores[:n], scores[n:]
    chosen = [list(targets.select(s)) for s in image_scores]
    # per image: [patches, its targets] score drops (only the targets: 1000 classes x 3025
    # patches x 16 images would be 390 MB)
    drops = [np.zeros((len(patches), len(c)), np.float64) for c in chosen]
    rows = [(i, p) for i in range(n) for p in range(len(patches))]

    for chunk in _chunks(rows, engine.batch_size):
        built = np.stack([images[i] for i, _ in chunk])
        for k, (i, p) in enumerate(chunk):
            y, x = patches[p]
            built[k, y : y + window, x : x + window] = baselines[i][y : y + window, x : x + window]
        for (i, p), row in zip(chunk, engine.scores(built)):
            drops[i][p] = image_scores[i, chosen[i]] - row[chosen[i]]
    cover = np.zeros((height, width), np.float64)
    for y, x in patches:
        cover[y : y + window, x : x + window] += 1
    out = []
    for i in range(n):
        group = []
        for k, t in enumerate(chosen[i]):
            total = np.zeros((height, width), np.float64)
            for (y, x), drop in zip(patches, drops[i][:, k]):
                total[y : y + window, x : x + window] += drop
            group.append(
                pixel_map(
                    key=i,
                    target=t,
                    image_scores=image_scores[i],
                    heatmap=total / cover,
                    channels=images[i].shape[-1],
                    baseline_score=float(baseline_scores[i, t]),
                    baseline_predicts_target=int(np.argmax(baseline_scores[i])) == t,
                    evaluations=0,
                )
            )
        out.append(group)
    return out


def bilinear_matrix(length: int, source: int) -> np.ndarray:
    """[length, source]: bilinear upsampling of ``source`` samples to ``length`` as a matrix
    (half-pixel centres, edges clamped: tf.image.resize's 'bilinear')."""
    u = np.clip((np.arange(length) + 0.5) * source / length - 0.5, 0, source - 1)
    low = np.floor(u).astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    matrix = np.zeros((length, source))
    np.add.at(matrix, (np.arange(length), low), 1 - (u - low))
    np.add.at(matrix, (np.arange(length), high), u - low)
    return matrix


class RiseMasks:
    """The run's masks, drawn from ``seed``: the grids and shifts are kept (N x grid x grid),
    each mask [H, W] is made when a call needs it."""

    def __init__(self, shape: tuple[int, int], count: int, grid: int, p: float, seed: int):
        height, width = shape
        rng = np.random.default_rng(seed_for("rise", seed))
        self.grids = (rng.random((count, grid, grid)) < p).astype(np.float64)
        cells = (math.ceil(height / grid), math.ceil(width / grid))
        self.shifts = np.stack(
            [rng.integers(0, cells[0], count), rng.integers(0, cells[1], count)], axis=1
        )
        self.rows = bilinear_matrix((grid + 1) * cells[0], grid)
        self.cols = bilinear_matrix((grid + 1) * cells[1], grid)
        self.shape = (height, width)

    def __call__(self, index: int) -> np.ndarray:
        dy, dx = self.shifts[index]
        rows = self.rows[dy : dy + self.shape[0]]
        cols = self.cols[dx : dx + self.shape[1]]
        return rows @ self.grids[index] @ cols.T


def rise(engine, images, baselines, targets, count: int, grid: int, p: float, seed: int):
    """One list of (Attribution, split_half_correlation) per image (targets by rank)."""
    n = len(images)
    shape = images[0].shape[:2]
    masks = RiseMasks(shape, count, grid, p, seed)
    scores = engine.scores(np.concatenate([np.stack(images), np.stack(baselines)]))
    image_scores, baseline_scores = scores[:n], scores[n:]
    chosen = [list(targets.select(s)) for s in image_scores]
    # per image: [2 halves, its targets, H, W] sums of F(perturbed) * mask
    sums = [np.zeros((2, len(c), *shape), np.float64) for c in chosen]
    rows = [(j, i) for j in range(count) for i in range(n)]  # mask-major: a call shares masks
    for chunk in _chunks(rows, engine.batch_size):
        made = {
            j: masks(j).astype(np.float32)[..., None] for j in dict.fromkeys(j for j, _ in chunk)
        }
        built = [images[i] * made[j] + baselines[i] * (1 - made[j]) for j, i in chunk]
        for (j, i), row in zip(chunk, engine.scores(np.stack(built))):
            sums[i][int(j >= count // 2)] += row[chosen[i], None, None] * made[j][None, ..., 0]
    out = []
    for i in range(n):
        group = []
        for k, t in enumerate(chosen[i]):
            halves = sums[i][:, k]
            result = pixel_map(
                key=i,
                target=t,
                image_scores=image_scores[i],
                heatmap=halves.sum(axis=0) / (count * p),
                channels=images[i].shape[-1],
                baseline_score=float(baseline_scores[i, t]),
                baseline_predicts_target=int(np.argmax(baseline_scores[i])) == t,
                evaluations=0,
            )
            group.append((result, correlation(halves[0], halves[1])))
        out.append(group)
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two maps; None when either is constant (undefined)."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    norm = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / norm) if norm > 0 else None


def _chunks(rows: list, size: int):
    """The rows a model call at a time (the perturbed images are built per call: memory
    stays at one call)."""
    size = max(1, int(size))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
