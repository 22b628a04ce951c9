"""Does the attribution point at what the model uses? Deletion/insertion curves and region
ablation, computed with forward passes only (RISE, Petsiuk et al. 2018).

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

**Region ablation**: each named box is replaced by the baseline (pixels straddling the box
edge by the fraction of their area inside it) and the target score read again; one forward
row per region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from attribution.baselines import make_baseline, seed_for

KINDS = ("deletion", "insertion")
DEFAULT_POINTS = 16


def parse_kinds(text: str) -> tuple[str, ...]:
    """'deletion,insertion' | 'deletion' | 'insertion' | 'none' -> the curves to compute."""
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


class _Slots:
    """Values being filled in: the known ones now, the rest from forward rows."""

    def __init__(self, size: int):
        self.values = np.full(size, np.nan)


def evaluate(
    engine,
    items: Sequence[Item],
    *,
    kinds: Sequence[str] = KINDS,
    points: int = DEFAULT_POINTS,
    seed: int = 0,
    blur_baseline: bool = False,
) -> list[Evidence]:
    """Curves and ablations for every item, forward rows packed into the engine's calls.

    ``engine`` needs ``scores(images) -> [N, C]`` (after the attributed score transform) and
    ``batch_size``. ``blur_baseline``: the items' baselines are the blur, so F(blurred) is
    already known (``baseline_score``).
    """
    rows: list[tuple[int, _Slots, int, object]] = []  # (item, slots, index, make image)
    pending = []
    for i, item in enumerate(items):
        curves, insertions = {}, []
        blur_score = _Slots(1)
        if kinds:
            pixels = item.image.shape[0] * item.image.shape[1]
            n = counts(points, pixels)
            orders = {
                "": attribution_order(item.attributions),
                "_random": random_order(pixels, item.key, seed),
            }
            blurred = None
            if "insertion" in kinds:
                blurred = item.baseline if blur_baseline else make_baseline("blur", item.image)
                if blur_baseline:
                    blur_score.values[0] = item.baseline_score
                else:
                    rows.append((i, blur_score, 0, lambda b=blurred: b))
            for kind in kinds:
                for suffix, order in orders.items():
                    curve = curves[kind + suffix] = _Slots(points)
                    if kind == "deletion":
                        curve.values[0], curve.values[-1] = item.target_score, item.baseline_score
                        start, fill = item.image, item.baseline
                    else:
                        curve.values[-1] = item.target_score
                        insertions.append(curve)
                        start, fill = blurred, item.image
                    rows.extend(
                        (i, curve, k, _replace(start, fill, order[: n[k]]))
                        for k in range(1, points - 1)
                    )
        ablations = []
        for name, box in item.boxes:
            weight = box_weights(item.image.shape[:2], box)[..., None].astype(np.float32)
            slot = _Slots(1)
            ablations.append((name, slot))
            rows.append(
                (i, slot, 0, lambda x=item.image, b=item.baseline, w=weight: x * (1 - w) + b * w)
            )
        pending.append((curves, insertions, blur_score, ablations))

    forward_rows = _score_rows(engine, items, rows)

    out = []
    for i, (item, (curves, insertions, blur_score, ablations)) in enumerate(zip(items, pending)):
        for curve in insertions:
            curve.values[0] = blur_score.values[0]
        out.append(
            Evidence(
                points=points if kinds else 0,
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
            )
        )
    return out


def _replace(start: np.ndarray, fill: np.ndarray, pixels: np.ndarray):
    """A maker of ``start`` with the given flat pixel indices taken from ``fill``."""

    def make():
        image = start.copy()
        flat, source = image.reshape(-1, image.shape[-1]), fill.reshape(-1, fill.shape[-1])
        flat[pixels] = source[pixels]
        return image

    return make


def _score_rows(engine, items, rows) -> list[int]:
    """Build the row images a call at a time (memory stays at one call), score them into
    their slots; returns the forward rows spent per item."""
    spent = [0] * len(items)
    size = max(1, int(engine.batch_size))
    for lo in range(0, len(rows), size):
        chunk = rows[lo : lo + size]
        scores = engine.scores(np.stack([make() for *_, make in chunk]).astype(np.float32))
        for (i, slots, k, _), row_scores in zip(chunk, scores):
            slots.values[k] = float(row_scores[items[i].target])
            spent[i] += 1
    return spent
