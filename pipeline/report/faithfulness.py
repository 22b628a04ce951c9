"""The report's Faithfulness section: does the attribution point at what the model uses?

Per class, the mean deletion and insertion curves against the random-order control, the
histogram of deletion AUC gaps, the share of rows whose attribution order beats random, and
the rows that do not (their overlays, as the examples section shows them); MuFidelity per
class when the run computed it, and the fill removed pixels took (``--deletion_fill``). The
numbers come from ``pipeline.evidence.section``.
"""

from __future__ import annotations

import numpy as np

from attribution.faithfulness import DEFAULT_FRACTION, DEFAULT_GRID, DEFAULT_SUBSETS
from pipeline.html import artifact_picture, data_uri, pct
from pipeline.report.read import Run
from transforms.layout import OVERLAYS

# --deletion_fill -> what the section says a removed pixel became
FILL_WORDS = {
    "baseline": "deletion (and MuFidelity) set removed pixels to the row's baseline; "
    "insertion puts pixels back on a blurred copy",
    "blur": "removed pixels take the blurred image's values (deletion, insertion, MuFidelity)",
    "road": "removed pixels are imputed from their neighbours with a little noise (ROAD, "
    "Rong et al. 2022), in deletion, insertion and MuFidelity",
}


def faithfulness_section(run: Run) -> dict:
    from pipeline import evidence

    data = evidence.section(evidence.read_summaries(run.output_dir, evidence.SECTION_COLUMNS))
    classes = [c for c in data["classes"] if c["deletion"] is not None]
    fidelity = [[f.label, f.rows, f"{f.mean:.3f}", f"{f.median:.3f}"] for f in data["mufidelity"]]
    if not classes and not fidelity:
        return {"rows": 0, "mufidelity": []}
    fill = run.config("deletion_fill") or "baseline"
    out = {
        "fill": fill,
        "fill_words": FILL_WORDS.get(fill, ""),
        "mufidelity": fidelity,
        "subsets": run.config("mufidelity_subsets") or DEFAULT_SUBSETS,
        "fraction": pct(float(run.config("mufidelity_fraction") or DEFAULT_FRACTION)),
        "grid": run.config("mufidelity_grid", DEFAULT_GRID),
    }
    if not classes:
        return {**out, "rows": 0}
    from pipeline.report import charts

    colors = charts.class_colors(len(classes))
    figures = [
        (
            data_uri(
                charts.faithfulness_chart(
                    [c[kind] for c in classes],
                    [c[f"{kind}_random"] for c in classes],
                    colors,
                    kind,
                    fill,
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
            "picture": artifact_picture(run.output_dir, OVERLAYS, r["overlay_uri"], "overlay", 160),
            "uri": r["image_uri"],
            "label": r["label"],
            "gap": f"{r['gap']:.3f}",
        }
        for r in data["not_beating"]
    ]
    return {
        **out,
        "rows": int(sum(c["rows"] for c in classes)),
        "legend": list(zip(colors, table)),
        "charts": figures,
        "table": table,
        "failing": worst,
        "beating": int((gaps > 0).sum()),
        "compared": int(gaps.size),
    }
