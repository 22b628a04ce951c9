"""The run report's core sections, a data function each (``run`` -> the template's ``data``):
the run, findings, errors, completeness, saturation, heatmaps, regions and examples. Their
order in the page, among the sections of ``strategies``, ``confusion`` and ``faithfulness``,
is ``pipeline.report.sections.SECTIONS``.

Charts (matplotlib) and originals (``attribution.images``, which loads TensorFlow) are
imported only when a section has something to draw.
"""

from __future__ import annotations

import datetime
import io
import json

import numpy as np

from pipeline.html import artifact, data_uri, pct, picture
from pipeline.report.insights import findings, shortcuts
from pipeline.report.read import ALPHAS, TABLE_ROWS, Example, Run
from transforms.layout import MASKS, OVERLAYS


def _size(value) -> str | None:
    return " × ".join(str(v) for v in value) if value else None


def _duration(started: str | None, finished: str | None) -> str | None:
    try:
        seconds = int(
            (
                datetime.datetime.fromisoformat(finished) - datetime.datetime.fromisoformat(started)
            ).total_seconds()
        )
    except (TypeError, ValueError):
        return None
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _hidden(run: Run) -> int:
    """Classes with rows that the charts leave out (they are in the classes table)."""
    return len(run.classes) - len(run.shown_classes())


def run_section(run: Run) -> dict:
    m = run.manifest
    model, counts = m.get("model") or {}, m.get("counts") or {}
    fingerprint = model.get("fingerprint")
    cards = [
        (
            "Model",
            [
                ("handle", model.get("handle")),
                ("kind", model.get("kind")),
                ("fingerprint", fingerprint[:12] if fingerprint else None),
                ("input size", _size(model.get("input_size"))),
                ("classes", model.get("num_classes")),
                ("output", model.get("output")),
            ],
        ),
        (
            "Settings",
            [
                (k, run.config(k))
                for k in (
                    "method",
                    "steps",
                    "tolerance",
                    "max_steps",
                    "baseline",
                    "score",
                    "target",
                    "batch_size",
                    "grid_cells",
                    "input_pattern",
                )
            ],
        ),
        (
            "Counts",
            [
                (k, counts.get(k))
                for k in ("matched", "attributed", "failed", "rows", "missing", "in_both")
            ]
            + [
                ("complete", m.get("complete")),
                ("model loads", (m.get("metrics") or {}).get("model_loads")),
            ],
        ),
        (
            "Time",
            [
                ("started", m.get("started_at")),
                ("finished", m.get("finished_at")),
                ("duration", _duration(m.get("started_at"), m.get("finished_at"))),
            ],
        ),
        ("Versions", sorted((m.get("versions") or {}).items())),
    ]
    config = json.dumps(m.get("config") or {}, indent=2, sort_keys=True, default=str)
    return {"cards": cards, "config": config}


def findings_section(run: Run) -> dict:
    return {"findings": findings(run)}


def errors_section(run: Run) -> dict:
    return {
        "count": run.error_count,
        "kinds": [[stage, kind, n] for (stage, kind), n in run.error_kinds.most_common()],
        "rows": [[e["image_uri"], e["stage"], e["error_type"], e["message"]] for e in run.errors],
        "more": run.error_count - len(run.errors),
    }


def completeness_section(run: Run) -> dict:
    if not run.rows:
        return {"rows": 0}
    from pipeline.report import charts

    finite = run.relative_errors[np.isfinite(run.relative_errors)]
    tolerance = run.config("tolerance")
    facts = [
        ("rows", run.rows),
        ("not converged", f"{run.unconverged} ({pct(run.unconverged / run.rows)})"),
        ("tolerance", tolerance),
        (
            "gradient evaluations",
            f"{run.gradient_evaluations} ({run.gradient_evaluations / run.rows:.1f} a row)",
        ),
    ]
    figures = []
    if finite.size:
        facts += [
            ("median relative error", f"{np.median(finite):.3g}"),
            ("95th percentile", f"{np.percentile(finite, 95):.3g}"),
            ("max", f"{finite.max():.3g}"),
        ]
        line = " (dashed: the tolerance)" if tolerance else ""
        zeros = int((finite <= 0).sum())
        zero_note = f"; {zeros} rows at exactly 0 are drawn in the first bin" if zeros else ""
        figures.append(
            (
                data_uri(charts.error_histogram(finite, tolerance)),
                f"Relative completeness error, log scale{line}{zero_note}.",
            )
        )
    figures.append((data_uri(charts.steps_chart(run.steps)), "Steps used per row."))
    return {"rows": run.rows, "facts": facts, "charts": figures}


def saturation_section(run: Run) -> dict:
    shown = [c for c in run.shown_classes() if run.classes[c].curve_rows]
    if not shown:
        return {"chart": None}
    from pipeline.report import charts

    colors = charts.class_colors(len(shown))
    png = charts.curves_chart([run.classes[c].mean_curve() for c in shown], colors)
    caption = (
        f"Mean target score ({run.config('score') or 'score'}) along the straight path "
        f"from the baseline to the image, per target class: each row's path is "
        f"interpolated onto {ALPHAS.size} alphas, then averaged. A curve that "
        f"flattens early means the score saturates and most attribution comes "
        f"from small alphas."
    )
    legend = [
        (color, run.classes[c].label, run.classes[c].curve_rows) for c, color in zip(shown, colors)
    ]
    return {
        "chart": data_uri(png),
        "caption": caption,
        "legend": legend,
        "hidden": _hidden(run),
        "shown": run.report_classes,
    }


