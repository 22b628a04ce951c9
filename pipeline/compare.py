"""`python -m pipeline.compare RUN_A RUN_B --output_dir DIR`: what changed between two runs.

Images are matched by content (``content_sha256``), so a renamed file is still the same
image. The per-image comparison is a Beam pipeline (read both runs' summaries, key by content
hash, CoGroupByKey, compare, WriteToParquet), so a large comparison runs on Dataflow with
the usual Beam options; the summary is then computed from the written Parquet:

    DIR/drift/*.parquet       one row per image in both runs (DRIFT_SCHEMA)
    DIR/unmatched/*.parquet   images in only one of the runs (content hash, uri, run a|b)
    DIR/drift_summary.json    overall and per-class numbers, the thresholds and the verdict
    DIR/drift.html            self-contained page: numbers, per-class table, the most changed
                              images before | after (the runs' overlays embedded)

Each image is compared on its first target row (``target_rank`` 0: the predicted class with
the default ``--target predicted``). ``--fail_on "METRIC<VALUE"`` (or >, <=, >=) exits 1
naming every violated threshold; a threshold on a metric without a value (nothing compared)
counts as violated. Exit 2 for bad arguments or a folder that is not a finished run.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import os
import re
import sys
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

NAMESPACE = "drift"
REPO_SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "setup.py")
TOP_FRACTION = 0.05  # the top-5% |IG| pixels (or grid cells) compared by IoU
# What is read from each run's summaries (columns a run lacks are read as null).
COLUMNS = ("image_uri", "content_sha256", "target_rank", "target_class", "target_label",
           "predicted_class", "predicted_label", "predicted_score", "target_score",
           "grid_cells", "grid", "raw_uri", "overlay_uri", "regions", "model_fingerprint",
           "settings_hash")
REGION_DELTA = pa.struct([("name", pa.string()), ("mass_a", pa.float64()),
                          ("mass_b", pa.float64()), ("delta", pa.float64())])
DRIFT_SCHEMA = pa.schema([
    ("content_sha256", pa.string()), ("uri_a", pa.string()), ("uri_b", pa.string()),
    ("target_class_a", pa.int32()), ("target_class_b", pa.int32()),
    ("target_label_a", pa.string()), ("target_label_b", pa.string()),
    ("predicted_class_a", pa.int32()), ("predicted_class_b", pa.int32()),
    ("predicted_label_a", pa.string()), ("predicted_label_b", pa.string()),
    ("prediction_changed", pa.bool_()),
    ("predicted_score_a", pa.float64()), ("predicted_score_b", pa.float64()),
    ("predicted_score_delta", pa.float64()),
    ("target_score_a", pa.float64()), ("target_score_b", pa.float64()),
    ("target_score_delta", pa.float64()),
    ("grid_correlation", pa.float64()),  # Spearman of the two attribution grids
    ("top5_iou", pa.float64()), ("iou_source", pa.string()),  # "raw" | "grid" | null
    ("region_mass_max_abs_delta", pa.float64()), ("region_mass_deltas", pa.list_(REGION_DELTA)),
    ("overlay_uri_a", pa.string()), ("overlay_uri_b", pa.string()),
    ("same_model", pa.bool_()), ("same_settings", pa.bool_()),
])
UNMATCHED_SCHEMA = pa.schema([("content_sha256", pa.string()), ("image_uri", pa.string()),
                              ("run", pa.string())])
# Metrics of drift_summary.json that --fail_on may name.
METRICS = ("images_compared", "images_only_in_a", "images_only_in_b",
           "changed_prediction_count", "changed_prediction_fraction",
           "median_grid_correlation", "mean_grid_correlation", "p10_grid_correlation",
           "min_grid_correlation", "median_top5_iou", "mean_top5_iou", "p10_top5_iou",
           "min_top5_iou", "mean_abs_target_score_delta", "max_abs_target_score_delta",
           "mean_abs_predicted_score_delta", "max_abs_predicted_score_delta",
           "median_region_mass_delta", "max_region_mass_delta")
_THRESHOLD = re.compile(r"\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")
_OPERATORS = {"<": np.less, ">": np.greater, "<=": np.less_equal, ">=": np.greater_equal}
TOP_IMAGES = 12


class UsageError(ValueError):
    """A bad argument: the message says what to do."""


# ---------------------------------------------------------------------------- measures

def average_ranks(values) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size)
    ranks[order] = ((starts + ends - 1) / 2 + 1)[group]
    return ranks


def spearman(a, b) -> float | None:
    """Spearman rank correlation; 1.0 for equal inputs, None when undefined (a constant
    input that the other does not equal, or different lengths)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size or a.size == 0:
        return None
    if np.array_equal(a, b):
        return 1.0
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denominator == 0:
        return None
    return float(np.clip(float(ra @ rb) / denominator, -1.0, 1.0))


