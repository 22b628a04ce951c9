"""The methods page, ``python -m pipeline.report DIR_A DIR_B ...``: runs of different
``--attribution`` methods (or baselines, or settings) on the same images, side by side, so
a user can pick the method that suits their model: what each cost, how complete it was,
where it puts the attribution per class, and its deletion / insertion AUCs and MuFidelity
when the runs have them (the faithfulness columns), with the fill removed pixels took
(``--deletion_fill``), so runs can be ranked on each metric.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.html import Sections, data_uri, pct, render_page
from pipeline.report.read import MAX_CLASSES, Run, _batches, read_run
from transforms.files import parquet_parts, parquet_schema, publish
from transforms.layout import SUMMARIES

METHODS_NAME = "methods.html"
SECTIONS = Sections()
FAITHFULNESS = ("deletion_auc", "insertion_auc", "mufidelity")
# each faithfulness column: its name in the ranking, and whether higher is better
RANKED = {
    "deletion_auc": ("mean deletion AUC", False),
    "insertion_auc": ("mean insertion AUC", True),
    "mufidelity": ("mean MuFidelity", True),
}


def _baseline(run: Run) -> str | None:
    """Where the run's paths started, as its ``baseline`` column says (blur_ig, xrai and
    expected_gradients do not use --baseline)."""
    from attribution.methods.config import MethodConfig

    try:
        return MethodConfig(
            attribution=run.config("attribution") or "ig",
            baselines=tuple(str(run.config("baseline") or "black").split(",")),
            max_blur_sigma=float(run.config("max_blur_sigma") or 20.0),
        ).baseline_label
    except ValueError:
        return run.config("baseline")


def _name(run: Run) -> str:
    return f"{run.config('attribution') or 'ig'} · {_baseline(run) or '—'}"


def _mean_column(run: Run, column: str) -> float | None:
    values = [
        np.asarray(batch.column(column).to_numpy(zero_copy_only=False), np.float64)
        for path in parquet_parts(run.output_dir, SUMMARIES)
        if column in parquet_schema(path).names
        for batch in _batches(path, (column,))
    ]
    values = np.concatenate(values) if values else np.zeros(0)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


@SECTIONS.add("runs", "Runs", "Each run's method, cost and completeness")
def runs_section(runs: list[Run]) -> dict:
    rows = []
    for run in runs:
        errors = run.relative_errors[np.isfinite(run.relative_errors)]
        rows.append(
            [
                run.output_dir,
                run.config("attribution") or "ig",
                _baseline(run),
                run.config("method"),
                _fill(run),
                run.rows,
                run.gradient_evaluations / run.rows if run.rows else None,
                pct(float(np.median(errors))) if errors.size else None,
                run.unconverged,
                *(_mean_column(run, c) for c in FAITHFULNESS),
            ]
        )
    return {"rows": rows, "ranking": _ranking(runs), "fills": sorted(set(map(_fill, runs)))}


def _fill(run: Run) -> str:
    """How the run's faithfulness checks removed pixels (runs before the option: baseline)."""
    return run.config("deletion_fill") or "baseline"


def _ranking(runs: list[Run]) -> list[tuple[str, int, list[tuple[str, float]]]]:
    """Per faithfulness column that at least two runs have: (its name, the number of rows
    compared, [(run, mean)] best first), the means over the (image content, target) rows
    every one of those runs has, so the runs are ranked on the same images."""
    out = []
    for column, (name, higher) in RANKED.items():
        have = [(run.output_dir, values) for run in runs if (values := _by_row(run, column))]
        if len(have) < 2:
            continue
        common = set.intersection(*(set(values) for _, values in have))
        if not common:
            out.append((name, 0, []))
            continue
        means = [(d, float(np.mean([values[k] for k in common]))) for d, values in have]
        out.append((name, len(common), sorted(means, key=lambda p: -p[1] if higher else p[1])))
    return out


def _by_row(run: Run, column: str) -> dict[tuple[str, int], float]:
    """(content_sha256, target_class) -> the column's finite value in the run's rows."""
    keys = ("content_sha256", "target_class", column)
    out = {}
    for path in parquet_parts(run.output_dir, SUMMARIES):
        if not set(keys) <= set(parquet_schema(path).names):
            continue
        for batch in _batches(path, keys):
            for sha, target, value in zip(*(batch.column(k).to_pylist() for k in keys)):
                if value is not None and np.isfinite(value):
                    out[(sha, target)] = float(value)
    return out


@SECTIONS.add("heatmaps", "Heatmaps", "Where each method puts the attribution, per class")
def heatmaps_section(runs: list[Run]) -> dict:
    first = runs[0]
    shown = [
        c
        for c in first.shown_classes()
        if all(c in run.classes and run.classes[c].grid_rows for run in runs)
    ][:MAX_CLASSES]
    data = {"names": [_name(run) for run in runs], "classes": []}
    if not shown:
        return data
    from pipeline.report import charts

    grids = {(i, c): run.classes[c].mean_grid() for i, run in enumerate(runs) for c in shown}
    vmax = max(float(g.max()) for g in grids.values())
    data.update(
        classes=[
            (
                first.classes[c].label,
                [
                    (data_uri(charts.heatmap_png(grids[(i, c)], vmax)), run.classes[c].grid_rows)
                    for i, run in enumerate(runs)
                ],
            )
            for c in shown
        ],
        vmax=f"{vmax:.2%}",
        colorbar=data_uri(charts.colorbar_png()),
    )
    return data


def render(runs: list[Run]) -> str:
    return render_page(
        page="methods",
        title="Attribution methods side by side",
        heading="Attribution methods side by side",
        subject=", ".join(run.output_dir for run in runs),
        sections=SECTIONS,
        source=runs,
    )


def write_methods(output_dirs: list[str], output: str = METHODS_NAME) -> str:
    """Read every run folder and write the methods page to ``output``; return its path."""
    runs = [read_run(d) for d in output_dirs]
    path = output if "://" in output else os.path.abspath(output)
    publish(path, render(runs).encode("utf-8"))
    return path