def _classes_table(run: Run) -> dict:
    ordered = sorted(run.classes, key=lambda c: (-run.classes[c].rows, c))
    rows = [
        [
            c,
            s.label,
            s.rows,
            f"{s.top5_sum / s.rows:.3f}",
            f"{s.gini_sum / s.rows:.3f}",
            s.unconverged,
        ]
        for c, s in ((c, run.classes[c]) for c in ordered[:TABLE_ROWS])
    ]
    return {"rows": rows, "more": len(ordered) - TABLE_ROWS}


def heatmaps_section(run: Run) -> dict:
    shown = [c for c in run.shown_classes() if run.classes[c].grid_rows]
    data = {
        "classes": _classes_table(run),
        "tiles": [],
        "hidden": _hidden(run),
        "shown": run.report_classes,
    }
    if not shown:
        return data
    from pipeline.report import charts

    grids = {c: run.classes[c].mean_grid() for c in shown}
    vmax = max(float(g.max()) for g in grids.values())
    cells = grids[shown[0]].shape[0]
    data.update(
        tiles=[
            (
                data_uri(charts.heatmap_png(grids[c], vmax)),
                run.classes[c].label,
                run.classes[c].grid_rows,
            )
            for c in shown
        ],
        cells=cells,
        uniform=f"{1 / cells**2:.2%}",
        vmax=f"{vmax:.2%}",
        colorbar=data_uri(charts.colorbar_png()),
    )
    return data


def regions_section(run: Run) -> dict:
    names = run.region_names()
    flagged = {(s.class_id, s.region) for s in shortcuts(run)} if names else set()
    rows = []
    for c in run.shown_classes() if names else ():
        s = run.classes[c]
        rows.append(
            (
                s.label,
                [
                    {
                        "share": pct(s.region_share(n)),
                        "hit": pct(s.hit_rate(n)),
                        "n": s.region_rows[n],
                        "flag": (c, n) in flagged,
                    }
                    if s.region_rows[n]
                    else None
                    for n in names
                ],
            )
        )
    return {"names": names, "rows": rows, "hidden": _hidden(run), "shown": run.report_classes}


def _original_jpeg(run: Run, original: bytes | Exception, size: tuple[int, int]) -> bytes:
    """The original (bytes read by ``sources.originals``) decoded and fitted to the model
    input as the pipeline did."""
    from PIL import Image

    from attribution.images import DEFAULT_MAX_PIXELS, decode_image, resize_with_pad

    if isinstance(original, Exception):
        raise original
    max_pixels = run.config("max_pixels") or DEFAULT_MAX_PIXELS
    pixels = resize_with_pad(decode_image(original, max_pixels=max_pixels), size)
    buffer = io.BytesIO()
    Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def _example(run: Run, e: Example, size: tuple[int, int] | None, originals: dict) -> dict:
    width = size[1] if size else 224
    shown = width * max(1, 160 // width) if width < 160 else min(width, 256)
    pixelated = shown > width

    def original():
        if not size:
            raise ValueError("the manifest has no model input size")
        return _original_jpeg(run, originals[e.image_uri], size), "image/jpeg"

    def shrunk(folder, uri):  # shrunk when large: 24 classes x 4 examples stay a few MB
        from pipeline.report import charts

        return charts.compact(artifact(run.output_dir, folder, uri), "image/png", shown)

    pictures = [
        picture(original, "original", shown, pixelated),
        picture(lambda: shrunk(MASKS, e.mask_uri), "mask", shown, pixelated),
        picture(lambda: shrunk(OVERLAYS, e.overlay_uri), "overlay", shown, pixelated),
    ]
    return {
        "pictures": pictures,
        "uri": e.image_uri,
        "top5_share": f"{e.top5_share:.3f}",
        "score": f"{e.target_score:.3f}" if e.target_score is not None else "—",
        "predicted": e.predicted_label,
    }


def examples_section(run: Run) -> dict:
    shown = [c for c in run.shown_classes() if run.classes[c].most]
    size = (run.manifest.get("model") or {}).get("input_size") or run.config("resolved_image_size")
    size = tuple(int(v) for v in size) if size else None
    shown_examples = [e for c in shown for e in (*run.classes[c].most, *run.classes[c].least)]
    originals = {}
    if size and shown_examples:
        from pipeline.report import sources

        originals = sources.originals(
            run.output_dir,
            run.manifest,
            list(dict.fromkeys((e.image_uri, e.content_sha256) for e in shown_examples)),
        )
    classes = []
    for c in shown:
        s = run.classes[c]
        columns = [
            (title, [_example(run, e, size, originals) for e in examples])
            for title, examples in (
                ("most concentrated", s.most),
                ("least concentrated", s.least_distinct()),
            )
            if examples
        ]
        classes.append({"label": s.label, "rows": s.rows, "columns": columns})
    return {"classes": classes, "hidden": _hidden(run), "shown": run.report_classes}