def top_fraction_iou(mass_a, mass_b, fraction: float = TOP_FRACTION) -> float | None:
    """IoU of the ceil(fraction * n) largest entries of two equally shaped maps (ties broken
    by position, so equal maps give 1.0)."""
    a = np.asarray(mass_a, dtype=np.float64).ravel()
    b = np.asarray(mass_b, dtype=np.float64).ravel()
    if a.size != b.size or a.size == 0:
        return None
    k = max(1, math.ceil(round(fraction * a.size, 9)))
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(top_a & top_b) / len(top_a | top_b)


def region_deltas(regions_a, regions_b) -> tuple[list[dict] | None, float | None]:
    if not regions_a or not regions_b:
        return None, None
    a = {r["name"]: r["mass_fraction"] for r in regions_a}
    b = {r["name"]: r["mass_fraction"] for r in regions_b}
    deltas = [{"name": name, "mass_a": a[name], "mass_b": b[name], "delta": b[name] - a[name]}
              for name in sorted(set(a) & set(b))]
    if not deltas:
        return None, None
    return deltas, max(abs(d["delta"]) for d in deltas)


def _load_raw(uri: str | None):
    if not uri:
        return None
    try:
        with FileSystems.open(uri, compression_type="uncompressed") as f:
            return np.load(io.BytesIO(f.read()))
    except Exception as e:  # noqa: BLE001 - a missing raw file falls back to the grid
        logging.warning("cannot read %s (%s): comparing grids instead", uri, e)
        return None


def _delta(a, b):
    return None if a is None or b is None else float(b) - float(a)


def compare_rows(a: dict, b: dict) -> dict:
    """One DRIFT_SCHEMA row from the rank-0 summary rows of the same image in two runs."""
    grid_a, grid_b = a.get("grid"), b.get("grid")
    comparable_grids = (grid_a is not None and grid_b is not None
                        and a.get("grid_cells") == b.get("grid_cells"))
    correlation = spearman(grid_a, grid_b) if comparable_grids else None
    iou, source = None, None
    if a.get("raw_uri") and b.get("raw_uri"):
        raw_a, raw_b = _load_raw(a["raw_uri"]), _load_raw(b["raw_uri"])
        if raw_a is not None and raw_b is not None and raw_a.shape == raw_b.shape:
            iou = top_fraction_iou(np.abs(raw_a).sum(axis=-1), np.abs(raw_b).sum(axis=-1))
            source = "raw"
    if source is None and comparable_grids:
        iou, source = top_fraction_iou(grid_a, grid_b), "grid"
    deltas, max_delta = region_deltas(a.get("regions"), b.get("regions"))
    return {
        "content_sha256": a["content_sha256"], "uri_a": a["image_uri"], "uri_b": b["image_uri"],
        "target_class_a": a.get("target_class"), "target_class_b": b.get("target_class"),
        "target_label_a": a.get("target_label"), "target_label_b": b.get("target_label"),
        "predicted_class_a": a.get("predicted_class"),
        "predicted_class_b": b.get("predicted_class"),
        "predicted_label_a": a.get("predicted_label"),
        "predicted_label_b": b.get("predicted_label"),
        "prediction_changed": a.get("predicted_class") != b.get("predicted_class"),
        "predicted_score_a": a.get("predicted_score"),
        "predicted_score_b": b.get("predicted_score"),
        "predicted_score_delta": _delta(a.get("predicted_score"), b.get("predicted_score")),
        "target_score_a": a.get("target_score"), "target_score_b": b.get("target_score"),
        "target_score_delta": _delta(a.get("target_score"), b.get("target_score")),
        "grid_correlation": correlation, "top5_iou": iou, "iou_source": source,
        "region_mass_max_abs_delta": max_delta, "region_mass_deltas": deltas,
        "overlay_uri_a": a.get("overlay_uri"), "overlay_uri_b": b.get("overlay_uri"),
        "same_model": a.get("model_fingerprint") == b.get("model_fingerprint"),
        "same_settings": a.get("settings_hash") == b.get("settings_hash"),
    }


