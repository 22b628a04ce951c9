"""`python -m pipeline.report DIR`: one self-contained HTML page about a finished run.

``write_report(DIR)`` reads ``DIR/manifest.json``, ``DIR/summaries/`` and ``DIR/errors/``
through Beam's FileSystems (so ``gs://`` folders work), streams the summaries one record
batch at a time into per-class aggregates (per row only the completeness error and steps
are kept, for the histograms), and publishes ``DIR/report.html``: inline CSS, charts and
images as ``data:`` URIs, and a Content-Security-Policy that forbids every network fetch,
so the page opens from disk anywhere. All text taken from the data is HTML-escaped.

``attribution`` and ``transforms.summarize`` are imported where used: they load TensorFlow,
which a folder that is no run (or a run without images to show) does not need.
"""
from __future__ import annotations

import argparse
import base64
import collections
import datetime
import html
import io
import json
import re
import sys
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image


REPORT_NAME = "report.html"
ALPHAS = np.linspace(0.0, 1.0, 101)  # common grid the saturation curves are averaged on
MAX_CLASSES = 12  # classes drawn (those with the most rows); tables list more
EXAMPLES = 2  # most and least concentrated images shown per class
TABLE_ROWS = 200  # rows shown in the errors and classes tables
MIN_ROWS = 5  # rows with regions a class needs before a finding speaks about it
# A class "clearly" puts the largest share on a region when it beats the other classes'
# mean by both this margin (absolute share) and this ratio. The margin is small because
# the telling regions are often small (a watermark of 1% of the image holding 18% of the
# attribution); the ratio carries the weight.
SHORTCUT_MARGIN = 0.05
SHORTCUT_RATIO = 3.0
BATCH_ROWS = 65_536
COLUMNS = ("image_uri", "target_class", "target_label", "predicted_label", "target_score",
           "relative_completeness_error", "converged", "steps", "gradient_evaluations",
           "top5_share", "gini", "mask_uri", "overlay_uri", "grid_cells", "grid",
           "path_alphas", "path_scores")
OPTIONAL_COLUMNS = ("regions",)  # older runs wrote no regions column
EXAMPLE_COLUMNS = ("image_uri", "mask_uri", "overlay_uri", "target_score", "predicted_label")


class ReportError(Exception):
    """The folder cannot be reported on (not a finished run, unreadable files)."""


@dataclass(frozen=True)
class Example:
    top5_share: float
    image_uri: str
    mask_uri: str | None
    overlay_uri: str | None
    target_score: float | None
    predicted_label: str | None

    @property
    def key(self) -> tuple:
        return (self.top5_share, self.image_uri)


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

    def config(self, key: str, default=None):
        return (self.manifest.get("config") or {}).get(key, default)

    def shown_classes(self) -> list[int]:
        """The MAX_CLASSES classes with the most rows (ties: lower class id first)."""
        ordered = sorted(self.classes, key=lambda c: (-self.classes[c].rows, c))
        return ordered[:MAX_CLASSES]

    def region_names(self) -> list[str]:
        return sorted({name for s in self.classes.values() for name in s.region_rows})


# ---------------------------------------------------------------------------- reading

def read_run(output_dir: str) -> Run:
    """Read a run folder into a ``Run``; ReportError if it is not a finished run."""
    output_dir = output_dir.rstrip("/")
    if not output_dir:
        raise ReportError("no run folder given: pass the --output_dir of a pipeline run")
    run = Run(output_dir, _read_manifest(output_dir))
    for path in _parquet_files(output_dir, "summaries"):
        _read_summaries(run, path)
    for path in _parquet_files(output_dir, "errors"):
        _read_errors(run, path)
    return run


