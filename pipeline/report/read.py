"""Read a run folder and fold its summaries into per-class aggregates, streaming.

``read_run(DIR)`` reads ``DIR/manifest.json``, ``DIR/summaries/`` and ``DIR/errors/`` through
Beam's FileSystems (so ``gs://`` folders work) one record batch at a time; per row only the
completeness error and steps are kept (for the histograms). A folder that is no readable
run raises ``RunFolderError`` (alias ``ReportError``) with a one-line message.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from transforms.files import (
    BATCH_ROWS,
    RunFolderError,
    parquet_batches,
    parquet_parts,
    parquet_schema,
    read_manifest,
)
from transforms.layout import ERRORS, SUMMARIES

ReportError = RunFolderError  # the folder cannot be reported on
ALPHAS = np.linspace(0.0, 1.0, 101)  # common grid the saturation curves are averaged on
MAX_CLASSES = 12  # classes the methods page and the confusion view draw
REPORT_CLASSES = 24  # classes the report draws (--report_classes), most suspicious first
EXAMPLES = 2  # most and least concentrated images shown per class
TABLE_ROWS = 200  # rows shown in the errors and classes tables
COLUMNS = (
    "image_uri",
    "target_class",
    "target_label",
    "predicted_label",
    "target_score",
    "relative_completeness_error",
    "converged",
    "steps",
    "gradient_evaluations",
    "top5_share",
    "gini",
    "mask_uri",
    "overlay_uri",
    "grid_cells",
    "grid",
    "path_alphas",
    "path_scores",
)

OPTIONAL_COLUMNS = ("regions", "content_sha256")  # older runs wrote neither
EXAMPLE_COLUMNS = ("image_uri", "mask_uri", "overlay_uri", "target_score", "predicted_label")
OPTIONAL_EXAMPLE_COLUMNS = ("content_sha256",)  # checks an original is the image attributed


@dataclass(frozen=True)
class Example:
    top5_share: float
    image_uri: str
    mask_uri: str | None
    overlay_uri: str | None
    target_score: float | None
    predicted_label: str | None
    content_sha256: str | None = None

    @property
    def key(self) -> tuple:
        return (self.top5_share, self.image_uri or "")


@dataclass
class ClassStats:
    """Running sums over the rows of one target class."""

    label: str
    rows: int = 0
    top5_sum: float = 0.0
    gini_sum: float = 0.0
    unconverged: int = 0
    grid_cells: int = 0
    grid_sum: np.ndarray | None = None
    grid_rows: int = 0
    curve_sum: np.ndarray = field(default_factory=lambda: np.zeros(ALPHAS.size))
    curve_rows: int = 0
    region_mass: collections.Counter = field(default_factory=collections.Counter)
    region_hits: collections.Counter = field(default_factory=collections.Counter)
    region_rows: collections.Counter = field(default_factory=collections.Counter)
    region_area: collections.Counter = field(default_factory=collections.Counter)
    most: list[Example] = field(default_factory=list)  # highest top5_share, descending
    least: list[Example] = field(default_factory=list)  # lowest top5_share, ascending

    def region_share(self, name: str) -> float:
        return self.region_mass[name] / self.region_rows[name]

    def area_share(self, name: str) -> float | None:
        """Mean share of the image the region covers (None for runs that did not record it)."""
        area = self.region_area.get(name)
        return None if area is None else area / self.region_rows[name]

    def hit_rate(self, name: str) -> float:
        return self.region_hits[name] / self.region_rows[name]

    def mean_grid(self) -> np.ndarray | None:
        if not self.grid_rows:
            return None
        return (self.grid_sum / self.grid_rows).reshape(self.grid_cells, self.grid_cells)

    def mean_curve(self) -> np.ndarray | None:
        return self.curve_sum / self.curve_rows if self.curve_rows else None

    def least_distinct(self) -> list[Example]:
        """The least concentrated examples that are not already among the most."""
        shown = {e.key for e in self.most}
        return [e for e in self.least if e.key not in shown]


@dataclass
class Run:
    """What the report shows about one run folder."""

    output_dir: str
    manifest: dict
    classes: dict[int, ClassStats] = field(default_factory=dict)
    relative_errors: np.ndarray = field(default_factory=lambda: np.zeros(0))
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gradient_evaluations: int = 0
    rows: int = 0
    unconverged: int = 0
    errors: list[dict] = field(default_factory=list)  # the first TABLE_ROWS
    error_count: int = 0
    error_kinds: collections.Counter = field(default_factory=collections.Counter)
    report_classes: int = REPORT_CLASSES  # classes the per-class sections draw
    strategies: object = None  # pipeline.strategies.Strategies, read on first use

    def config(self, key: str, default=None):
        return (self.manifest.get("config") or {}).get(key, default)

    def shown_classes(self) -> list[int]:
        """The ``report_classes`` classes with rows ranked first: those with the most
        suspicious strategies (``pipeline.report.strategies``), then those with the most rows
        (ties: lower class id first)."""
        from pipeline.report.strategies import ranked_classes

        return [c for c in ranked_classes(self) if c in self.classes][: self.report_classes]

    def region_names(self) -> list[str]:
        return sorted({name for s in self.classes.values() for name in s.region_rows})


# ---------------------------------------------------------------------------- reading


def read_run(output_dir: str) -> Run:
    """Read a run folder into a ``Run``; RunFolderError if it is not a readable finished run."""
    output_dir = output_dir.rstrip("/")
    if not output_dir:
        raise RunFolderError("no run folder given: pass the --output_dir of a pipeline run")
    run = Run(output_dir, read_manifest(output_dir))
    for path in parquet_parts(output_dir, SUMMARIES):
        _read_summaries(run, path)
    for path in parquet_parts(output_dir, ERRORS):
        _read_errors(run, path)
    return run


def _batches(path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()):
    """Record batches of ``path`` with the required and present optional columns."""
    present = set(parquet_schema(path).names)
    missing = [c for c in required if c not in present]
    if missing:
        raise RunFolderError(
            f"{path} lacks columns {missing}: was it written by `python -m pipeline`?"
        )
    columns = [*required, *(c for c in optional if c in present)]
    yield from parquet_batches(path, columns, BATCH_ROWS)


def _read_errors(run: Run, path: str) -> None:
    for batch in _batches(path, ("image_uri", "stage", "error_type", "message")):
        rows = batch.to_pylist()
        run.error_count += len(rows)
        run.error_kinds.update((r["stage"], r["error_type"]) for r in rows)
        run.errors.extend(rows[: TABLE_ROWS - len(run.errors)])


def _read_summaries(run: Run, path: str) -> None:
    for batch in _batches(path, COLUMNS, OPTIONAL_COLUMNS):
        if batch.num_rows:
            _add_batch(run, batch)


def _floats(array) -> np.ndarray:
    return np.asarray(pc.fill_null(array.cast("float64"), np.nan).to_numpy(zero_copy_only=False))


def _add_batch(run: Run, batch) -> None:
    """Fold one record batch of summaries into ``run``."""
    classes = np.asarray(  # a row without a class (never written so) counts under -1
        pc.fill_null(batch.column("target_class"), -1).to_numpy(zero_copy_only=False), np.int64
    )
    ids, codes = np.unique(classes, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    groups = np.split(order, np.searchsorted(codes[order], np.arange(1, ids.size)))
    labels = batch.column("target_label")
    stats = []
    for class_id, rows in zip(ids.tolist(), groups):
        if class_id not in run.classes:
            label = labels[int(rows[0])].as_py()
            run.classes[class_id] = ClassStats(str(class_id) if label is None else label)
        stats.append(run.classes[class_id])

    unconverged = pc.fill_null(pc.invert(batch.column("converged")), False).to_numpy(
        zero_copy_only=False
    )
    run.rows += batch.num_rows
    run.unconverged += int(unconverged.sum())
    run.relative_errors = np.concatenate(
        [run.relative_errors, _floats(batch.column("relative_completeness_error"))]
    )
    run.steps = np.concatenate(
        [run.steps, np.nan_to_num(_floats(batch.column("steps"))).astype(np.int64)]
    )
    run.gradient_evaluations += int(np.nansum(_floats(batch.column("gradient_evaluations"))))

    top5 = _floats(batch.column("top5_share"))
    gini = np.nan_to_num(_floats(batch.column("gini")))
    for s, rows in zip(stats, groups):
        s.rows += rows.size
        s.top5_sum += float(np.nansum(top5[rows]))
        s.gini_sum += float(gini[rows].sum())
        s.unconverged += int(unconverged[rows].sum())
    _add_grids(stats, groups, batch)
    _add_curves(stats, codes, batch)
    if "regions" in batch.schema.names:
        _add_regions(stats, codes, batch.column("regions"))
    _add_examples(stats, groups, top5, batch)


def _list_parts(array) -> tuple[np.ndarray, object, np.ndarray]:
    """(offsets [n + 1], flat values, valid [n]) of a list array; row i is
    values[offsets[i]:offsets[i + 1]]."""
    offsets = array.offsets.to_numpy()
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return offsets, array.values, valid


def _add_grids(stats: list[ClassStats], groups: list[np.ndarray], batch) -> None:
    """Sum each class's grids; a class keeps the grid size of its first row. A grid larger
    than any run writes (--grid_cells <= MAX_GRID_CELLS) is not drawn: six forged rows of
    1000 x 1000 cells made a 24 MB page."""
    from attribution.config import MAX_GRID_CELLS

    offsets, values, valid = _list_parts(batch.column("grid"))
    values = np.asarray(values.to_numpy(zero_copy_only=False), np.float64)
    cells = np.nan_to_num(_floats(batch.column("grid_cells"))).astype(np.int64)
    cells[(cells < 0) | (cells > MAX_GRID_CELLS)] = 0
    usable = valid & (cells > 0) & (np.diff(offsets) == cells**2)
    for s, rows in zip(stats, groups):
        rows = rows[usable[rows]]
        if not rows.size:
            continue
        if not s.grid_rows:
            s.grid_cells = int(cells[rows[0]])
            s.grid_sum = np.zeros(s.grid_cells**2)
        rows = rows[cells[rows] == s.grid_cells]
        s.grid_sum += values[offsets[rows][:, None] + np.arange(s.grid_cells**2)].sum(axis=0)
        s.grid_rows += rows.size


def _interp(alphas: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One path's scores at ALPHAS (linear between points, flat beyond the ends)."""
    order = np.argsort(alphas, kind="stable")
    return np.interp(ALPHAS, alphas[order], scores[order])