# ---------------------------------------------------------------------------- the pipeline

def key_first_target(row: dict):
    """(content hash, row) for the first target row of each image."""
    if row.get("content_sha256") and (row.get("target_rank") or 0) == 0:
        yield row["content_sha256"], row


def _pick(rows: list[dict], uri: str | None = None) -> dict:
    """The row for ``uri`` when present, else the smallest uri (identical copies)."""
    rows = sorted(rows, key=lambda r: r["image_uri"])
    return next((r for r in rows if r["image_uri"] == uri), rows[0])


class CompareFn(beam.DoFn):
    """(hash, {a: rows, b: rows}) -> drift row, or `unmatched` rows for one-sided images."""

    def __init__(self):
        self.compared = Metrics.counter(NAMESPACE, "compared")
        self.unmatched = Metrics.counter(NAMESPACE, "unmatched")

    def process(self, element):
        sha, groups = element
        rows_a, rows_b = list(groups["a"]), list(groups["b"])
        if rows_a and rows_b:
            a = _pick(rows_a)
            self.compared.inc()
            yield compare_rows(a, _pick(rows_b, a["image_uri"]))
            return
        for run, rows in (("a", rows_a), ("b", rows_b)):
            for row in rows:
                self.unmatched.inc()
                yield beam.pvalue.TaggedOutput("unmatched", {
                    "content_sha256": sha, "image_uri": row["image_uri"], "run": run})


def _summary_columns(run: str) -> list[str]:
    first = FileSystems.match([f"{run}/summaries/*.parquet"])[0].metadata_list
    if not first:
        raise UsageError(f"{run}: no summaries/*.parquet: pass the output folder of a "
                         f"finished run of python -m pipeline")
    with FileSystems.open(first[0].path) as f:
        names = pq.read_schema(f).names
    if "content_sha256" not in names:
        raise UsageError(f"{run}: its summaries have no content_sha256 column (made by an "
                         f"older version): rerun it to compare")
    return [c for c in COLUMNS if c in names]


def build(p: beam.Pipeline, run_a: str, run_b: str, output_dir: str) -> None:
    keyed = {}
    for name, run in (("a", run_a), ("b", run_b)):
        keyed[name] = (p
                       | f"Read{name.upper()}" >> beam.io.ReadFromParquet(
                           f"{run}/summaries/*.parquet", columns=_summary_columns(run))
                       | f"Key{name.upper()}" >> beam.FlatMap(key_first_target))
    compared = (keyed
                | "JoinByContent" >> beam.CoGroupByKey()
                | "Compare" >> beam.ParDo(CompareFn()).with_outputs("unmatched", main="drift"))
    out = output_dir.rstrip("/")
    _ = compared.drift | "WriteDrift" >> beam.io.WriteToParquet(
        f"{out}/drift/part", DRIFT_SCHEMA, codec="snappy", file_name_suffix=".parquet")
    _ = compared.unmatched | "WriteUnmatched" >> beam.io.WriteToParquet(
        f"{out}/unmatched/part", UNMATCHED_SCHEMA, codec="snappy", file_name_suffix=".parquet")


# ---------------------------------------------------------------------------- summary

def read_parquet(folder: str, columns: list[str] | None = None) -> pa.Table:
    tables = []
    for match in FileSystems.match([f"{folder.rstrip('/')}/*.parquet"])[0].metadata_list:
        with FileSystems.open(match.path) as f:
            tables.append(pq.read_table(f, columns=columns))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables)


def _array(table: pa.Table, column: str) -> np.ndarray:
    """Floats with nulls as NaN."""
    return np.array([np.nan if v is None else float(v)
                     for v in table.column(column).to_pylist()], dtype=np.float64)


def _stat(values: np.ndarray, how) -> float | None:
    values = values[~np.isnan(values)]
    return float(how(values)) if values.size else None


def _p10(values):
    return np.percentile(values, 10)


