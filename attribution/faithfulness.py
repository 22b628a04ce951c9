"""Does the attribution point at what the model uses? Deletion/insertion curves (RISE, Petsiuk
et al. 2018), MuFidelity (Bhatt et al. 2020) and region ablation, computed with forward passes
only.

For one (image, target) row with attribution map A, pixels are ordered by their |IG| mass
(sum of |A| over channels, highest first, ties broken stably). At K fractions f evenly spaced
in [0, 1]:

- **deletion**: the top ``round(f * H * W)`` pixels are replaced by the row's baseline; a
  faithful map makes the target score fall fast;
- **insertion**: starting from a blurred copy of the image (the ``blur`` baseline's kernel),
  the top pixels are put back; a faithful map makes the score rise fast.

The same K points are read with a random pixel order seeded by the image's content (reruns
reproduce) as a control. AUC is the trapezoid area under the curve over f in [0, 1] divided
by F(x), the target score of the unmodified image (NaN when F(x) is 0), so rows compare
across images. Attribution order beats random when ``deletion_auc < deletion_auc_random``
(and ``insertion_auc > insertion_auc_random``).

Endpoints cost no model call: deletion at 0 is F(x) and at 1 is F(baseline), insertion at 1
is F(x) (all known from the attribution), and insertion at 0 is F(blurred) for both orders
(known when the baseline is the blur). Everything else is a forward row, packed across all
rows of a batch into the engine's forward calls (``IntegratedGradients.scores``):
no new traced shape and no retrace.

**Fill** (``--deletion_fill``): what a removed pixel becomes. ``baseline`` (the default, as
above): deletion sets it to the row's baseline and insertion starts from the blurred image.
``blur``: removed pixels take the blurred image's values in both curves (deletion then ends at
F(blurred), shared with insertion's start). ``road`` (Rong et al. 2022, "remove and debias"):
removed pixels are imputed from the pixels that remain, each the weighted mean of its 8
neighbours (1/6 edge, 1/12 diagonal; weights renormalised at the image border), solved as one
sparse linear system with the remaining pixels fixed, plus Gaussian noise (sigma
``ROAD_NOISE``, seeded per image and row); with every pixel removed (deletion's end,
insertion's start) nothing is left to impute from, so the image's mean colour is used (ROAD's
fixed imputer), with the same noise. The fill applies to MuFidelity's subsets too.

**MuFidelity** (Bhatt et al. 2020, def. 3): the Pearson correlation over S random subsets of
the image between the attribution summed over the subset (signed, over its pixels and
channels) and the score drop F(x) - F(x with the subset removed). Subsets are drawn on a grid
of G x G cells (``--mufidelity_grid``, default 9 as Xplique's ``grid_size``; 0 draws single
pixels, the paper's original), each exactly ``round(fraction * cells)`` cells (at least one,
never all), seeded by the image's content so reruns reproduce. A side with no variance (the
score never moves, or the map sums the same over every subset) gives 0, as in Xplique.
S forward rows a row, packed like the curves.

**Region ablation**: each named box is replaced by the baseline (pixels straddling the box
edge by the fraction of their area inside it) and the target score read again; one forward
row per region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from attribution.baselines import make_baseline, seed_for

KINDS = ("deletion", "insertion", "mufidelity")
CURVES = ("deletion", "insertion")
FILLS = ("baseline", "blur", "road")
DEFAULT_POINTS = 16
DEFAULT_SUBSETS, DEFAULT_FRACTION, DEFAULT_GRID = 128, 0.2, 9
MIN_SUBSETS = 3  # a correlation over 2 points is always +1 or -1
MAX_SUBSETS = 4096  # one forward row each per attributed row: 32x the default
MAX_GRID = 1024  # cells a side; a side longer than the image counts each pixel once
ROAD_NOISE = 0.01  # standard deviation of ROAD's imputation noise, on [0, 1] pixels
# ROAD's noisy linear imputation: a removed pixel is this weighted mean of its neighbours
ROAD_NEIGHBOURS = (
    ((-1, -1), 1 / 12),
    ((-1, 0), 1 / 6),
    ((-1, 1), 1 / 12),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((1, 1), 1 / 12),
)


def parse_kinds(text: str) -> tuple[str, ...]:
    """'deletion,insertion' | 'deletion,insertion,mufidelity' | ... | 'none' -> the checks to
    compute (deletion and insertion curves, MuFidelity)."""
    text = str(text).strip()
    if text == "none":
        return ()
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ValueError(
            f"--faithfulness must be 'none' or a comma list of {', '.join(KINDS)}; got {text!r}"
        )
    return kinds


MAX_POINTS = 1025  # 4 x (K - 2) + 1 forward rows a row: 1025 points is 4093, 250x the default


def fractions(points: int) -> np.ndarray:
    """K fractions evenly spaced from 0 to 1 (both included)."""
    if int(points) < 2:
        raise ValueError(
            f"--faithfulness_points must be >= 2 (0% and 100% are both points), got {points!r}"
        )
    if int(points) > MAX_POINTS:
        raise ValueError(
            f"--faithfulness_points must be at most {MAX_POINTS} (each point is 4 model rows per "
            f"attributed row; the default 16 reads the curves well), got {points!r}"
        )
    return np.linspace(0.0, 1.0, int(points))


def check_mufidelity(subsets: int, fraction: float, grid: int) -> None:
    """--mufidelity_subsets, --mufidelity_fraction, --mufidelity_grid within their limits."""
    if not MIN_SUBSETS <= int(subsets) <= MAX_SUBSETS:
        raise ValueError(
            f"--mufidelity_subsets must be from {MIN_SUBSETS} to {MAX_SUBSETS} (a correlation "
            f"needs at least 3 subsets; each is one model row per attributed row), got {subsets!r}"
        )
    if not 0 < float(fraction) < 1:
        raise ValueError(
            f"--mufidelity_fraction must be between 0 and 1, both excluded (the share of the "
            f"image each subset removes), got {fraction!r}"
        )
    if int(grid) != 0 and not 2 <= int(grid) <= MAX_GRID:
        raise ValueError(
            f"--mufidelity_grid must be 0 (single-pixel subsets) or from 2 to {MAX_GRID} "
            f"cells a side, got {grid!r}"
        )


# --mufidelity_subsets x the cells of the model input: one float64 draw each per image (512 MB
# here; 4096 subsets of single pixels of a 224 x 224 input drew 1.6 GB and kept as much again)
MAX_SUBSET_DRAWS = 2**26


def check_mufidelity_size(subsets: int, grid: int, image_size: tuple[int, int]) -> None:
    """ValueError when the subsets of a model input this size draw too much memory an image."""
    cells = cell_map(image_size, grid)[1]
    if subsets * cells > MAX_SUBSET_DRAWS:
        raise ValueError(
            f"--mufidelity_subsets {subsets} x {cells} cells of the {image_size[0]}x"
            f"{image_size[1]} model input (--mufidelity_grid {grid}) is over {MAX_SUBSET_DRAWS} "
            f"random draws an image: pass fewer subsets or a --mufidelity_grid from 2 to "
            f"{math.isqrt(MAX_SUBSET_DRAWS // subsets)}"
        )


def cell_map(shape: tuple[int, int], grid: int) -> tuple[np.ndarray, int]:
    """([H, W] cell index of each pixel, number of cells): ``grid`` x ``grid`` cells of
    near-equal size (pixel row y is in cell row floor(y * rows / H)); 0, or a side longer
    than the image's, makes each pixel its own cell along that side."""
    height, width = shape
    rows = height if grid == 0 else min(grid, height)
    cols = width if grid == 0 else min(grid, width)
    cell_rows = np.arange(height) * rows // height
    cell_cols = np.arange(width) * cols // width
    return cell_rows[:, None] * cols + cell_cols[None, :], rows * cols


