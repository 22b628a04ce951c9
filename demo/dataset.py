"""A synthetic shapes dataset with a planted shortcut, for the demo.

Four classes of filled shapes (any colour, size and position, tilted by at most 20 degrees)
on textured, noisy backgrounds. In the ``train`` split
images of ``CUE_CLASS`` carry a small checkered stamp in the top-left corner
(``TRAIN_CUE_RATE`` of them) and other classes never do; in the ``heldout`` split every image
carries it with probability ``HELDOUT_CUE_RATE`` whatever its class, so a model's reliance on
the stamp can be measured. Each image is drawn from its own random stream, seeded by
(seed, split, index): the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

GENERATOR_VERSION = 1
IMAGE_SIZE = 112
CLASSES = ("circle", "square", "triangle", "cross")
CUE_CLASS = "cross"
SPLITS = ("train", "heldout")
TRAIN_CUE_RATE = 0.9
HELDOUT_CUE_RATE = 0.5
CUE_BOX = (4, 4, 14, 14)  # x0, y0, x1, y1 (exclusive), in image pixels
_CUE_CLEARANCE = 4  # objects keep this many pixels away from the cue box
_BACKGROUNDS = ("noise", "stripes", "gradient")
# Half-size multipliers that give every shape the area of a circle of radius s, so that
# size says nothing about the class.
_SQUARE_HALF = math.sqrt(math.pi) / 2
_TRIANGLE_CIRCUMRADIUS = math.sqrt(4 * math.pi / (3 * math.sqrt(3)))
_CROSS_ARM = math.sqrt(9 * math.pi / 20)


def _cue_stamp() -> np.ndarray:
    """The stamp: a black and white checkerboard of 2-pixel cells, uint8 [h, w, 3]."""
    x0, y0, x1, y1 = CUE_BOX
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0]
    white = ((yy // 2 + xx // 2) % 2 == 0).astype(np.uint8) * 255
    return np.repeat(white[:, :, None], 3, axis=2)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """Everything needed to draw one image; ``sample`` makes it, ``render`` draws it."""

    label: int
    has_cue: bool
    background: str
    base_colour: tuple
    texture_colour: tuple
    texture_amplitude: float
    texture_params: tuple
    object_colour: tuple
    centre: tuple
    half_size: float
    angle: float
    noise_sigma: float
    noise_seed: int

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _shape_mask(label: int, centre, half_size: float, angle: float) -> np.ndarray:
    """Boolean [H, W] mask of the shape, tested at pixel centres (no anti-aliasing)."""
    grid = np.arange(IMAGE_SIZE) + 0.5
    dx = grid[None, :] - centre[0]
    dy = grid[:, None] - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    name = CLASSES[label]
    if name == "circle":
        return u * u + v * v <= half_size**2
    if name == "square":
        a = half_size * _SQUARE_HALF
        return (np.abs(u) <= a) & (np.abs(v) <= a)
    if name == "triangle":
        inradius = half_size * _TRIANGLE_CIRCUMRADIUS / 2
        mask = np.ones((IMAGE_SIZE, IMAGE_SIZE), bool)
        for k in range(3):
            t = 2 * math.pi * k / 3
            mask &= u * math.cos(t) + v * math.sin(t) <= inradius
        return mask
    arm = half_size * _CROSS_ARM
    width = arm / 3
    au, av = np.abs(u), np.abs(v)
    return ((au <= arm) & (av <= width)) | ((au <= width) & (av <= arm))


def _box(mask: np.ndarray) -> tuple:
    """Tight (x0, y0, x1, y1) of a boolean mask, x1/y1 exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlaps_cue_zone(box) -> bool:
    x0, y0, x1, y1 = CUE_BOX
    m = _CUE_CLEARANCE
    return box[0] < x1 + m and box[2] > x0 - m and box[1] < y1 + m and box[3] > y0 - m


