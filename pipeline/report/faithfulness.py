"""The report's Faithfulness section: does the attribution point at what the model uses?

Per class, the mean deletion and insertion curves against the random-order control, the
histogram of deletion AUC gaps, the share of rows whose attribution order beats random, and
the rows that do not (their overlays, as the examples section shows them). The numbers come
from ``pipeline.evidence.section``; registered before the examples section by importing this
module from ``pipeline.report.page``.
"""

from __future__ import annotations

import numpy as np

from pipeline.report.page import SECTIONS, _artifact
from pipeline.report.read import Run
from pipeline.report.templating import data_uri, pct, picture


@SECTIONS.add(
    "faithfulness",
    "Faithfulness",
    "Faithfulness: deletion and insertion against a random order",
    before="examples",
)
def faithfulness_section(run: Run) -> dict:
    from pipeline import evidence

    data = evidence.section(evidence.read_summaries(run.output_dir, evidence.SECTION_COLUMNS))
    classes = [c for c in data["classes"] if c["deletion"] is not None]
    if not classes:
        return {"rows": 0}
    from pipeline.report import charts

    colors = charts.class_colors(len(classes))
    figures = [
        (
            data_uri(
                charts.faithfulness_chart(
                    [c[kind] for c in classes], [c[f"{kind}_random"] for c in classes], colors, kind
                )
            ),
            f"Mean {kind} curve per target class (solid: pixels in attribution order; dashed: "
            f"the same class in a random order).",
        )
        for kind in ("deletion", "insertion")
        if any(c[kind] is not None for c in classes)
    ]
    gaps = np.array(data["gaps"], np.float64)
    if gaps.size:
        figures.append(
            (
                data_uri(charts.gap_histogram(gaps)),
                "Deletion AUC gap per row: the random order's normalised AUC minus the "
                "attribution order's (> 0: the score falls faster in attribution "
                "order).",
            )
        )
    table = [
        [
            c["label"],
            c["rows"],
            pct(c["deletion_share"]) if c["deletion_share"] is not None else None,
            pct(c["insertion_share"]) if c["insertion_share"] is not None else None,
        ]
        for c in classes
    ]
    worst = [
        {
            "picture": picture(
                lambda uri=r["overlay_uri"]: (_artifact(run, uri, "overlays"), "image/png"),
                "overlay",
                160,
            ),
            "uri": r["image_uri"],
            "label": r["label"],
            "gap": f"{r['gap']:.3f}",
        }
        for r in data["not_beating"]
    ]
    return {
        "rows": int(sum(c["rows"] for c in classes)),
        "legend": list(zip(colors, table)),
        "charts": figures,
        "table": table,
        "failing": worst,
        "beating": int((gaps > 0).sum()),
        "compared": int(gaps.size),
    }