def subset_cells(cells: int, subsets: int, fraction: float, key: str, seed: int = 0) -> np.ndarray:
    """[subsets, cells] bool: the cells each subset removes, exactly round(fraction * cells)
    of them (at least 1, at most cells - 1), seeded by the image key: reruns reproduce."""
    size = int(min(cells - 1, max(1, np.rint(fraction * cells))))
    rng = np.random.default_rng(seed_for(f"mufidelity:{key}", seed))
    chosen = np.argpartition(rng.random((subsets, cells)), size - 1, axis=1)[:, :size]
    out = np.zeros((subsets, cells), bool)
    np.put_along_axis(out, chosen, True, axis=1)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors in float64; 0 when either is constant (Xplique's
    convention for a correlation that is undefined)."""
    a = np.asarray(a, np.float64) - np.mean(a, dtype=np.float64)
    b = np.asarray(b, np.float64) - np.mean(b, dtype=np.float64)
    scale = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / scale) if scale > 0 else 0.0


def road_impute(
    image: np.ndarray, removed: np.ndarray, *, noise: float = ROAD_NOISE, rng=None
) -> np.ndarray:
    """``image`` ([H, W, C] in [0, 1]) with the pixels where ``removed`` ([H, W] bool) is True
    imputed by ROAD's noisy linear imputation (Rong et al. 2022): each removed pixel is the
    weighted mean of its neighbours inside the image (ROAD_NEIGHBOURS, renormalised at the
    border), the kept pixels fixed: one sparse linear system (scipy's sparse LU), solved for
    all channels at once. Every connected group of removed pixels touches a kept one unless
    all are removed, so the system has one solution; with all removed the image's mean colour
    is used. Then Gaussian noise of standard deviation ``noise`` (from ``rng``) on the removed
    pixels, and the result clipped to [0, 1]."""
    image = np.asarray(image, np.float32)
    height, width, channels = image.shape
    flat = image.reshape(-1, channels).astype(np.float64)
    unknown = np.flatnonzero(np.asarray(removed, bool).ravel())
    if unknown.size == 0:
        return image.copy()
    if unknown.size == flat.shape[0]:  # nothing left to impute from: ROAD's mean imputer
        values = np.repeat(flat.mean(axis=0, keepdims=True), unknown.size, axis=0)
    else:
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import splu

        count = unknown.size
        variable = np.full(flat.shape[0], -1)
        variable[unknown] = np.arange(count)
        ys, xs = np.divmod(unknown, width)
        diagonal = np.zeros(count)
        right = np.zeros((count, channels))
        rows, cols, weights = [], [], []
        for (dy, dx), weight in ROAD_NEIGHBOURS:
            y, x = ys + dy, xs + dx
            inside = np.flatnonzero((y >= 0) & (y < height) & (x >= 0) & (x < width))
            diagonal[inside] += weight
            neighbour = y[inside] * width + x[inside]
            j = variable[neighbour]
            known = j < 0
            right[inside[known]] += weight * flat[neighbour[known]]  # rows unique per offset
            rows.append(inside[~known])
            cols.append(j[~known])
            weights.append(np.full(int((~known).sum()), -weight))
        rows.append(np.arange(count))
        cols.append(np.arange(count))
        weights.append(diagonal)
        system = csc_matrix(
            (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
            shape=(count, count),
        )
        values = splu(system).solve(right)
    if noise:
        rng = rng if rng is not None else np.random.default_rng(0)
        values = values + noise * rng.standard_normal(values.shape)
    flat[unknown] = values
    return np.clip(flat, 0.0, 1.0).reshape(image.shape).astype(np.float32)


def attribution_order(attributions: np.ndarray) -> np.ndarray:
    """Flat pixel indices by |IG| mass (sum of |A| over channels), highest first, stable."""
    mass = np.abs(np.asarray(attributions, np.float64)).sum(axis=-1).ravel()
    return np.argsort(-mass, kind="stable")


def random_order(pixels: int, key: str, seed: int = 0) -> np.ndarray:
    """A random pixel order seeded by the image key (its content hash): reruns reproduce."""
    return np.random.default_rng(seed_for(f"faithfulness:{key}", seed)).permutation(pixels)


def counts(points: int, pixels: int) -> np.ndarray:
    """Pixels changed at each fraction: round(f * pixels)."""
    return np.rint(fractions(points) * pixels).astype(np.int64)


def auc(curve: np.ndarray, reference: float) -> float:
    """Trapezoid area over fraction in [0, 1], divided by ``reference`` (F(x))."""
    curve = np.asarray(curve, np.float64)
    x = np.linspace(0.0, 1.0, len(curve))
    area = float(np.sum((curve[1:] + curve[:-1]) * np.diff(x)) / 2)
    return area / reference if reference != 0 else float("nan")


def box_weights(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """[H, W] share of each pixel's area inside the box (x0, y0, x1, y1), model pixels."""
    height, width = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    rows = np.clip(np.minimum(y1, np.arange(height) + 1) - np.maximum(y0, np.arange(height)), 0, 1)
    cols = np.clip(np.minimum(x1, np.arange(width) + 1) - np.maximum(x0, np.arange(width)), 0, 1)
    return np.outer(rows, cols)


@dataclass
class Item:
    """One attributed row to check: its image and baseline ([H, W, 3] float32), the key that
    seeds the random order (the image's content hash), and boxes to ablate (model pixels)."""

    image: np.ndarray
    baseline: np.ndarray
    attributions: np.ndarray
    target: int
    target_score: float  # F(x), as attributed
    baseline_score: float  # F(baseline)
    key: str
    boxes: Sequence[tuple[str, Sequence[float]]] = ()

    @classmethod
    def of(cls, result, image, baseline, key: str, boxes=()) -> "Item":
        """The Item of an engine ``Attribution`` of ``image`` from ``baseline``."""
        return cls(
            image=image,
            baseline=baseline,
            attributions=result.attributions,
            target=result.target,
            target_score=result.target_score,
            baseline_score=result.baseline_score,
            key=key,
            boxes=boxes,
        )


@dataclass
class Evidence:
    """What the forward rows said about one Item."""

    points: int = 0
    curves: dict = field(default_factory=dict)  # 'deletion' | 'deletion_random' | ... -> [K]
    aucs: dict = field(default_factory=dict)  # same keys -> normalised AUC
    ablations: list = field(default_factory=list)  # [{'name', 'ablation_score', 'ablation_drop'}]
    forward_rows: int = 0  # model rows spent on this item
    mufidelity: float | None = None  # None when not asked


class _Slots:
    """Values being filled in: the known ones now, the rest from forward rows."""

    def __init__(self, size: int):
        self.values = np.full(size, np.nan)


def evaluate(
    engine,
    items: Sequence[Item],
    *,
    kinds: Sequence[str] = CURVES,
    points: int = DEFAULT_POINTS,
    seed: int = 0,
    blur_baseline: bool = False,
    fill: str = "baseline",
    subsets: int = DEFAULT_SUBSETS,
    fraction: float = DEFAULT_FRACTION,
    grid: int = DEFAULT_GRID,
    road_noise: float = ROAD_NOISE,
) -> list[Evidence]:
    """Curves, MuFidelity and ablations for every item, forward rows packed into the engine's
    calls.

    ``engine`` needs ``scores(images) -> [N, C]`` (after the attributed score transform) and
    ``batch_size``. ``blur_baseline``: the items' baselines are the blur, so F(blurred) is
    already known (``baseline_score``). ``fill``: what a removed pixel becomes (FILLS);
    ``subsets``, ``fraction``, ``grid``: MuFidelity's subsets; ``road_noise``: the noise of the
    ``road`` fill.
    """
    if fill not in FILLS:
        raise ValueError(f"--deletion_fill must be one of {', '.join(FILLS)}, got {fill!r}")
    curve_kinds = [k for k in kinds if k in CURVES]
    rows: list[tuple[int, _Slots, int, object]] = []  # (item, slots, index, make image)
    pending = []
    for i, item in enumerate(items):
        curves, insertions, ends = {}, [], []
        empty = _Slots(1)  # F(every pixel removed): insertion's start, deletion's end by fill
        removal = _Removal(item, fill, seed, road_noise)
        if curve_kinds:
            pixels = item.image.shape[0] * item.image.shape[1]
            n = counts(points, pixels)
            orders = {
                "": attribution_order(item.attributions),
                "_random": random_order(pixels, item.key, seed),
            }
            if "insertion" in curve_kinds or fill != "baseline":
                if blur_baseline and fill != "road":
                    removal.blurred = item.baseline
                    empty.values[0] = item.baseline_score
                else:
                    rows.append((i, empty, 0, removal.everything))
            for kind in curve_kinds:
                for suffix, order in orders.items():
                    curve = curves[kind + suffix] = _Slots(points)
                    if kind == "deletion":
                        curve.values[0] = item.target_score
                        if fill == "baseline":
                            curve.values[-1] = item.baseline_score
                        else:
                            ends.append(curve)
                    else:
                        curve.values[-1] = item.target_score
                        insertions.append(curve)
                    point = removal.curve(kind, order, f"{kind}{suffix}", n[points - 2])
                    rows.extend((i, curve, k, point(n[k], k)) for k in range(1, points - 1))
        mu = None
        if "mufidelity" in kinds:
            cells, count = cell_map(item.image.shape[:2], grid)
            chosen = subset_cells(count, subsets, fraction, item.key, seed)
            drops = _Slots(subsets)
            rows.extend(
                (i, drops, s, removal.subset(cells, chosen[s], f"mufidelity:{s}"))
                for s in range(subsets)
            )
            mu = (cells, chosen, drops)
        ablations = []
        for name, box in item.boxes:
            weight = box_weights(item.image.shape[:2], box)[..., None].astype(np.float32)
            slot = _Slots(1)
            ablations.append((name, slot))
            rows.append(
                (i, slot, 0, lambda x=item.image, b=item.baseline, w=weight: x * (1 - w) + b * w)
            )
        pending.append((curves, insertions, ends, empty, ablations, mu))

    forward_rows = _score_rows(engine, items, rows)

    out = []
    for i, (item, (curves, insertions, ends, empty, ablations, mu)) in enumerate(
        zip(items, pending)
    ):
        for curve in insertions:
            curve.values[0] = empty.values[0]
        for curve in ends:
            curve.values[-1] = empty.values[0]
        out.append(
            Evidence(
                points=points if curve_kinds else 0,
                curves={name: c.values.astype(np.float32) for name, c in curves.items()},
                aucs={name: auc(c.values, item.target_score) for name, c in curves.items()},
                ablations=[
                    {
                        "name": name,
                        "ablation_score": float(slot.values[0]),
                        "ablation_drop": float(item.target_score - slot.values[0]),
                    }
                    for name, slot in ablations
                ],
                forward_rows=forward_rows[i],
                mufidelity=None if mu is None else _mufidelity(item, *mu),
            )
        )
    return out


def _mufidelity(item: Item, cells: np.ndarray, chosen: np.ndarray, scores: _Slots) -> float:
    """Pearson correlation over the subsets of (attribution summed over the subset, F(x) -
    F(x with the subset removed))."""
    mass = np.asarray(item.attributions, np.float64).sum(axis=-1).ravel()
    per_cell = np.bincount(cells.ravel(), weights=mass, minlength=chosen.shape[1])
    return pearson(chosen.astype(np.float64) @ per_cell, item.target_score - scores.values)


class _Removal:
    """Makers of an item's images with pixels removed, by the fill: the ``baseline`` fill
    takes deletion's removed pixels from the row's baseline and starts insertion from the
    blurred image."""

    def __init__(self, item: Item, fill: str, seed: int, noise: float):
        self.item, self.fill, self.seed, self.noise = item, fill, seed, noise
        self._blurred = None

    @property
    def blurred(self) -> np.ndarray:
        if self._blurred is None:
            self._blurred = make_baseline("blur", self.item.image)
        return self._blurred

    @blurred.setter
    def blurred(self, value: np.ndarray) -> None:
        self._blurred = value

    def _road(self, removed: np.ndarray, tag: str) -> np.ndarray:
        rng = np.random.default_rng(seed_for(f"road:{self.item.key}:{tag}", self.seed))
        return road_impute(self.item.image, removed, noise=self.noise, rng=rng)

    def everything(self) -> np.ndarray:
        """Every pixel removed: the blurred image (fills baseline and blur), ROAD's mean."""
        if self.fill == "road":
            return self._road(np.ones(self.item.image.shape[:2], bool), "all")
        return self.blurred

    def curve(self, kind: str, order: np.ndarray, name: str, last: int):
        """The maker of each point of a curve: ``point(count, k)`` makes the image with the
        first ``count`` pixels of ``order`` (flat indices) removed (deletion) or only those
        kept (insertion); ``k`` tags ROAD's noise; ``last`` is the curve's largest count."""
        image = self.item.image
        if self.fill == "road":

            def point(count: int, k: int):
                def make():
                    removed = np.zeros(image.shape[0] * image.shape[1], bool)
                    removed[order[:count]] = True
                    removed = removed if kind == "deletion" else ~removed
                    return self._road(removed.reshape(image.shape[:2]), f"{name}:{k}")

                return make

            return point
        if kind == "insertion":
            sweep = _Sweep(self.blurred, image, order, last)
        else:
            sweep = _Sweep(image, self._source(), order, last)
        return lambda count, k: lambda: sweep.at(count)

    def _source(self) -> np.ndarray:
        """Where removed pixels take their values from (fills baseline and blur)."""
        return self.item.baseline if self.fill == "baseline" else self.blurred

    def subset(self, cells: np.ndarray, chosen: np.ndarray, tag: str):
        """MuFidelity: the pixels of the chosen cells removed."""

        def make():
            removed = chosen[cells]
            if self.fill == "road":
                return self._road(removed, tag)
            return np.where(removed[..., None], self._source(), self.item.image)

        return make


class _Sweep:
    """``start`` with the first pixels of ``order`` (flat indices) taken from ``fill``, for
    counts asked in rising order as a curve's rows are: each point copies only the pixels it
    adds to the previous one, the values copied exactly. ``at`` returns its own buffer:
    ``_score_rows`` copies each row into the call's batch before making the next. The buffer
    exists from the curve's first point to its last only (a curve's rows are consecutive),
    so memory stays at a few images, not one per curve of the batch."""

    def __init__(self, start: np.ndarray, fill: np.ndarray, order: np.ndarray, last: int):
        self.start, self.fill, self.order = start, fill.reshape(-1, fill.shape[-1]), order
        self.last, self.image, self.count = last, None, 0

    def at(self, count: int) -> np.ndarray:
        if self.image is None or count < self.count:  # the first point, or out of order
            self.image, self.count = self.start.copy(), 0
        image = self.image
        flat = image.reshape(-1, image.shape[-1])
        added = self.order[self.count : count]
        flat[added] = self.fill[added]
        self.count = count
        if count >= self.last:
            self.image = None
        return image  # the caller copies it before asking for the next point


def _score_rows(engine, items, rows) -> list[int]:
    """Build the row images a call at a time (memory stays at one call), score them into
    their slots; returns the forward rows spent per item."""
    spent = [0] * len(items)
    size = max(1, int(engine.batch_size))
    shape = items[0].image.shape if items else ()
    for lo in range(0, len(rows), size):
        chunk = rows[lo : lo + size]
        batch = np.empty((len(chunk), *shape), np.float32)
        for j, (*_, make) in enumerate(chunk):
            batch[j] = make()  # a copy: a curve's maker reuses its buffer
        scores = engine.scores(batch)
        for (i, slots, k, _), row_scores in zip(chunk, scores):
            slots.values[k] = float(row_scores[items[i].target])
            spent[i] += 1
    return spent