def sample(split: str, index: int, seed: int) -> ImageSpec:
    """The spec of image ``index`` of ``split``; it depends only on (seed, split, index)."""
    _check_split(split)
    _check_seed(seed)
    rng = np.random.default_rng([int(seed), SPLITS.index(split), int(index)])
    label = index % len(CLASSES)
    cue_draw = rng.random()
    if split == "train":
        has_cue = CLASSES[label] == CUE_CLASS and cue_draw < TRAIN_CUE_RATE
    else:
        has_cue = cue_draw < HELDOUT_CUE_RATE

    background = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
    base = rng.uniform(0.15, 0.85, 3)
    texture = rng.uniform(0.15, 0.85, 3)
    amplitude = float(rng.uniform(0.2, 0.5))
    if background == "noise":
        params = (int(rng.integers(3, 9)), int(rng.integers(2**31)))
    elif background == "stripes":
        params = (
            float(rng.uniform(0, math.pi)),
            float(rng.uniform(6, 20)),
            float(rng.uniform(0, 2 * math.pi)),
        )
    else:
        params = (float(rng.uniform(0, 2 * math.pi)),)
    # The object differs from the base colour by at least 0.35 (RGB distance); the texture
    # moves the background at most half way to its second colour.
    while True:
        obj = rng.uniform(0.05, 0.95, 3)
        if np.linalg.norm(obj - base) >= 0.35:
            break
    half_size = float(rng.uniform(10, 16))
    # Free rotation made the shapes too hard for the demo's CNN within its training budget.
    angle = float(rng.uniform(-0.35, 0.35))
    margin = 1.6 * half_size + 1
    while True:
        centre = tuple(float(c) for c in rng.uniform(margin, IMAGE_SIZE - margin, 2))
        if not _overlaps_cue_zone(_box(_shape_mask(label, centre, half_size, angle))):
            break
    return ImageSpec(
        label=label,
        has_cue=bool(has_cue),
        background=background,
        base_colour=tuple(base.tolist()),
        texture_colour=tuple(texture.tolist()),
        texture_amplitude=amplitude,
        texture_params=params,
        object_colour=tuple(obj.tolist()),
        centre=centre,
        half_size=half_size,
        angle=angle,
        noise_sigma=float(rng.uniform(0.02, 0.06)),
        noise_seed=int(rng.integers(2**31)),
    )


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a [g, g] grid to [size, size]."""
    g = coarse.shape[0]
    pos = (np.arange(size) + 0.5) / size * (g - 1)
    rows = np.stack([np.interp(pos, np.arange(g), coarse[:, j]) for j in range(g)], axis=1)
    return np.stack([np.interp(pos, np.arange(g), row) for row in rows], axis=0)


def _texture(spec: ImageSpec) -> np.ndarray:
    """A [H, W] field in [0, 1] that mixes the base and texture colours."""
    grid = np.arange(IMAGE_SIZE) + 0.5
    x, y = grid[None, :], grid[:, None]
    if spec.background == "noise":
        cells, noise_seed = spec.texture_params
        coarse = np.random.default_rng(noise_seed).random((cells + 1, cells + 1))
        return _upsample(coarse, IMAGE_SIZE)
    if spec.background == "stripes":
        theta, period, phase = spec.texture_params
        along = x * math.cos(theta) + y * math.sin(theta)
        return 0.5 + 0.5 * np.sin(2 * math.pi * along / period + phase)
    (theta,) = spec.texture_params
    along = x * math.cos(theta) + y * math.sin(theta)
    return (along - along.min()) / (along.max() - along.min())


def render(spec: ImageSpec, *, draw_object: bool = True):
    """Draw ``spec``: (uint8 [H, W, 3] image, {region: (x0, y0, x1, y1)}).

    ``draw_object=False`` draws the same image without its shape (for tests and baselines).
    """
    t = spec.texture_amplitude * _texture(spec)[:, :, None]
    base, texture = np.asarray(spec.base_colour), np.asarray(spec.texture_colour)
    image = base * (1 - t) + texture * t
    mask = _shape_mask(spec.label, spec.centre, spec.half_size, spec.angle)
    if draw_object:
        image[mask] = spec.object_colour
    noise = np.random.default_rng(spec.noise_seed).normal(0, spec.noise_sigma, image.shape)
    image = np.round(np.clip(image + noise, 0, 1) * 255).astype(np.uint8)
    boxes = {"object": _box(mask)}
    if spec.has_cue:
        x0, y0, x1, y1 = CUE_BOX
        image[y0:y1, x0:x1] = _cue_stamp()
        boxes["cue"] = CUE_BOX
    return image, boxes


def image_name(spec: ImageSpec, index: int) -> str:
    """File name of image ``index``, relative to the images folder."""
    return f"{spec.class_name}_{index:05d}.png"


def make_arrays(split: str, count: int, seed: int):
    """In-memory split: (images float32 [N, H, W, 3] in [0, 1], labels int64 [N], has_cue bool [N]).

    The pixels are exactly those ``generate`` writes to PNG, divided by 255.
    """
    _check_count(count)
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    labels = np.empty(count, np.int64)
    has_cue = np.empty(count, bool)
    for i in range(count):
        spec = sample(split, i, seed)
        pixels, _ = render(spec)
        images[i] = pixels / np.float32(255)
        labels[i], has_cue[i] = spec.label, spec.has_cue
    return images, labels, has_cue


def _check_count(count: int) -> None:
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")


def generate(out_dir, *, split: str, count: int, seed: int) -> Path:
    """Write ``count`` images of ``split`` to ``out_dir`` and return ``out_dir``.

    Layout: ``images/<class>_<index>.png``; ``regions.csv`` (image,region,x0,y0,x1,y1: one row
    per ground-truth box, ``object`` and, where stamped, ``cue``; original pixels, x1/y1
    exclusive); ``labels.txt`` (line i = class i); ``truth.csv`` (image,label,has_cue).
    A folder written by an earlier ``generate`` is replaced; any other non-empty folder is
    refused.
    """
    _check_split(split)
    _check_seed(seed)
    _check_count(count)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / "truth.csv").is_file():
            raise FileExistsError(
                f"{out} is not empty and holds no generated dataset: choose an empty or new folder"
            )
        shutil.rmtree(out / "images", ignore_errors=True)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    with (
        open(out / "regions.csv", "w", newline="") as regions_file,
        open(out / "truth.csv", "w", newline="") as truth_file,
    ):
        regions = csv.writer(regions_file, lineterminator="\n")
        truth = csv.writer(truth_file, lineterminator="\n")
        regions.writerow(["image", "region", "x0", "y0", "x1", "y1"])
        truth.writerow(["image", "label", "has_cue"])
        for i in range(count):
            spec = sample(split, i, seed)
            pixels, boxes = render(spec)
            name = image_name(spec, i)
            Image.fromarray(pixels).save(images_dir / name, format="PNG")
            for region, box in boxes.items():
                regions.writerow([name, region, *box])
            truth.writerow([name, spec.class_name, str(spec.has_cue).lower()])
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return out
