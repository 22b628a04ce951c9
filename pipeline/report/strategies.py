"""The report's Strategies section: per class, the strategies the job found by clustering the
rows' attribution layouts (``DIR/strategies/*.parquet``, read by ``pipeline.strategies``),
ranked by how suspicious they are, and a finding per suspicious strategy.

Classes are ranked by their most suspicious strategy (``pipeline.strategies.suspicion``), so a
minority strategy ranks its class as high as a majority one would (its share enters only as a
square root). The per-class sections of the report show ``--report_classes`` classes in that
order (``ranked_classes``); the rest are listed in a compact table. A run without the folder
gets a sentence saying the stage did not run. Prototype overlays are read only as
``DIR/overlays/<image_id>.png`` for ids that are one plain file name, through
``pipeline.html.artifact``.
"""

from __future__ import annotations

import re

from pipeline.html import artifact, data_uri, picture
from pipeline.report.read import Run
from pipeline.strategies import (
    MIN_CONCENTRATION,
    MIN_EXCESS,
    MIN_RATIO,
    Strategies,
    Strategy,
    read_strategies,
    strategy_key,
)
from transforms.layout import OVERLAYS, artifact_uri

PROTOTYPES = 3  # prototype overlays shown per strategy
THUMBNAIL = 112  # largest side of a prototype overlay in the page, pixels
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")  # an image id is one plain file name


def of(run: Run) -> Strategies:
    """The run's strategies, read once and kept on the run."""
    if run.strategies is None:
        run.strategies = read_strategies(run.output_dir, run.manifest)
    return run.strategies


def class_key(run: Run, class_id: int) -> tuple:
    """Sort key: classes with a suspicious strategy first, then by their most suspicious
    strategy's ``suspicion``, then classes with more rows (ties: lower class id)."""
    worst = of(run).worst(class_id)
    value = worst.suspicion if worst is not None else None
    stats = run.classes.get(class_id)
    rows = stats.rows if stats is not None else sum(s.rows or 0 for s in of(run).classes[class_id])
    return (
        not (worst is not None and worst.suspicious),
        value is None,
        -(value or 0.0),
        -rows,
        class_id,
    )


def ranked_classes(run: Run) -> list[int]:
    """Every class of the run (with rows or with strategies), most suspicious first."""
    ids = set(run.classes) | set(of(run).classes)
    return sorted(ids, key=lambda c: class_key(run, c))


# ------------------------------------------------------------------------------ wording


def place(box: tuple[float, float, float, float]) -> str:
    """Where a box sits, in words: 'top left', 'centre', 'bottom centre', ..."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2

    def third(v):
        return 0 if v < 1 / 3 else (2 if v > 2 / 3 else 1)

    rows, columns = ("top", "centre", "bottom"), ("left", "centre", "right")
    row, column = third(cy), third(cx)
    if (row, column) == (1, 1):
        return "centre"
    return f"{rows[row]} {columns[column]}" if row != 1 else f"centre {columns[column]}"


def _share(value: float) -> str:
    return f"{value:.1%}" if value < 0.1 else f"{value:.0%}"


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def certainty(s: Strategy) -> str:
    rows = f"{s.rows} rows" if s.rows is not None else "rows unknown"
    ablated = (
        f"{s.ablation_n} ablated" if s.ablation_n is not None else "ablated count not recorded"
    )
    return f"{rows}, {ablated}"


def finding(s: Strategy, unit: str = "rows") -> str:
    """One suspicious strategy in words a reviewer can act on; `x` marks names."""
    share = f"{s.share:.0%}" if s.share is not None else "some"
    box = s.hotspot_box
    where = f" ({place(box)})" if box is not None else ""
    before = s.score_before
    text = (
        f"class `{s.label}`: {share} of its {unit} follow strategy {s.strategy}, which puts "
        f"{_share(s.mass)} of its attribution on {_share(s.area)} of the image{where}; "
        f"removing that box lowers `{s.label}` from {_score(before)} to "
        f"{_score(s.ablation_score)}, against {_score(before)} -> {_score(s.control_after)} "
        f"for a box of the same size elsewhere ({certainty(s)})"
    )
    shown = ", ".join(f"`{p}`" for p in s.prototypes[:PROTOTYPES])
    advice = f": look at its prototypes ({shown})" if shown else ""
    return (
        f"{text}{advice} and check whether what sits in that box is a shortcut the model uses "
        f"for `{s.label}`"
    )


def _unit(run: Run) -> str:
    return "predictions" if (run.config("target") or "predicted") == "predicted" else "rows"


def strategy_findings(run: Run) -> list[str]:
    """A finding per suspicious strategy, the most suspicious first."""
    found = [s for ss in of(run).classes.values() for s in ss if s.suspicious]
    found.sort(key=lambda s: (strategy_key(s), s.target_class))
    return [finding(s, _unit(run)) for s in found]


# -------------------------------------------------------------------------------- section


def _thumbnail(run: Run, image_id: str) -> tuple[bytes, str]:
    """The prototype's overlay, ``DIR/overlays/<image_id>.png``, at most THUMBNAIL px."""
    from pipeline.report import charts

    if not SAFE_ID.fullmatch(image_id):
        raise ValueError("the image id is not a plain file name; not read")
    data = artifact(run.output_dir, OVERLAYS, artifact_uri(run.output_dir, OVERLAYS, image_id))
    return charts.compact(data, "image/png", THUMBNAIL, budget=0)