def summarize(drift: pa.Table, unmatched: pa.Table) -> tuple[dict, list[dict]]:
    """(metrics, per-class rows) from the written drift and unmatched Parquet."""
    n = drift.num_rows
    changed = (np.array(drift.column("prediction_changed").to_pylist(), dtype=bool)
               if n else np.zeros(0, bool))
    runs = unmatched.column("run").to_pylist() if unmatched.num_rows else []
    correlation = _array(drift, "grid_correlation") if n else np.zeros(0)
    iou = _array(drift, "top5_iou") if n else np.zeros(0)
    target_delta = np.abs(_array(drift, "target_score_delta")) if n else np.zeros(0)
    predicted_delta = np.abs(_array(drift, "predicted_score_delta")) if n else np.zeros(0)
    region = _array(drift, "region_mass_max_abs_delta") if n else np.zeros(0)
    metrics = {
        "images_compared": n, "images_only_in_a": runs.count("a"),
        "images_only_in_b": runs.count("b"),
        "changed_prediction_count": int(changed.sum()),
        "changed_prediction_fraction": float(changed.mean()) if n else None,
        "median_grid_correlation": _stat(correlation, np.median),
        "mean_grid_correlation": _stat(correlation, np.mean),
        "p10_grid_correlation": _stat(correlation, _p10),
        "min_grid_correlation": _stat(correlation, np.min),
        "median_top5_iou": _stat(iou, np.median), "mean_top5_iou": _stat(iou, np.mean),
        "p10_top5_iou": _stat(iou, _p10), "min_top5_iou": _stat(iou, np.min),
        "mean_abs_target_score_delta": _stat(target_delta, np.mean),
        "max_abs_target_score_delta": _stat(target_delta, np.max),
        "mean_abs_predicted_score_delta": _stat(predicted_delta, np.mean),
        "max_abs_predicted_score_delta": _stat(predicted_delta, np.max),
        "median_region_mass_delta": _stat(region, np.median),
        "max_region_mass_delta": _stat(region, np.max),
    }
    classes = []
    if n:
        predicted = np.array(drift.column("predicted_class_a").to_pylist(), dtype=np.int64)
        labels = drift.column("predicted_label_a").to_pylist()
        for cls in np.unique(predicted):
            rows = predicted == cls
            classes.append({
                "class": int(cls), "label": labels[int(np.flatnonzero(rows)[0])],
                "images": int(rows.sum()),
                "changed_prediction_fraction": float(changed[rows].mean()),
                "median_grid_correlation": _stat(correlation[rows], np.median),
                "median_top5_iou": _stat(iou[rows], np.median),
                "mean_abs_target_score_delta": _stat(target_delta[rows], np.mean),
            })
    return metrics, classes


def parse_threshold(text: str) -> tuple[str, str, float]:
    match = _THRESHOLD.fullmatch(text)
    if not match:
        raise UsageError(f"--fail_on {text!r}: expected METRIC<VALUE, METRIC>VALUE, <= or >=, "
                         f"e.g. 'median_grid_correlation<0.8'")
    metric, operator, value = match.group(1), match.group(2), float(match.group(3))
    if metric not in METRICS:
        raise UsageError(f"--fail_on {text!r}: unknown metric {metric!r}; one of "
                         f"{', '.join(METRICS)}")
    return metric, operator, value


def check(metrics: dict, thresholds: list[str]) -> list[dict]:
    """Each threshold with the actual value and whether it is violated."""
    checked = []
    for text in thresholds:
        metric, operator, value = parse_threshold(text)
        actual = metrics.get(metric)
        violated = actual is None or bool(_OPERATORS[operator](actual, value))
        checked.append({"threshold": f"{metric}{operator}{value:g}", "metric": metric,
                        "operator": operator, "value": value, "actual": actual,
                        "violated": violated})
    return checked


# ---------------------------------------------------------------------------- HTML

def _esc(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value), quote=True)