def _add_curves(stats: list[ClassStats], codes: np.ndarray, batch) -> None:
    """Interpolate each row's (path_alphas, path_scores) onto ALPHAS and sum per class.

    Interpolation is linear in the scores, so rows on the same alphas as the first row of
    their length (one quadrature rule) take one matrix product; others go one by one.
    """
    a_offsets, a_values, a_valid = _list_parts(batch.column("path_alphas"))
    s_offsets, s_values, s_valid = _list_parts(batch.column("path_scores"))
    all_alphas = np.asarray(a_values.to_numpy(zero_copy_only=False), np.float64)
    all_scores = np.asarray(s_values.to_numpy(zero_copy_only=False), np.float64)
    lengths = np.diff(a_offsets)
    usable = a_valid & s_valid & (lengths > 0) & (lengths == np.diff(s_offsets))
    sums = np.zeros((len(stats), ALPHAS.size))
    counts = np.zeros(len(stats), np.int64)
    for length in np.unique(lengths[usable]):
        rows = np.flatnonzero(usable & (lengths == length))
        alphas = all_alphas[a_offsets[rows][:, None] + np.arange(length)]
        scores = all_scores[s_offsets[rows][:, None] + np.arange(length)]
        finite = np.isfinite(alphas).all(axis=1) & np.isfinite(scores).all(axis=1)
        rows, alphas, scores = rows[finite], alphas[finite], scores[finite]
        if not rows.size:
            continue
        same = (alphas == alphas[0]).all(axis=1)
        curves = np.empty((rows.size, ALPHAS.size))
        curves[same] = scores[same] @ np.stack([_interp(alphas[0], e) for e in np.eye(length)])
        for i in np.flatnonzero(~same):
            curves[i] = _interp(alphas[i], scores[i])
        np.add.at(sums, codes[rows], curves)
        np.add.at(counts, codes[rows], 1)
    for code, s in enumerate(stats):
        s.curve_sum += sums[code]
        s.curve_rows += int(counts[code])


