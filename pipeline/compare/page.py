"""``drift.html``: the comparison's page, in the shared page shell (see ``pipeline.html`` for
how a section is a template plus a data function)."""

from __future__ import annotations

from pipeline.html import Sections, artifact_picture, render_page
from transforms.layout import OVERLAYS

SECTIONS = Sections()  # in page order: each data function below adds its own


def _overlay(folder: str, uri: str | None, alt: str):
    """A row's overlay, from inside its run ``folder`` only."""
    return artifact_picture(folder, OVERLAYS, uri, alt, width=160, pixelated=True)


@SECTIONS.add("runs", "Runs", "Runs compared: A → B")
def runs_section(drift: dict) -> dict:
    return {
        "rows": [
            [
                name.upper(),
                r["folder"],
                r.get("run_id"),
                r.get("finished_at"),
                (r.get("model_fingerprint") or "")[:12] or None,
                r.get("settings_hash"),
            ]
            for name, r in drift["summary"]["runs"].items()
        ]
    }


@SECTIONS.add("verdict", "Verdict")
def verdict_section(drift: dict) -> dict:
    thresholds = drift["summary"]["thresholds"]
    return {
        "passed": drift["summary"]["passed"],
        "violated": [t["threshold"] for t in thresholds if t["violated"]],
        "rows": [
            [t["threshold"], t["actual"], "VIOLATED" if t["violated"] else "ok"] for t in thresholds
        ],
    }


@SECTIONS.add("overall", "Overall")
def overall_section(drift: dict) -> dict:
    return {"rows": [[k, v] for k, v in drift["summary"]["metrics"].items()]}


@SECTIONS.add("classes", "Per class", "Per class (predicted class in A)")
def classes_section(drift: dict) -> dict:
    """At most TABLE_ROWS classes (a run of 20,000 classes made a 15 MB page): with more, those
    whose predictions changed most, then whose maps correlate least, in class order."""
    from pipeline.compare.strategies import TABLE_ROWS

    classes = drift["classes"]
    if len(classes) > TABLE_ROWS:

        def changed_most(c):
            correlation = c["median_grid_correlation"]
            return (-c["changed_prediction_fraction"], 2.0 if correlation is None else correlation)

        classes = sorted(sorted(classes, key=changed_most)[:TABLE_ROWS], key=lambda c: c["class"])
    return {
        "more": len(drift["classes"]) - len(classes),
        "rows": [
            [
                c["class"],
                c["label"],
                c["images"],
                c["changed_prediction_fraction"],
                c["median_grid_correlation"],
                c["median_top5_iou"],
                c["mean_abs_target_score_delta"],
            ]
            for c in classes
        ],
    }


@SECTIONS.add("strategies", "Strategies", "Strategy drift per class")
def strategies_section(drift: dict) -> dict:
    from pipeline.compare.strategies import TABLE_ROWS

    found = drift["summary"].get("strategies") or {}
    ran = found.get("ran") or {}
    classes = found.get("classes") or []

    def pairs(c):
        return "; ".join(
            f"{p['a']} -> {p['b']} (cos {p['cosine']:.2f}, "
            f"{(p['share_a'] or 0):.0%} -> {(p['share_b'] or 0):.0%})"
            for p in c["pairs"]
        )

    return {
        "ran": ran,
        "threshold": drift["summary"].get("max_strategy_shift"),
        "rows": [
            [
                c["class"],
                c["label"],
                f"{c['strategies_a']} -> {c['strategies_b']}",
                c["shift"],
                ", ".join(str(n) for n in c["new_suspicious"]) or None,
                "FLAGGED" if c["flagged"] else "",
                pairs(c) or None,
                ", ".join(str(n) for n in c["gone"]) or None,
                ", ".join(str(n) for n in c["new"]) or None,
            ]
            for c in classes[:TABLE_ROWS]
        ],
        "more": max(0, len(classes) - TABLE_ROWS),
    }


@SECTIONS.add("changed", "Most changed", "Most changed images (before | after)")
def changed_section(drift: dict) -> dict:
    runs = drift["summary"]["runs"]
    return {
        "examples": [
            {
                **e,
                "before": _overlay(runs["a"]["folder"], e["overlay_uri_a"], "A"),
                "after": _overlay(runs["b"]["folder"], e["overlay_uri_b"], "B"),
            }
            for e in drift["examples"]
        ]
    }


def render(summary: dict, classes: list[dict], examples: list[dict]) -> str:
    """The page from drift_summary.json's content, its per-class rows and the most changed
    images (``summary.most_changed``)."""
    return render_page(
        page="compare",
        title="Attribution drift",
        heading="Attribution drift: A → B",
        subject=summary["output_dir"],
        sections=SECTIONS,
        source={"summary": summary, "classes": classes, "examples": examples},
    )