def _image(uri: str | None) -> str:
    if not uri:
        return "<span class=muted>no overlay</span>"
    try:
        with FileSystems.open(uri, compression_type="uncompressed") as f:
            data = base64.b64encode(f.read()).decode("ascii")
    except Exception:  # noqa: BLE001 - a missing file is shown, not fatal
        return f"<span class=muted>missing: {_esc(uri)}</span>"
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(uri)}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def most_changed(drift: pa.Table, count: int) -> list[dict]:
    """Changed predictions first, then the lowest grid correlation, then the lowest IoU."""
    rows = drift.select([c for c in ("uri_a", "uri_b", "predicted_label_a", "predicted_label_b",
                                     "prediction_changed", "grid_correlation", "top5_iou",
                                     "iou_source", "target_score_delta", "overlay_uri_a",
                                     "overlay_uri_b")]).to_pylist() if drift.num_rows else []
    nan_last = lambda v: 2.0 if v is None else v
    rows.sort(key=lambda r: (not r["prediction_changed"], nan_last(r["grid_correlation"]),
                             nan_last(r["top5_iou"]), r["uri_b"]))
    return [r for r in rows[:count]
            if r["prediction_changed"] or (r["grid_correlation"] or 0) < 1 - 1e-9
            or (r["top5_iou"] is not None and r["top5_iou"] < 1)]


def render_html(summary: dict, classes: list[dict], examples: list[dict]) -> str:
    runs = summary["runs"]
    metrics = summary["metrics"]
    verdict = ("<p class=bad>Violated: " + ", ".join(_esc(t["threshold"]) for t in
                                                       summary["thresholds"] if t["violated"])
               + "</p>") if not summary["passed"] else (
        "<p class=good>All thresholds hold.</p>" if summary["thresholds"] else
        "<p class=muted>No --fail_on thresholds were given.</p>")
    run_rows = [[name.upper(), r["folder"], r.get("run_id"), r.get("finished_at"),
                 (r.get("model_fingerprint") or "")[:12] or None, r.get("settings_hash")]
                for name, r in runs.items()]
    threshold_rows = [[t["threshold"], t["actual"], "VIOLATED" if t["violated"] else "ok"]
                      for t in summary["thresholds"]]
    class_rows = [[c["class"], c["label"], c["images"], c["changed_prediction_fraction"],
                   c["median_grid_correlation"], c["median_top5_iou"],
                   c["mean_abs_target_score_delta"]] for c in classes]
    cards = "".join(
        f"<figure><figcaption>{_esc(e['uri_b'])}<br>{_esc(e['predicted_label_a'])} &rarr; "
        f"{_esc(e['predicted_label_b'])}, correlation {_esc(e['grid_correlation'])}, "
        f"top-5% IoU {_esc(e['top5_iou'])} ({_esc(e['iou_source'])})</figcaption>"
        f"<div class=pair><div>A{_image(e['overlay_uri_a'])}</div>"
        f"<div>B{_image(e['overlay_uri_b'])}</div></div></figure>" for e in examples)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>Attribution drift</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