def _read_manifest(output_dir: str) -> dict:
    path = f"{output_dir}/manifest.json"
    if not FileSystems.exists(path):
        raise ReportError(f"{path} not found: {output_dir} is not the output folder of a "
                          f"finished `python -m pipeline` run")
    try:
        with FileSystems.open(path) as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ReportError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def _parquet_files(output_dir: str, folder: str) -> list[str]:
    pattern = f"{output_dir}/{folder}/*.parquet"
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _batches(path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()):
    """Record batches of ``path`` with the required and present optional columns."""
    with FileSystems.open(path) as f:
        parquet = pq.ParquetFile(f)
        present = set(parquet.schema_arrow.names)
        missing = [c for c in required if c not in present]
        if missing:
            raise ReportError(f"{path} lacks columns {missing}: was it written by "
                              f"`python -m pipeline`?")
        columns = [*required, *(c for c in optional if c in present)]
        yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _read_errors(run: Run, path: str) -> None:
    for batch in _batches(path, ("image_uri", "stage", "error_type", "message")):
        rows = batch.to_pylist()
        run.error_count += len(rows)
        run.error_kinds.update((r["stage"], r["error_type"]) for r in rows)
        run.errors.extend(rows[:TABLE_ROWS - len(run.errors)])


def _read_summaries(run: Run, path: str) -> None:
    for batch in _batches(path, COLUMNS, OPTIONAL_COLUMNS):
        if batch.num_rows:
            _add_batch(run, batch)


def _floats(array) -> np.ndarray:
    return np.asarray(pc.fill_null(array.cast("float64"), np.nan).to_numpy(zero_copy_only=False))


def _add_batch(run: Run, batch) -> None:
    """Fold one record batch of summaries into ``run``."""
    classes = np.asarray(batch.column("target_class").to_numpy(zero_copy_only=False), np.int64)
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
        zero_copy_only=False)
    run.rows += batch.num_rows
    run.unconverged += int(unconverged.sum())
    run.relative_errors = np.concatenate(
        [run.relative_errors, _floats(batch.column("relative_completeness_error"))])
    run.steps = np.concatenate(
        [run.steps, np.nan_to_num(_floats(batch.column("steps"))).astype(np.int64)])
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
    """Sum each class's grids; a class keeps the grid size of its first row."""
    offsets, values, valid = _list_parts(batch.column("grid"))
    values = np.asarray(values.to_numpy(zero_copy_only=False), np.float64)
    cells = np.nan_to_num(_floats(batch.column("grid_cells"))).astype(np.int64)
    usable = valid & (cells > 0) & (np.diff(offsets) == cells ** 2)
    for s, rows in zip(stats, groups):
        rows = rows[usable[rows]]
        if not rows.size:
            continue
        if not s.grid_rows:
            s.grid_cells = int(cells[rows[0]])
            s.grid_sum = np.zeros(s.grid_cells ** 2)
        rows = rows[cells[rows] == s.grid_cells]
        s.grid_sum += values[offsets[rows][:, None] + np.arange(s.grid_cells ** 2)].sum(axis=0)
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
        zero_copy_only=False)[known]
    has_area = values.type.get_field_index("area_fraction") >= 0
    area = (np.nan_to_num(_floats(values.field("area_fraction").take(entries)))[known]
            if has_area else None)
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


def _add_examples(stats: list[ClassStats], groups: list[np.ndarray], top5: np.ndarray,
                  batch) -> None:
    """Keep each class's EXAMPLES most and least concentrated rows (by top5_share)."""
    columns = {name: batch.column(name) for name in EXAMPLE_COLUMNS}
    for s, rows in zip(stats, groups):
        rows = rows[np.isfinite(top5[rows])]
        if not rows.size:
            continue
        rows = rows[np.argsort(top5[rows], kind="stable")]
        picked = sorted({int(r) for r in (*rows[:EXAMPLES], *rows[-EXAMPLES:])})
        new = [Example(float(top5[r]), *(columns[c][r].as_py() for c in EXAMPLE_COLUMNS))
               for r in picked]
        s.most = sorted([*s.most, *new], key=lambda e: e.key, reverse=True)[:EXAMPLES]
        s.least = sorted([*s.least, *new], key=lambda e: e.key)[:EXAMPLES]


# ---------------------------------------------------------------------------- findings

@dataclass(frozen=True)
class Shortcut:
    """A class that puts clearly more positive attribution on a region than the others."""

    region: str
    class_id: int
    label: str
    share: float
    others: float  # mean share of the other classes


