"""The report's Strategies section: per class, the strategies the job found by clustering the
rows' attribution layouts (``DIR/strategies/*.parquet``, one row per (class, strategy)), ranked
by how suspicious they are, and a finding per suspicious strategy.

A strategy is suspicious when its attribution sits on a small box (``hotspot_mass_fraction``
far above ``hotspot_area_fraction``) and removing that box lowers the target score far more
than removing a box of the same size where the strategy looks least (``control_drop``).
``suspicion`` puts that in one number; classes are ranked by their most suspicious strategy,
so a minority strategy ranks its class as high as a majority one would (its share enters
only as a square root). The per-class sections of the report show ``--report_classes``
classes in that order (``ranked_classes``); the rest are listed in a compact table.

The folder is read defensively: optional columns a run lacks are shown as missing, values of
the wrong type as missing, and a run without the folder gets a sentence saying the stage did
not run. Prototype overlays are read only as ``DIR/overlays/<image_id>.png`` for ids that are
one plain file name, through ``pipeline.html.artifact``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pipeline.html import artifact, data_uri, picture
from pipeline.report.read import BATCH_ROWS, Run
from transforms.files import parquet_batches, parquet_parts, parquet_schema
from transforms.layout import OVERLAYS, STRATEGIES, join

COLUMNS = (  # the contract's columns (DESIGN.md); any of them may be missing in a damaged run
    "target_class",
    "target_label",
    "strategy",
    "rows",
    "share",
    "eigengap",
    "mean_grid",
    "hotspot_box",
    "hotspot_area_fraction",
    "hotspot_mass_fraction",
    "ablation_score",
    "ablation_drop",
    "control_drop",
    "prototypes",
)
OPTIONAL = ("control_box", "ablation_n", "target_mean_score", "control_score")
# A strategy is flagged (a finding) when all three hold: removing its hotspot box lowers the
# target score by MIN_EXCESS more than the control box does (in --score units: probability by
# default), by at least MIN_RATIO times the control's drop, and the box holds MIN_CONCENTRATION
# times the attribution its area would hold if the mass were spread evenly.
MIN_EXCESS = 0.1
MIN_RATIO = 2.0
MIN_CONCENTRATION = 3.0
PROTOTYPES = 3  # prototype overlays shown per strategy
THUMBNAIL = 112  # largest side of a prototype overlay in the page, pixels
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")  # an image id is one plain file name


@dataclass(frozen=True)
class Strategy:
    """One row of ``DIR/strategies``; None where the run has no (usable) value."""

    target_class: int
    label: str
    strategy: int
    rows: int | None = None
    share: float | None = None
    eigengap: float | None = None
    mean_grid: tuple[float, ...] | None = None
    hotspot_box: tuple[float, float, float, float] | None = None
    area: float | None = None  # hotspot_area_fraction
    mass: float | None = None  # hotspot_mass_fraction
    ablation_score: float | None = None
    ablation_drop: float | None = None
    control_drop: float | None = None
    prototypes: tuple[str, ...] = ()
    control_box: tuple[float, float, float, float] | None = None
    ablation_n: int | None = None
    target_mean_score: float | None = None
    control_score: float | None = None  # mean target score with the control box removed

    @property
    def concentration(self) -> float | None:
        """How many times more attribution the hotspot holds than its area would evenly."""
        if self.mass is None or not self.area or self.area <= 0:
            return None
        return self.mass / self.area

    @property
    def score_before(self) -> float | None:
        """Mean target score of the ablated members before any box is removed."""
        if self.target_mean_score is not None:
            return self.target_mean_score
        if self.ablation_score is None or self.ablation_drop is None:
            return None
        return self.ablation_score + self.ablation_drop

    @property
    def control_after(self) -> float | None:
        """Mean target score of the ablated members with the control box removed."""
        if self.control_score is not None:
            return self.control_score
        before = self.score_before
        return None if before is None or self.control_drop is None else before - self.control_drop

    @property
    def suspicion(self) -> float | None:
        return suspicion(self)

    @property
    def suspicious(self) -> bool:
        return is_suspicious(self)


def suspicion(s: Strategy) -> float | None:
    """sqrt(share) x max(0, ablation_drop - control_drop) x log2(max(1, mass / area)).

    The excess drop (score units) says the model needs what is in the box more than what is
    anywhere else of that size; log2 of the concentration (0 for attribution spread evenly, 1
    for twice the even share, 6 for a box holding 64 times its area's share) says the box is
    small for the attribution it holds; sqrt(share) keeps a strategy of a fifth of the class
    at 45% of the weight of the whole class, so a minority strategy is not hidden. None when
    the run has no ablation or hotspot numbers for it."""
    concentration = s.concentration
    if s.ablation_drop is None or s.control_drop is None or concentration is None:
        return None
    share = 1.0 if s.share is None else min(max(s.share, 0.0), 1.0)
    excess = max(0.0, s.ablation_drop - s.control_drop)
    return math.sqrt(share) * excess * math.log2(max(1.0, concentration))


def is_suspicious(s: Strategy) -> bool:
    """The finding rule: MIN_EXCESS, MIN_RATIO and MIN_CONCENTRATION all hold."""
    concentration = s.concentration
    if s.ablation_drop is None or s.control_drop is None or concentration is None:
        return False
    return (
        s.ablation_drop - s.control_drop >= MIN_EXCESS
        and s.ablation_drop >= MIN_RATIO * max(s.control_drop, 0.0)
        and concentration >= MIN_CONCENTRATION
    )


@dataclass
class Strategies:
    """What ``DIR/strategies`` holds: per class, its strategies (by strategy number)."""

    ran: bool  # the folder has parts, or the manifest lists it (the stage ran)
    classes: dict[int, list[Strategy]] = field(default_factory=dict)

    def worst(self, class_id: int) -> Strategy | None:
        """The class's most suspicious strategy: flagged ones first, then by suspicion."""
        found = self.classes.get(class_id) or []
        return min(found, key=_strategy_key) if found else None


def _strategy_key(s: Strategy) -> tuple:
    value = s.suspicion
    return (not s.suspicious, value is None, -(value or 0.0), -(s.share or 0.0), s.strategy)


# ------------------------------------------------------------------------------- reading


def _float(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None


def _floats(value, size: int | None = None) -> tuple[float, ...] | None:
    if not isinstance(value, (list, tuple)) or (size is not None and len(value) != size):
        return None
    out = tuple(_float(v) for v in value)
    return None if not out or any(v is None for v in out) else out


def _box(value) -> tuple[float, float, float, float] | None:
    box = _floats(value, 4)
    if box is None or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        return None
    return box


def _strategy(row: dict) -> Strategy | None:
    class_id, number = _int(row.get("target_class")), _int(row.get("strategy"))
    if class_id is None or number is None:
        return None
    label = row.get("target_label")
    grid = _floats(row.get("mean_grid"))
    if grid is not None and math.isqrt(len(grid)) ** 2 != len(grid):
        grid = None
    prototypes = row.get("prototypes")
    return Strategy(
        target_class=class_id,
        label=label if isinstance(label, str) else str(class_id),
        strategy=number,
        rows=_int(row.get("rows")),
        share=_float(row.get("share")),
        eigengap=_float(row.get("eigengap")),
        mean_grid=grid,
        hotspot_box=_box(row.get("hotspot_box")),
        area=_float(row.get("hotspot_area_fraction")),
        mass=_float(row.get("hotspot_mass_fraction")),
        ablation_score=_float(row.get("ablation_score")),
        ablation_drop=_float(row.get("ablation_drop")),
        control_drop=_float(row.get("control_drop")),
        prototypes=tuple(p for p in prototypes if isinstance(p, str))
        if isinstance(prototypes, list)
        else (),
        control_box=_box(row.get("control_box")),
        ablation_n=_int(row.get("ablation_n")),
        target_mean_score=_float(row.get("target_mean_score")),
        control_score=_float(row.get("control_score")),
    )


def read_strategies(output_dir: str, manifest: dict | None = None) -> Strategies:
    """``DIR/strategies/*.parquet`` per class; ``ran`` is False without parts unless the
    manifest lists the folder (the stage ran and clustered no class). Rows without a class or
    strategy number are skipped; a repeated (class, strategy) keeps its first row."""
    parts = parquet_parts(output_dir, STRATEGIES)
    listed = STRATEGIES in ((manifest or {}).get("files") or {})
    found = Strategies(ran=bool(parts) or listed)
    seen = set()
    for path in parts:
        present = set(parquet_schema(path).names)
        columns = [c for c in (*COLUMNS, *OPTIONAL) if c in present]
        if "target_class" not in present or "strategy" not in present:
            continue
        for batch in parquet_batches(path, columns, BATCH_ROWS):
            for row in batch.to_pylist():
                s = _strategy(row)
                if s is None or (s.target_class, s.strategy) in seen:
                    continue
                seen.add((s.target_class, s.strategy))
                found.classes.setdefault(s.target_class, []).append(s)
    for strategies in found.classes.values():
        strategies.sort(key=lambda s: s.strategy)
    return found


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
    found.sort(key=lambda s: (_strategy_key(s), s.target_class))
    return [finding(s, _unit(run)) for s in found]


# -------------------------------------------------------------------------------- section


def _thumbnail(run: Run, image_id: str) -> tuple[bytes, str]:
    """The prototype's overlay, ``DIR/overlays/<image_id>.png``, at most THUMBNAIL px."""
    from pipeline.report import charts

    if not SAFE_ID.fullmatch(image_id):
        raise ValueError("the image id is not a plain file name; not read")
    data = artifact(run.output_dir, OVERLAYS, join(run.output_dir, OVERLAYS, f"{image_id}.png"))
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
            for s in sorted(strategies, key=_strategy_key)
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
