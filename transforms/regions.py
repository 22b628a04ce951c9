"""Region annotations (``--regions``): named boxes per image, in original pixels."""

from __future__ import annotations

import os
import re

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
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


def _batches(path: str, batch_rows: int = 65536):
    """The regions file as record batches (image, region as given; x0..y1 as float64),
    streamed: the file is never held whole. ValueError (a usage error) when it cannot be
    read or lacks a column."""
    parquet = path.endswith(".parquet")
    with FileSystems.open(path) as f:
        try:
            batches = (
                pq.ParquetFile(f).iter_batches(batch_size=batch_rows)
                if parquet
                else pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=1 << 22))
            )
            for batch in batches:
                missing = [c for c in COLUMNS if c not in batch.schema.names]
                if missing:
                    raise ValueError(
                        f"--regions {path}: missing columns {missing}; expected "
                        f"{', '.join(COLUMNS)} (boxes in original pixels, x1/y1 "
                        f"exclusive)"
                    )
                nested = [c for c in COLUMNS if pa.types.is_nested(batch.schema.field(c).type)]
                if nested:
                    raise ValueError(
                        f"--regions {path}: column {nested[0]!r} holds "
                        f"{batch.schema.field(nested[0]).type} values; one box a row is "
                        f"needed, each cell a single value ({', '.join(COLUMNS)})"
                    )
                yield [
                    batch.column("image"),
                    batch.column("region"),
                    *(pc.cast(batch.column(c), pa.float64()) for c in COLUMNS[2:]),
                ]
        except ValueError as e:
            if str(e).startswith("--regions"):
                raise
            raise ValueError(f"--regions {path}: cannot read it ({e})") from None
        except Exception as e:  # noqa: BLE001 - a malformed file is a usage error
            raise ValueError(
                f"--regions {path}: cannot read it as {'Parquet' if parquet else 'CSV'} ({e})"
            ) from None


def _bad_box(path: str, first_row: int, columns) -> None:
    """ValueError naming the first box of a batch with x1 < x0 or y1 < y0."""
    x0, y0, x1, y1 = columns[2:]
    bad = pc.or_(pc.less(x1, x0), pc.less(y1, y0))
    if pc.any(bad).as_py():
        i = pc.index(bad, True).as_py()
        box = tuple(c[i].as_py() for c in (x0, y0, x1, y1))
        raise ValueError(f"--regions {path}: row {first_row + i} has x1 < x0 or y1 < y0: {box}")


def _empty_cell(path: str, first_row: int, columns) -> None:
    """ValueError naming the first row with an empty image or region name, or a coordinate
    that is empty or not a finite number (``nan``, ``inf``)."""
    for name, column in zip(COLUMNS, columns):
        if name in ("image", "region"):
            text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
            bad = pc.fill_null(pc.equal(pc.utf8_length(text), 0), True)
            what = f"an empty {name!r} cell; fill it in or delete the row"
        else:
            bad = pc.fill_null(pc.invert(pc.is_finite(column)), True)
            what = f"{name} empty or not a finite number; coordinates are pixels"
        if pc.any(bad).as_py():
            raise ValueError(
                f"--regions {path}: row {first_row + pc.index(bad, True).as_py()} has {what}"
            )


def region_rows(path: str, input_pattern: str, batch_rows: int = 65536):
    """Stream a CSV or Parquet regions file (columns image, region, x0, y0, x1, y1) as
    ``(region key, (row index, name, box))``, a batch of rows at a time, so a
    14-million-box file costs its reader one batch of memory.

    ``image`` is a full path/uri, or a path relative to the input pattern's root folder.
    ValueError (a usage error) for a file that cannot be read, lacks a column or has a box
    with x1 < x0 or y1 < y0.
    """
    root = pattern_root(input_pattern)
    row = 1
    for columns in _batches(path, batch_rows):
        _empty_cell(path, row, columns)
        _bad_box(path, row, columns)
        images, names, *coordinates = (c.to_pylist() for c in columns)
        for i, image in enumerate(images):
            box = tuple(c[i] for c in coordinates)
            yield _key(str(image), root), (row + i, str(names[i]), box)
        row += len(images)


def check_regions(path: str, input_pattern: str) -> int:
    """Read the whole file once in the launcher, streamed and vectorised, to refuse a bad
    one before any work; returns the number of boxes."""
    rows = 1
    for columns in _batches(path):
        _empty_cell(path, rows, columns)
        _bad_box(path, rows, columns)
        rows += len(columns[0])
    return rows - 1


def names_any(path: str, input_pattern: str, inputs: list[str]) -> bool:
    """Whether any box of the file names one of ``inputs``; streamed, it stops at the first
    that does (a file that names none is read whole, to say so)."""
    wanted = {region_key(uri) for uri in inputs}
    root = pattern_root(input_pattern)
    for columns in _batches(path):
        if any(_key(str(image), root) in wanted for image in columns[0].to_pylist()):
            return True
    return False


def load_regions(path: str, input_pattern: str) -> Regions:
    """{image key: boxes in file order}: for small files and tests; the job joins
    ``ReadRegions`` in the graph instead, so the boxes never travel inside the job graph."""
    regions: Regions = {}
    for key, (_, name, box) in region_rows(path, input_pattern):
        regions.setdefault(key, []).append((name, box))
    return regions


class ReadRegions(beam.PTransform):
    """A regions file -> ``(region key, (row index, name, box))``, read on a worker."""

    def __init__(self, path: str, input_pattern: str):
        super().__init__()
        self.path, self.input_pattern = path, input_pattern

    def expand(self, pbegin):
        return (
            pbegin
            | "Path" >> beam.Create([self.path])
            | "Rows" >> beam.FlatMap(region_rows, self.input_pattern)
        )


def join_boxes(keyed, regions, label: str = "JoinRegions"):
    """``keyed``: (region key, value) -> (value, boxes or None), boxes in file order.

    A CoGroupByKey by normalised uri: boxes without an image are dropped, images without
    boxes get None (their summary rows have no ``regions``)."""

    def attach(element):
        _, groups = element
        boxes = [(name, box) for _, name, box in sorted(groups["boxes"], key=lambda b: b[0])]
        for value in groups["value"]:
            yield value, (boxes or None)

    return (
        {"value": keyed, "boxes": regions}
        | label >> beam.CoGroupByKey()
        | f"{label}Attach" >> beam.FlatMap(attach)
    )