def shortcuts(run: Run) -> list[Shortcut]:
    """Per region name, the class whose mean share clearly beats the other classes' mean
    (by SHORTCUT_MARGIN and SHORTCUT_RATIO), among classes with MIN_ROWS rows with it."""
    found = []
    for name in run.region_names():
        shares = {c: s.region_share(name) for c, s in run.classes.items()
                  if s.region_rows[name] >= MIN_ROWS}
        if len(shares) < 2:
            continue
        top = max(shares, key=lambda c: (shares[c], -c))
        others = float(np.mean([v for c, v in shares.items() if c != top]))
        if shares[top] - others >= SHORTCUT_MARGIN and shares[top] >= SHORTCUT_RATIO * others:
            found.append(Shortcut(name, top, run.classes[top].label, shares[top], others))
    return found


def findings(run: Run) -> list[str]:
    """Plain-text findings the data supports, most important first; `x` marks names."""
    return [*_shortcut_findings(run), *_region_findings(run), *_completeness_findings(run),
            *_failure_findings(run)]


def _shortcut_findings(run: Run) -> list[str]:
    out = []
    for s in shortcuts(run):
        stats = run.classes[s.class_id]
        area = stats.area_share(s.region)
        covers = f" (the region covers {area:.1%} of the image)" if area else ""
        ratio = f"{s.share / s.others:.0f}x" if s.others > 0 else "far more than"
        out.append(f"class `{s.label}` puts {s.share:.0%} of its positive attribution on region "
                   f"`{s.region}`{covers}, {ratio} the other classes' {s.others:.0%} on "
                   f"average, and its peak falls there in {stats.hit_rate(s.region):.0%} of "
                   f"images: check whether `{s.region}` is a shortcut the model uses for "
                   f"`{s.label}`")
    return out


def _region_findings(run: Run) -> list[str]:
    out = []
    for class_id in run.shown_classes():
        s = run.classes[class_id]
        names = sorted((n for n in s.region_rows if s.region_rows[n] >= MIN_ROWS),
                       key=lambda n: (-s.region_share(n), n))
        if not names:
            continue
        first, *rest = names
        out.append(", ".join([
            f"class `{s.label}`: {s.region_share(first):.0%} of positive attribution falls on "
            f"region `{first}` {_peak(s, first)}",
            *(f"{s.region_share(n):.0%} on `{n}` {_peak(s, n)}" for n in rest)]))
    return out


def _peak(s: ClassStats, name: str) -> str:
    return f"(peak there in {s.hit_rate(name):.0%} of images)"


def _completeness_findings(run: Run) -> list[str]:
    if not run.rows:
        return ["No row was attributed: there is nothing to say about attributions."]
    out = []
    tolerance = run.config("tolerance")
    target = f"the completeness tolerance {tolerance:g}" if tolerance else "completeness"
    if run.unconverged:
        advice = "raise --max_steps" + (" or use --method gausslegendre"
                                        if run.config("method") != "gausslegendre" else "")
        out.append(f"{run.unconverged} of {run.rows} rows ({run.unconverged / run.rows:.1%}) "
                   f"did not converge to {target}: their attributions do not add up to the "
                   f"score change; {advice}")
    finite = run.relative_errors[np.isfinite(run.relative_errors)]
    if finite.size:
        summary = (f"median relative completeness error {np.median(finite):.2g}, "
                   f"max {finite.max():.2g}")
        out.append(f"All {run.rows} rows converged to {target} ({summary})."
                   if not run.unconverged else f"Across all rows: {summary}.")
    if finite.size < run.rows:
        out.append(f"{run.rows - finite.size} rows have no finite relative completeness "
                   f"error (the target score equals the baseline score).")
    return out


def _failure_findings(run: Run) -> list[str]:
    counts = run.manifest.get("counts") or {}
    matched = counts.get("matched")
    failed = counts.get("failed", run.error_count)
    out = []
    if not failed:
        out.append("No input failed.")
    else:
        of = f" of {matched} inputs ({failed / matched:.1%})" if matched else " inputs"
        kinds = ", ".join(f"{kind} at {stage} ({n})"
                          for (stage, kind), n in run.error_kinds.most_common(3))
        out.append(f"{failed}{of} failed" + (f"; most common: {kinds}" if kinds else "") + ".")
    if run.manifest.get("complete") is False:
        out.append(f"The outputs do not account for every matched input (missing "
                   f"{counts.get('missing', '?')}, in both summaries and errors "
                   f"{counts.get('in_both', '?')}): the run did not finish cleanly.")
    return out


