"""A run's ``DIR/strategies`` folder read back, and the rule that flags a strategy.

The job's strategy stage (transforms/strategies.py, ``STRATEGY_SCHEMA``) writes one row per
(class, strategy); the report's Strategies section (pipeline/report/strategies.py) and the
comparison's strategy drift (pipeline/compare/strategies.py) both read it through
``read_strategies`` and judge it by ``is_suspicious``, so a strategy the report flags is the
one the comparison counts as new and suspicious. No TensorFlow is imported here.

A strategy is suspicious when its attribution sits on a small box (``hotspot_mass_fraction``
far above ``hotspot_area_fraction``) and removing that box lowers the target score far more
than removing a box of the same size where the strategy looks least (``control_drop``).
``suspicion`` puts that in one number. The folder is read defensively: optional columns a run
lacks, and values of the wrong type, are read as missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from attribution.config import MAX_GRID_CELLS
from transforms.files import parquet_batches, parquet_parts, parquet_schema
from transforms.layout import STRATEGIES

COLUMNS = (  # STRATEGY_SCHEMA's columns read here; any may be missing in a damaged run
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
        return min(found, key=strategy_key) if found else None


def strategy_key(s: Strategy) -> tuple:
    """Sort key, most suspicious first: flagged strategies, then by suspicion, then share."""
    value = s.suspicion
    return (not s.suspicious, value is None, -(value or 0.0), -(s.share or 0.0), s.strategy)


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
    if grid is not None and (
        math.isqrt(len(grid)) ** 2 != len(grid) or len(grid) > MAX_GRID_CELLS**2
    ):  # not a square, or larger than any run writes: not drawn
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
        for batch in parquet_batches(path, columns):
            for row in batch.to_pylist():
                s = _strategy(row)
                if s is None or (s.target_class, s.strategy) in seen:
                    continue
                seen.add((s.target_class, s.strategy))
                found.classes.setdefault(s.target_class, []).append(s)
    for strategies in found.classes.values():
        strategies.sort(key=lambda s: s.strategy)
    return found
