"""Region annotations (``--regions``): named boxes per image, in original pixels."""
from __future__ import annotations

import io
import os
import re

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

COLUMNS = ("image", "region", "x0", "y0", "x1", "y1")
Regions = dict[str, list[tuple[str, tuple[float, float, float, float]]]]


def pattern_root(pattern: str) -> str:
    """The folder part of a file pattern before its first wildcard."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else "."


def region_key(uri: str) -> str:
    """How an image is looked up: uris as they are, local paths absolute and normalised."""
    return uri if "://" in uri else os.path.normpath(os.path.abspath(uri))


def _key(image: str, root: str) -> str:
    if "://" in image or os.path.isabs(image):
        return region_key(image)
    return region_key(f"{root.rstrip('/')}/{image}")


def load_regions(path: str, input_pattern: str) -> Regions:
    """CSV or Parquet with columns image, region, x0, y0, x1, y1 -> {image uri: boxes}.

    ``image`` is a full path/uri, or a path relative to the input pattern's root folder.
    """
    with FileSystems.open(path) as f:
        data = f.read()
    try:
        table = (pq.read_table(io.BytesIO(data)) if path.endswith(".parquet")
                 else pcsv.read_csv(io.BytesIO(data)))
    except Exception as e:  # noqa: BLE001 - a malformed file is a usage error
        raise ValueError(f"--regions {path}: cannot read it as "
                         f"{'Parquet' if path.endswith('.parquet') else 'CSV'} ({e})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"--regions {path}: missing columns {missing}; expected "
                         f"{', '.join(COLUMNS)} (boxes in original pixels, x1/y1 exclusive)")
    root = pattern_root(input_pattern)
    regions: Regions = {}
    columns = {c: table.column(c).to_pylist() for c in COLUMNS}
    for i, image in enumerate(columns["image"]):
        box = tuple(float(columns[c][i]) for c in ("x0", "y0", "x1", "y1"))
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"--regions {path}: row {i + 1} has x1 < x0 or y1 < y0: {box}")
        regions.setdefault(_key(str(image), root), []).append((str(columns["region"][i]), box))
    return regions
