"""A control region for the ablation check: per image, an object-sized box elsewhere.

Masking the cue stamp should lower `cross` more than masking a box of the object's size
placed at random on the background (away from the object and the cue). ``add_control_boxes``
reads a ``regions.csv`` written by ``dataset.generate`` and writes a copy with one more region,
``random_box``, per image, seeded by the image name so reruns place it identically.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from demo.dataset import CUE_BOX, IMAGE_SIZE

CONTROL = "random_box"


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1]


def control_box(name: str, object_box, tries: int = 200) -> tuple[int, int, int, int] | None:
    """An object-sized box clear of the object and the cue, seeded by ``name``; None when
    none fits."""
    width, height = object_box[2] - object_box[0], object_box[3] - object_box[1]
    seed = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        x0 = int(rng.integers(0, IMAGE_SIZE - width + 1))
        y0 = int(rng.integers(0, IMAGE_SIZE - height + 1))
        box = (x0, y0, x0 + width, y0 + height)
        if not _overlaps(box, object_box) and not _overlaps(box, CUE_BOX):
            return box
    return None


def add_control_boxes(regions_csv, out_csv) -> Path:
    """Copy ``regions_csv`` to ``out_csv`` with a ``random_box`` row after each object."""
    with open(regions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    out = Path(out_csv)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "region", "x0", "y0", "x1", "y1"])
        for row in rows:
            box = tuple(int(float(row[k])) for k in ("x0", "y0", "x1", "y1"))
            writer.writerow([row["image"], row["region"], *box])
            if row["region"] == "object":
                control = control_box(row["image"], box)
                if control is not None:
                    writer.writerow([row["image"], CONTROL, *control])
    return out