def _numbers(s: Strategy) -> list[tuple[str, object]]:
    concentration = s.concentration
    return [
        ("rows", s.rows),
        ("share of the class", _share(s.share) if s.share is not None else None),
        (
            "hotspot",
            f"{_share(s.mass)} of the attribution on {_share(s.area)} of the image"
            + (f" ({place(s.hotspot_box)})" if s.hotspot_box else "")
            if s.mass is not None and s.area is not None
            else None,
        ),
        ("concentration", f"{concentration:.1f}x" if concentration is not None else None),
        (
            "hotspot removed",
            f"{_score(s.score_before)} -> {_score(s.ablation_score)}"
            if s.ablation_score is not None
            else None,
        ),
        (
            "control box removed",
            f"{_score(s.score_before)} -> {_score(s.control_after)}"
            if s.control_after is not None
            else None,
        ),
        ("members ablated", s.ablation_n),
        ("suspicion", f"{s.suspicion:.3f}" if s.suspicion is not None else None),
    ]


def _maps(strategies: list[Strategy]) -> dict[int, str | None]:
    """Each strategy's mean map with its hotspot box, on the class's shared scale."""
    grids = [s.mean_grid for s in strategies if s.mean_grid is not None]
    if not grids:
        return {}
    from pipeline.report import charts

    vmax = max(max(g) for g in grids)
    return {
        s.strategy: data_uri(charts.strategy_map_png(s.mean_grid, vmax, s.hotspot_box))
        for s in strategies
        if s.mean_grid is not None
    }


def _class_block(run: Run, class_id: int, found: Strategies) -> dict:
    strategies = found.classes[class_id]
    maps = _maps(strategies)
    stats = run.classes.get(class_id)
    return {
        "label": strategies[0].label,
        "rows": stats.rows if stats is not None else None,
        "eigengap": strategies[0].eigengap,
        "strategies": [
            {
                "number": s.strategy,
                "map": maps.get(s.strategy),
                "numbers": _numbers(s),
                "suspicious": s.suspicious,
                "prototypes": [
                    picture(lambda p=p: _thumbnail(run, p), p, THUMBNAIL)
                    for p in s.prototypes[:PROTOTYPES]
                ],
            }
            for s in sorted(strategies, key=strategy_key)
        ],
    }


def _evidence(s: Strategy | None) -> str | None:
    if s is None or s.ablation_drop is None or s.control_drop is None:
        return None
    concentration = s.concentration
    on = f", {concentration:.1f}x concentrated" if concentration is not None else ""
    return f"strategy {s.strategy}: drop {s.ablation_drop:.2f} vs control {s.control_drop:.2f}{on}"


def strategies_section(run: Run) -> dict:
    found = of(run)
    if not found.ran:
        off = run.config("strategies") == "none"
        return {"ran": False, "off": off}
    if not found.classes:
        return {"ran": True, "classes": [], "min_rows": run.config("strategy_min_rows")}
    ranked = [c for c in ranked_classes(run) if c in found.classes]
    shown, rest = ranked[: run.report_classes], ranked[run.report_classes :]
    table = []
    for c in rest:
        worst = found.worst(c)
        table.append(
            [
                c,
                worst.label,
                run.classes[c].rows if c in run.classes else None,
                len(found.classes[c]),
                "yes" if worst.suspicious else "",
                f"{worst.suspicion:.3f}" if worst.suspicion is not None else None,
                _evidence(worst),
            ]
        )
    return {
        "ran": True,
        "classes": [_class_block(run, c, found) for c in shown],
        "flagged": sum(1 for ss in found.classes.values() for s in ss if s.suspicious),
        "clustered": len(found.classes),
        "rest": table,
        "rules": {
            "excess": MIN_EXCESS,
            "ratio": f"{MIN_RATIO:g}",
            "concentration": f"{MIN_CONCENTRATION:g}",
        },
        "shown": run.report_classes,
    }