.good{{color:#060}} .bad{{color:#b00;font-weight:bold}} .muted{{color:#777}}
figure{{display:inline-block;margin:0 1em 1em 0;vertical-align:top;max-width:360px}}
figcaption{{font-size:12px;word-break:break-all}}
.pair{{display:flex;gap:6px}} .pair div{{text-align:center}}
.pair img{{display:block;width:160px;height:160px;object-fit:contain;image-rendering:pixelated}}
</style></head><body>
<h1>Attribution drift: A &rarr; B</h1>
{_table(["run", "folder", "run id", "finished at", "model", "settings hash"], run_rows)}
<h2>Verdict</h2>{verdict}
{_table(["threshold", "actual", "status"], threshold_rows) if threshold_rows else ""}
<h2>Overall</h2>
{_table(["metric", "value"], [[k, v] for k, v in metrics.items()])}
<p class=muted>Images are matched by content hash and compared on their first target row.
Grid correlation: Spearman rank correlation of the |IG| grids. Top-5% IoU: overlap of the
5% highest-|IG| pixels (raw attributions when both runs wrote them, else grid cells).</p>
<h2>Per class (predicted class in A)</h2>
{_table(["class", "label", "images", "changed prediction", "median correlation",
         "median top-5% IoU", "mean |target score delta|"], class_rows)}
<h2>Most changed images (before | after)</h2>
{cards or "<p class=muted>No image changed.</p>"}
</body></html>
"""


# ---------------------------------------------------------------------------- command

def _absolute(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def _manifest(run: str) -> dict:
    try:
        with FileSystems.open(f"{run}/manifest.json") as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:  # noqa: BLE001 - the manifest only decorates the report
        return {}


def _publish(path: str, data: bytes) -> None:
    directory, name = path.rsplit("/", 1)
    temporary = f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"
    with FileSystems.create(temporary) as f:
        f.write(data)
    FileSystems.rename([temporary], [path])


def _remove_previous_outputs(out: str) -> None:
    """A rerun into the same folder must not mix in the shards of an earlier comparison."""
    for folder in ("drift", "unmatched"):
        stale = [m.path for m in
                 FileSystems.match([f"{out}/{folder}/*.parquet"])[0].metadata_list]
        if stale:
            FileSystems.delete(stale)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.compare",
        description="Compare two runs of python -m pipeline image by image (matched by "
                    "content hash). Options not listed here are Beam's (--runner, ...).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("run_a", help="The earlier run's output folder (local or gs://).")
    p.add_argument("run_b", help="The later run's output folder.")
    p.add_argument("--output_dir", required=True,
                   help="Where drift/, unmatched/, drift_summary.json and drift.html go.")
    p.add_argument("--fail_on", action="append", default=[],
                   help="Exit 1 when METRIC<VALUE (or >, <=, >=) holds; repeatable. Metrics: "
                        + ", ".join(METRICS))
    p.add_argument("--top", type=int, default=TOP_IMAGES,
                   help="Most changed images shown in drift.html.")
    return p


def run(argv: list[str]) -> dict:
    """Compare, write everything, return drift_summary.json's content."""
    args, beam_args = parser().parse_known_args(argv)
    for text in args.fail_on:  # refuse a bad threshold before any work
        parse_threshold(text)
    run_a, run_b, out = _absolute(args.run_a), _absolute(args.run_b), _absolute(args.output_dir)
    for run_dir in (run_a, run_b):
        _summary_columns(run_dir)
    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if "Dataflow" in runner and not options.view_as(SetupOptions).setup_file:
        options.view_as(SetupOptions).setup_file = REPO_SETUP
    _remove_previous_outputs(out)
    with beam.Pipeline(options=options) as p:
        build(p, run_a, run_b, out)
    drift = read_parquet(f"{out}/drift")
    unmatched = read_parquet(f"{out}/unmatched")
    metrics, classes = summarize(drift, unmatched)
    thresholds = check(metrics, args.fail_on)
    runs = {}
    for name, folder in (("a", run_a), ("b", run_b)):
        m = _manifest(folder)
        runs[name] = {"folder": folder, "run_id": m.get("run_id"),
                      "finished_at": m.get("finished_at"),
                      "model_fingerprint": (m.get("model") or {}).get("fingerprint"),
                      "settings_hash": m.get("settings_hash")}
    iou_sources = drift.column("iou_source").to_pylist() if drift.num_rows else []
    summary = {"output_dir": out, "runs": runs, "metrics": metrics, "per_class": classes,
               "iou_sources": {s: iou_sources.count(s) for s in ("raw", "grid")},
               "thresholds": thresholds, "passed": not any(t["violated"] for t in thresholds)}
    _publish(f"{out}/drift_summary.json",
             json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
    page = render_html(summary, classes, most_changed(drift, max(0, args.top)))
    _publish(f"{out}/drift.html", page.encode("utf-8"))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 no threshold violated, 1 a threshold violated, 2 bad arguments."""
    logging.getLogger().setLevel(logging.WARNING)
    try:
        summary = run(sys.argv[1:] if argv is None else list(argv))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m, out = summary["metrics"], summary["output_dir"]

    def show(value):
        return "n/a" if value is None else f"{value:.3f}"
    print(f"compared {m['images_compared']} images ({m['images_only_in_a']} only in A, "
          f"{m['images_only_in_b']} only in B): {m['changed_prediction_count']} changed "
          f"prediction, median grid correlation {show(m['median_grid_correlation'])}, median "
          f"top-5% IoU {show(m['median_top5_iou'])}. Report: {out}/drift.html")
    violated = [t for t in summary["thresholds"] if t["violated"]]
    for t in violated:
        print(f"error: --fail_on {t['threshold']} violated: {t['metric']} is "
              f"{'undefined (nothing compared)' if t['actual'] is None else t['actual']}",
              file=sys.stderr)
    return 1 if violated else 0


if __name__ == "__main__":
    sys.exit(main())