# ---------------------------------------------------------------------------- pictures

def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure(width: float = 6.4, height: float = 3.0) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.grid(True, color="#e5e7eb", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def _figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()


def _rgb_png(rgb: np.ndarray, scale: int = 1) -> bytes:
    image = Image.fromarray(rgb)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _class_colors(count: int) -> list[str]:
    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [matplotlib.colors.to_hex(cmap(i % cmap.N)) for i in range(count)]


def _error_histogram(values: np.ndarray, tolerance) -> bytes:
    figure = _figure()
    axes = figure.axes[0]
    floor = max(values.min(), 1e-12)
    low, high = np.floor(np.log10(floor)), np.ceil(np.log10(max(values.max(), floor * 10)))
    bins = np.logspace(low, high, int(2 * (high - low)) + 1)
    axes.hist(np.clip(values, floor, None), bins=bins, color="#3b6ea5", edgecolor="white")
    axes.set_xscale("log")
    if tolerance:
        axes.axvline(tolerance, color="#cf222e", linestyle="--", linewidth=1.2)
    axes.set_xlabel("relative completeness error")
    axes.set_ylabel("rows")
    return _figure_png(figure)


def _steps_chart(steps: np.ndarray) -> bytes:
    figure = _figure()
    axes = figure.axes[0]
    distinct, counts = np.unique(steps, return_counts=True)
    if distinct.size <= 30:
        axes.bar([str(v) for v in distinct], counts, color="#3b6ea5")
    else:
        axes.hist(steps, bins=30, color="#3b6ea5", edgecolor="white")
    axes.set_xlabel("points of the final rule (steps)")
    axes.set_ylabel("rows")
    return _figure_png(figure)


def _curves_chart(curves: list[np.ndarray], colors: list[str]) -> bytes:
    figure = _figure(6.4, 3.6)
    axes = figure.axes[0]
    for curve, color in zip(curves, colors):
        axes.plot(ALPHAS, curve, color=color, linewidth=1.8)
    axes.set_xlim(0, 1)
    axes.set_xlabel("alpha (baseline = 0, image = 1)")
    axes.set_ylabel("mean target score")
    return _figure_png(figure)


def _heatmap_png(grid: np.ndarray, vmax: float) -> bytes:
    values = np.clip(grid / vmax, 0, 1) if vmax > 0 else np.zeros_like(grid)
    rgb = matplotlib.colormaps["inferno"](values, bytes=True)[..., :3]
    return _rgb_png(np.ascontiguousarray(rgb), scale=max(1, 168 // grid.shape[0]))


def _colorbar_png() -> bytes:
    rgb = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256)[None, :].repeat(10, 0),
                                          bytes=True)[..., :3]
    return _rgb_png(np.ascontiguousarray(rgb))


def _read_bytes(uri: str) -> bytes:
    with FileSystems.open(uri) as f:
        return f.read()


def _artifact(run: Run, uri: str | None, folder: str) -> bytes:
    """A mask or overlay: at its recorded uri, else under this folder (a moved run)."""
    if not uri:
        raise ValueError("no file recorded")
    candidates = [uri, f"{run.output_dir}/{folder}/{uri.rsplit('/', 1)[-1]}"]
    for candidate in candidates:
        if FileSystems.exists(candidate):
            return _read_bytes(candidate)
    raise FileNotFoundError(uri)


def _original_jpeg(run: Run, uri: str, size: tuple[int, int]) -> bytes:
    """The original decoded and fitted to the model input as the pipeline did."""
    from attribution.images import DEFAULT_MAX_PIXELS, decode_image, resize_with_pad

    max_pixels = run.config("max_pixels") or DEFAULT_MAX_PIXELS
    pixels = resize_with_pad(decode_image(_read_bytes(uri), max_pixels=max_pixels), size)
    buffer = io.BytesIO()
    Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- HTML

def esc(value) -> str:
    return html.escape("—" if value is None else str(value), quote=True)


def _inline(text: str) -> str:
    """Escaped text with `names` set in <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(text))


def _img(uri: str, alt: str, width: int | None = None, pixelated: bool = False) -> str:
    size = f' width="{width}"' if width else ""
    css = ' class="px"' if pixelated else ""
    return f'<img src="{uri}" alt="{esc(alt)}"{size}{css}>'


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Header cells are escaped; body cells are already HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(title: str, pairs: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f'<div class="card"><h3>{esc(title)}</h3><table class="kv">{rows}</table></div>'


def _size(value) -> str | None:
    return " × ".join(str(v) for v in value) if value else None


def _duration(started: str | None, finished: str | None) -> str | None:
    try:
        seconds = int((datetime.datetime.fromisoformat(finished)
                       - datetime.datetime.fromisoformat(started)).total_seconds())
    except (TypeError, ValueError):
        return None
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _section_run(run: Run) -> str:
    m = run.manifest
    model, counts = m.get("model") or {}, m.get("counts") or {}
    fingerprint = model.get("fingerprint")
    cards = [
        _pairs("Model", [("handle", model.get("handle")), ("kind", model.get("kind")),
                         ("fingerprint", fingerprint[:12] if fingerprint else None),
                         ("input size", _size(model.get("input_size"))),
                         ("classes", model.get("num_classes")), ("output", model.get("output"))]),
        _pairs("Settings", [(k, run.config(k)) for k in
                            ("method", "steps", "tolerance", "max_steps", "baseline", "score",
                             "target", "batch_size", "grid_cells", "input_pattern")]),
        _pairs("Counts", [(k, counts.get(k)) for k in
                          ("matched", "attributed", "failed", "rows", "missing", "in_both")]
               + [("complete", m.get("complete")),
                  ("model loads", (m.get("metrics") or {}).get("model_loads"))]),
        _pairs("Time", [("started", m.get("started_at")), ("finished", m.get("finished_at")),
                        ("duration", _duration(m.get("started_at"), m.get("finished_at")))]),
        _pairs("Versions", sorted((m.get("versions") or {}).items())),
    ]
    config = json.dumps(m.get("config") or {}, indent=2, sort_keys=True, default=str)
    return (f'<section id="run"><h2>Run</h2><div class="cards">{"".join(cards)}</div>'
            f"<details><summary>All options</summary><pre>{esc(config)}</pre></details>"
            f"</section>")


def _section_findings(run: Run) -> str:
    items = "".join(f"<li>{_inline(text)}</li>" for text in findings(run))
    return f'<section id="findings"><h2>Findings</h2><ul class="findings">{items}</ul></section>'


def _section_errors(run: Run) -> str:
    if not run.error_count:
        return '<section id="errors"><h2>Errors</h2><p>No input failed.</p></section>'
    kinds = _table(["stage", "error type", "inputs"],
                   [[esc(stage), esc(kind), str(n)]
                    for (stage, kind), n in run.error_kinds.most_common()], numeric={2})
    rows = [[f'<span class="uri">{esc(e["image_uri"])}</span>', esc(e["stage"]),
             esc(e["error_type"]), esc(e["message"])] for e in run.errors]
    more = run.error_count - len(run.errors)
    note = f'<p class="note">{more} more not shown (see errors/*.parquet).</p>' if more else ""
    return (f'<section id="errors"><h2>Errors</h2><p>{run.error_count} inputs could not be '
            f"attributed.</p>{kinds}"
            f'{_table(["uri", "stage", "error type", "message"], rows)}{note}</section>')


def _section_completeness(run: Run) -> str:
    head = '<section id="completeness"><h2>Completeness</h2>'
    if not run.rows:
        return head + "<p>No attributed rows.</p></section>"
    values = run.relative_errors
    finite = values[np.isfinite(values)]
    tolerance = run.config("tolerance")
    facts = [("rows", run.rows), ("not converged", f"{run.unconverged} "
                                                  f"({_pct(run.unconverged / run.rows)})"),
             ("tolerance", tolerance),
             ("gradient evaluations", f"{run.gradient_evaluations} "
                                      f"({run.gradient_evaluations / run.rows:.1f} a row)")]
    if finite.size:
        facts += [("median relative error", f"{np.median(finite):.3g}"),
                  ("95th percentile", f"{np.percentile(finite, 95):.3g}"),
                  ("max", f"{finite.max():.3g}")]
    charts = []
    if finite.size:
        line = " (dashed: the tolerance)" if tolerance else ""
        zeros = int((finite <= 0).sum())
        zero_note = f"; {zeros} rows at exactly 0 are drawn in the first bin" if zeros else ""
        charts.append(_chart(_error_histogram(finite, tolerance),
                             f"Relative completeness error, log scale{line}{zero_note}."))
    charts.append(_chart(_steps_chart(run.steps), "Steps used per row."))
    return (head + f'<div class="cards">{_pairs("Summary", facts)}</div>'
            f'<div class="charts">{"".join(charts)}</div></section>')


def _chart(png: bytes, caption: str) -> str:
    return (f'<figure class="chart">{_img(_data_uri(png), caption, width=560)}'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _legend(run: Run, class_ids: list[int], colors: list[str]) -> str:
    items = "".join(f'<li><span class="swatch" style="background:{color}"></span>'
                    f"<code>{esc(run.classes[c].label)}</code> "
                    f'<span class="note">({run.classes[c].curve_rows} rows)</span></li>'
                    for c, color in zip(class_ids, colors))
    return f'<ul class="legend">{items}</ul>'


def _shown_note(run: Run) -> str:
    hidden = len(run.classes) - len(run.shown_classes())
    return (f'<p class="note">Showing the {MAX_CLASSES} classes with the most rows; {hidden} '
            f"more are in the classes table.</p>" if hidden > 0 else "")


def _section_saturation(run: Run) -> str:
    head = '<section id="saturation"><h2>Saturation curves</h2>'
    shown = [c for c in run.shown_classes() if run.classes[c].curve_rows]
    if not shown:
        return head + "<p>No path scores to draw.</p></section>"
    colors = _class_colors(len(shown))
    png = _curves_chart([run.classes[c].mean_curve() for c in shown], colors)
    caption = (f"Mean target score ({run.config('score') or 'score'}) along the straight path "
               f"from the baseline to the image, per target class: each row's path is "
               f"interpolated onto {ALPHAS.size} alphas, then averaged. A curve that "
               f"flattens early means the score saturates and most attribution comes "
               f"from small alphas.")
    return (head + f'<div class="charts">{_chart(png, caption)}{_legend(run, shown, colors)}'
            f"</div>{_shown_note(run)}</section>")


def _section_heatmaps(run: Run) -> str:
    head = '<section id="heatmaps"><h2>Where the attribution lies, per class</h2>'
    table = _classes_table(run)
    shown = [c for c in run.shown_classes() if run.classes[c].grid_rows]
    if not shown:
        return head + "<p>No attribution grids to draw.</p>" + table + "</section>"
    grids = {c: run.classes[c].mean_grid() for c in shown}
    vmax = max(float(g.max()) for g in grids.values())
    tiles = "".join(
        f'<figure class="tile">{_img(_data_uri(_heatmap_png(grids[c], vmax)), "heatmap")}'
        f"<figcaption><code>{esc(run.classes[c].label)}</code> · "
        f"{run.classes[c].grid_rows} rows</figcaption></figure>" for c in shown)
    cells = grids[shown[0]].shape[0]
    scale = (f'<p class="note">Mean share of |IG| mass per cell of a {cells} × {cells} grid '
             f"over the model input (uniform: {1 / cells ** 2:.2%} a cell). Shared scale: "
             f'{_img(_data_uri(_colorbar_png()), "colour scale", width=160)} 0 to '
             f"{vmax:.2%}.</p>")
    return (head + scale + f'<div class="tiles">{tiles}</div>{_shown_note(run)}'
            f"<h3>Classes</h3>{table}</section>")


def _classes_table(run: Run) -> str:
    ordered = sorted(run.classes, key=lambda c: (-run.classes[c].rows, c))
    rows = [[str(c), f"<code>{esc(run.classes[c].label)}</code>", str(run.classes[c].rows),
             f"{run.classes[c].top5_sum / run.classes[c].rows:.3f}",
             f"{run.classes[c].gini_sum / run.classes[c].rows:.3f}",
             str(run.classes[c].unconverged)] for c in ordered[:TABLE_ROWS]]
    more = len(ordered) - TABLE_ROWS
    note = f'<p class="note">{more} more classes not shown.</p>' if more > 0 else ""
    return _table(["class", "label", "rows", "mean top5_share", "mean gini", "not converged"],
                  rows, numeric={0, 2, 3, 4, 5}) + note


def _section_regions(run: Run) -> str:
    head = '<section id="regions"><h2>Regions</h2>'
    names = run.region_names()
    if not names:
        return head + "<p>No regions were given for this run (--regions).</p></section>"
    flagged = {(s.class_id, s.region) for s in shortcuts(run)}
    rows = []
    for c in run.shown_classes():
        s = run.classes[c]
        cells = [f"<code>{esc(s.label)}</code>"]
        for name in names:
            if not s.region_rows[name]:
                cells.append("—")
                continue
            mark = ' class="flag"' if (c, name) in flagged else ""
            cells.append(f"<span{mark}>{_pct(s.region_share(name))}</span> "
                         f'<span class="note">hit {_pct(s.hit_rate(name))} · '
                         f"n={s.region_rows[name]}</span>")
        rows.append(cells)
    return (head + "<p>Mean share of each image's positive attribution inside each region, "
            "and the pointing-game hit rate (how often the pixel with the highest "
            "attribution lies inside it). Highlighted: a class that puts clearly more on a "
            f"region than the other classes do.</p>{_table(['class', *names], rows)}"
            f"{_shown_note(run)}</section>")


def _picture(render, alt: str, width: int, pixelated: bool) -> str:
    try:
        return f"<figure>{_img(_data_uri(*render()), alt, width, pixelated)}" \
               f"<figcaption>{esc(alt)}</figcaption></figure>"
    except Exception as e:  # noqa: BLE001 - any unreadable picture is shown as missing
        return (f'<figure><div class="missing" style="width:{width}px;height:{width}px">'
                f"{esc(alt)} cannot be read: {esc(type(e).__name__)}: {esc(e)}</div>"
                f"<figcaption>{esc(alt)}</figcaption></figure>")


def _example(run: Run, e: Example, size: tuple[int, int] | None) -> str:
    width = size[1] if size else 224
    shown = width * max(1, 160 // width) if width < 160 else min(width, 256)
    pixelated = shown > width

    def original():
        if not size:
            raise ValueError("the manifest has no model input size")
        return _original_jpeg(run, e.image_uri, size), "image/jpeg"

    pictures = (_picture(original, "original", shown, pixelated)
                + _picture(lambda: (_artifact(run, e.mask_uri, "masks"), "image/png"),
                           "mask", shown, pixelated)
                + _picture(lambda: (_artifact(run, e.overlay_uri, "overlays"), "image/png"),
                           "overlay", shown, pixelated))
    score = f"{e.target_score:.3f}" if e.target_score is not None else "—"
    return (f'<div class="example"><div class="triple">{pictures}</div>'
            f'<p class="note"><span class="uri">{esc(e.image_uri)}</span><br>top5_share '
            f"{e.top5_share:.3f} · target score {score} · predicted "
            f"<code>{esc(e.predicted_label)}</code></p></div>")


def _section_examples(run: Run) -> str:
    head = '<section id="examples"><h2>Most and least concentrated images</h2>'
    shown = [c for c in run.shown_classes() if run.classes[c].most]
    if not shown:
        return head + "<p>No attributed rows.</p></section>"
    size = (run.manifest.get("model") or {}).get("input_size") or run.config(
        "resolved_image_size")
    size = tuple(int(v) for v in size) if size else None
    parts = [head, "<p>Per class, the images whose |IG| mass is most concentrated (highest "
             "share in the top 5% of pixels) and least concentrated: the original fitted to "
             "the model input, the mask and the overlay.</p>"]
    for c in shown:
        s = run.classes[c]
        parts.append(f"<h3>class <code>{esc(s.label)}</code> "
                     f'<span class="note">({s.rows} rows)</span></h3>')
        columns = [f"<div><h4>{title}</h4>{''.join(_example(run, e, size) for e in examples)}"
                   f"</div>" for title, examples in (("most concentrated", s.most),
                                                     ("least concentrated", s.least_distinct()))
                   if examples]
        parts.append(f'<div class="pair">{"".join(columns)}</div>')
    parts.append(_shown_note(run) + "</section>")
    return "".join(parts)


NAV = (("run", "Run"), ("findings", "Findings"), ("errors", "Errors"),
       ("completeness", "Completeness"), ("saturation", "Saturation"),
       ("heatmaps", "Heatmaps"), ("regions", "Regions"), ("examples", "Examples"))

CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--alt:#f6f8fa;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:var(--fg);background:#fff}
header{padding:24px 32px 12px}
header h1{margin:0;font-size:24px}
header p{margin:4px 0 0;color:var(--muted)}
nav{position:sticky;top:0;z-index:1;background:rgba(255,255,255,.96);
border-bottom:1px solid var(--line);padding:8px 32px}
nav a{margin-right:18px;color:var(--accent);text-decoration:none;font-weight:500}
nav a:hover{text-decoration:underline}
main{padding:0 32px 48px;max-width:1280px}
section{margin-top:28px}
h2{font-size:20px;margin:0 0 12px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:16px;margin:20px 0 8px}
h4{font-size:14px;margin:12px 0 4px;color:var(--muted);font-weight:600}
table{border-collapse:collapse;font-size:14px;margin:8px 0 12px}
th,td{border:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
thead th,table.kv th{background:var(--alt);font-weight:600}
tbody tr:nth-child(even) td{background:#fbfcfd}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv{width:100%;table-layout:fixed}
table.kv{font-size:13px}
table.kv th{width:45%}
table.kv th,table.kv td{overflow-wrap:anywhere}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
code{background:var(--alt);padding:0 4px;border-radius:4px}
pre{background:var(--alt);padding:12px;overflow:auto;max-height:400px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:16px}
.card h3{margin:0 0 4px}
.charts,.tiles,.triple{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
.findings li{margin:6px 0}
.note,figcaption{color:var(--muted);font-size:13px}
.uri{word-break:break-all;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:12px}
figure{margin:0}
figure.chart{max-width:560px}
figure.chart img{max-width:100%;height:auto}
.legend{list-style:none;padding:0;margin:0;font-size:14px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;
vertical-align:middle}
.pair{display:flex;flex-wrap:wrap;gap:16px 48px}
.example{margin-bottom:16px}
.missing{display:flex;align-items:center;justify-content:center;text-align:center;padding:8px;
background:var(--alt);border:1px dashed var(--line);color:var(--muted);font-size:12px;
overflow:hidden;word-break:break-word}
img.px{image-rendering:pixelated}
.flag{background:#fff8c5;font-weight:700;padding:0 3px;border-radius:3px}
details{margin-top:12px}
"""

# Sets <body data-images-loaded / data-images-broken> once every image has loaded, so a
# headless browser can check that each data: URI decoded.
SCRIPT = """
window.addEventListener("load", function () {
  var loaded = 0, broken = 0;
  document.querySelectorAll("img").forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { loaded++; } else { broken++; }
  });
  document.body.dataset.imagesLoaded = loaded;
  document.body.dataset.imagesBroken = broken;
});
"""

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")


def render(run: Run) -> str:
    """The report page for ``run`` as one HTML string."""
    nav = "".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in NAV)
    sections = "".join(section(run) for section in (
        _section_run, _section_findings, _section_errors, _section_completeness,
        _section_saturation, _section_heatmaps, _section_regions, _section_examples))
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>IG report: {esc(run.output_dir)}</title><style>{CSS}</style></head>"
            f"<body><header><h1>Integrated Gradients report</h1>"
            f'<p><span class="uri">{esc(run.output_dir)}</span> · generated {generated}</p>'
            f"</header><nav>{nav}</nav><main>{sections}</main>"
            f"<script>{SCRIPT}</script></body></html>\n")


def write_report(output_dir: str) -> str:
    """Write ``output_dir/report.html`` (replacing any) and return its path."""
    run = read_run(output_dir)
    from transforms.summarize import publish

    path = f"{run.output_dir}/{REPORT_NAME}"
    publish(path, render(run).encode("utf-8"))
    return path


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 written, 2 the folder is not a readable run folder."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description="Write DIR/report.html, a self-contained HTML report of a pipeline run.")
    parser.add_argument("output_dir", metavar="DIR", help="the --output_dir of a finished run")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.output_dir)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