def _add_regions(stats: list[ClassStats], codes: np.ndarray, regions) -> None:
    """Per class and region name: summed mass_fraction, pointing hits and rows."""
    offsets, values, valid = _list_parts(regions)
    lengths = np.where(valid, np.diff(offsets), 0)
    total = int(lengths.sum())
    if not total:
        return
    firsts = np.cumsum(lengths) - lengths  # each row's first entry in the output
    entries = np.repeat(offsets[:-1] - firsts, lengths) + np.arange(total)
    names = values.field("name").take(entries).to_pylist()
    known = np.array([n is not None for n in names])
    if not known.any():
        return
    names = np.array([n for n in names if n is not None], dtype=object)
    entry_codes = np.repeat(codes, lengths)[known]
    mass = np.nan_to_num(_floats(values.field("mass_fraction").take(entries)))[known]
    hits = pc.fill_null(values.field("pointing_hit").take(entries), False).to_numpy(
        zero_copy_only=False
    )[known]
    has_area = values.type.get_field_index("area_fraction") >= 0
    area = (
        np.nan_to_num(_floats(values.field("area_fraction").take(entries)))[known]
        if has_area
        else None
    )
    unique_names, name_codes = np.unique(names.astype(str), return_inverse=True)
    keys = entry_codes * unique_names.size + name_codes
    size = len(stats) * unique_names.size
    sums = np.bincount(keys, weights=mass, minlength=size)
    hit_counts = np.bincount(keys, weights=hits.astype(float), minlength=size)
    row_counts = np.bincount(keys, minlength=size)
    area_sums = np.bincount(keys, weights=area, minlength=size) if has_area else None
    for key in np.flatnonzero(row_counts):
        code, name_code = divmod(int(key), unique_names.size)
        s, name = stats[code], str(unique_names[name_code])
        s.region_mass[name] += float(sums[key])
        s.region_hits[name] += int(hit_counts[key])
        s.region_rows[name] += int(row_counts[key])
        if has_area:
            s.region_area[name] += float(area_sums[key])


def _add_examples(
    stats: list[ClassStats], groups: list[np.ndarray], top5: np.ndarray, batch
) -> None:
    """Keep each class's EXAMPLES most and least concentrated rows (by top5_share)."""
    present = [c for c in OPTIONAL_EXAMPLE_COLUMNS if c in batch.schema.names]
    columns = {name: batch.column(name) for name in (*EXAMPLE_COLUMNS, *present)}
    for s, rows in zip(stats, groups):
        rows = rows[np.isfinite(top5[rows])]
        if not rows.size:
            continue
        rows = rows[np.argsort(top5[rows], kind="stable")]
        picked = sorted({int(r) for r in (*rows[:EXAMPLES], *rows[-EXAMPLES:])})
        new = [
            Example(float(top5[r]), **{c: columns[c][r].as_py() for c in columns}) for r in picked
        ]
        s.most = sorted([*s.most, *new], key=lambda e: e.key, reverse=True)[:EXAMPLES]
        s.least = sorted([*s.least, *new], key=lambda e: e.key)[:EXAMPLES]
