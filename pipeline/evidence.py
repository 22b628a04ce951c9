"""What a run's faithfulness columns say, in numbers and in words (no TensorFlow here).

- ``deletion`` / ``insertion``: per class, the share of rows whose attribution order beats
  the seeded random order (deletion: a smaller normalised AUC; insertion: a larger one);
- ``mufidelity``: per class, the mean and median MuFidelity (Bhatt et al. 2020: the
  correlation over random subsets between the attribution in the subset and the score drop
  when it is removed);
- ``ablations``: per (target class, region), the mean target score with and without the
  region, and the region's mean share of the positive attribution;
- ``findings``: sentences, failures first (a class whose attribution order does no better
  than random deletion is named before anything else).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from transforms.files import parquet_parts, parquet_schema, read_parquet
from transforms.layout import SUMMARIES

COLUMNS = (  # what the findings read
    "target_label",
    "target_score",
    "deletion_auc",
    "deletion_auc_random",
    "insertion_auc",
    "insertion_auc_random",
    "regions",
    "mufidelity",
)
BEATS_RANDOM = 0.5  # a class whose share of rows beating random is at most this fails
NO_EFFECT_DROP = 0.05  # an ablation lowering the score by less than this (share of F(x))...
LARGE_MASS = 0.10  # ...on a region holding at least this mass share: they disagree


def read_summaries(output_dir: str, columns=None) -> pa.Table:
    """The run's summaries (local or gs://): ``columns`` that every part has (all without)."""
    if columns is not None:
        parts = parquet_parts(output_dir, SUMMARIES)
        names = set.intersection(*(set(parquet_schema(p).names) for p in parts)) if parts else set()
        columns = [c for c in columns if c in names]
    return read_parquet(output_dir, SUMMARIES, columns)


@dataclass
class Share:
    label: str
    rows: int  # rows with both AUCs
    beating: int  # rows where attribution order beats random

    @property
    def share(self) -> float:
        return self.beating / self.rows if self.rows else float("nan")


@dataclass
class Ablation:
    label: str
    region: str
    rows: int
    score: float  # mean F(x)
    ablated: float  # mean score with the region replaced by the baseline
    mass_fraction: float  # mean share of the positive attribution in the region

    @property
    def drop(self) -> float:
        return self.score - self.ablated


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * len(table)


def shares(table: pa.Table, kind: str = "deletion") -> list[Share]:
    """Per class, then '(all)' last: rows where attribution order beats random order."""
    labels = _column(table, "target_label")
    ours, random = _column(table, f"{kind}_auc"), _column(table, f"{kind}_auc_random")
    per: dict[str, list[int]] = {}
    for label, a, r in zip(labels, ours, random):
        if a is None or r is None or not (np.isfinite(a) and np.isfinite(r)):
            continue
        beat = a < r if kind == "deletion" else a > r
        for key in (str(label), "(all)"):
            per.setdefault(key, [0, 0])
            per[key][0] += 1
            per[key][1] += int(beat)
    keys = sorted(k for k in per if k != "(all)") + (["(all)"] if "(all)" in per else [])
    return [Share(k, *per[k]) for k in keys]


@dataclass
class Fidelity:
    label: str
    rows: int  # rows with a MuFidelity
    mean: float
    median: float


def mufidelity(table: pa.Table) -> list[Fidelity]:
    """Per class, then '(all)' last: mean and median MuFidelity over the rows that have it."""
    per: dict[str, list[float]] = {}
    for label, value in zip(_column(table, "target_label"), _column(table, "mufidelity")):
        if value is None or not np.isfinite(value):
            continue
        for key in (str(label), "(all)"):
            per.setdefault(key, []).append(float(value))
    keys = sorted(k for k in per if k != "(all)") + (["(all)"] if "(all)" in per else [])
    return [
        Fidelity(k, len(per[k]), float(np.mean(per[k])), float(np.median(per[k]))) for k in keys
    ]


def ablations(table: pa.Table) -> list[Ablation]:
    """Per (target class, region) with an ablation score: means over the rows that have it."""
    groups: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for label, fx, regions in zip(
        _column(table, "target_label"), _column(table, "target_score"), _column(table, "regions")
    ):
        for region in regions or []:
            if region.get("ablation_score") is None or fx is None:
                continue
            groups.setdefault((str(label), region["name"]), []).append(
                (fx, region["ablation_score"], region["mass_fraction"])
            )
    return [
        Ablation(label, region, len(v), *np.mean(np.array(v), axis=0).tolist())
        for (label, region), v in sorted(groups.items())
    ]


def findings(table: pa.Table) -> list[str]:
    """Sentences about the run's faithfulness, what failed first."""
    failed, passed = split_findings(table)
    return failed + passed


def split_findings(table: pa.Table) -> tuple[list[str], list[str]]:
    """(what failed, what held): classes no better than random deletion and regions whose
    attribution and ablation disagree; then the share of rows beating random."""
    failed, passed = [], []
    for s in shares(table, "deletion"):
        if s.label == "(all)" or not s.rows:
            continue
        if s.share <= BEATS_RANDOM:
            failed.append(
                f"class `{s.label}`: its attribution order does no better than random "
                f"deletion ({s.beating} of {s.rows} rows beat random): do not read "
                f"its maps as what the model uses"
            )
    overall = [s for s in shares(table, "deletion") if s.label == "(all)"]
    if overall and overall[0].rows:
        s = overall[0]
        passed.append(
            f"deleting pixels in attribution order lowers the score faster than a "
            f"random order in {s.share:.0%} of rows ({s.beating} of {s.rows})"
        )
    for f in mufidelity(table):
        if f.label == "(all)":
            passed.append(
                f"MuFidelity (attribution in random subsets against the score drop when they "
                f"are removed) averages {f.mean:.2f} over {f.rows} rows"
            )
        elif f.mean <= 0:
            failed.append(
                f"class `{f.label}`: the attribution in random subsets does not predict the "
                f"score drop when they are removed (mean MuFidelity {f.mean:.2f}, n={f.rows})"
            )
    for a in ablations(table):
        if a.mass_fraction >= LARGE_MASS and a.drop < NO_EFFECT_DROP * abs(a.score):
            failed.append(
                f"region `{a.region}` holds {a.mass_fraction:.0%} of `{a.label}`'s "
                f"positive attribution but masking it barely changes the score "
                f"({a.score:.2f} -> {a.ablated:.2f}, n={a.rows}): attribution and "
                f"behaviour disagree"
            )
    return failed, passed


def ablation_sentence(table: pa.Table, label: str, region: str) -> str | None:
    """'masking `cue` lowers `cross` from 0.97 to 0.20 on average (n=118)', or None."""
    for a in ablations(table):
        if a.label == label and a.region == region:
            verb = "lowers" if a.drop >= 0 else "raises"
            return (
                f"masking `{region}` {verb} `{label}` from {a.score:.2f} to {a.ablated:.2f} "
                f"on average (n={a.rows})"
            )
    return None


# What the report's Faithfulness section reads: the findings' columns, the curves it averages
# per class, and what names a row it lists.
CURVES = ("deletion_curve", "insertion_curve", "deletion_curve_random", "insertion_curve_random")
SECTION_COLUMNS = ("image_uri", "image_id", "overlay_uri", *COLUMNS, *CURVES)


def _mean_curve(curves: list) -> list[float] | None:
    curves = [c for c in curves if c is not None]
    if not curves or len({len(c) for c in curves}) != 1:
        return None
    return np.mean(np.array(curves, np.float64), axis=0).tolist()


def section(table: pa.Table, worst: int = 8) -> dict:
    """What the report's Faithfulness section draws, as plain data:

    ``classes``: per target class, the mean deletion / insertion curves in attribution and
    random order (over the class's rows, fraction from 0 to 1) and the share of rows beating
    random; ``gaps``: per row, ``deletion_auc_random - deletion_auc`` (> 0: attribution order
    beats random); ``not_beating``: up to ``worst`` rows that do not beat random deletion,
    worst first (image uri, overlay uri, label, gap); ``mufidelity``: as ``mufidelity``;
    ``findings``: as ``findings``.
    """
    rows = table.to_pylist() if table.num_rows else []
    rows = [r for r in rows if r.get("deletion_auc") is not None]
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(str(r.get("target_label")), []).append(r)
    deletion = {s.label: s for s in shares(table, "deletion")}
    insertion = {s.label: s for s in shares(table, "insertion")}
    classes = []
    for label, mine in sorted(by_label.items()):
        classes.append(
            {
                "label": label,
                "rows": len(mine),
                "deletion": _mean_curve([r.get("deletion_curve") for r in mine]),
                "deletion_random": _mean_curve([r.get("deletion_curve_random") for r in mine]),
                "insertion": _mean_curve([r.get("insertion_curve") for r in mine]),
                "insertion_random": _mean_curve([r.get("insertion_curve_random") for r in mine]),
                "deletion_share": deletion[label].share if label in deletion else None,
                "insertion_share": insertion[label].share if label in insertion else None,
            }
        )
    gaps = [
        (r["deletion_auc_random"] - r["deletion_auc"], r)
        for r in rows
        if r.get("deletion_auc_random") is not None
        and np.isfinite(r["deletion_auc_random"] - r["deletion_auc"])
    ]
    failing = sorted(((g, r) for g, r in gaps if g <= 0), key=lambda pair: pair[0])[:worst]
    return {
        "classes": classes,
        "gaps": [g for g, _ in gaps],
        "not_beating": [
            {
                "image_uri": r.get("image_uri"),
                "overlay_uri": r.get("overlay_uri"),
                "label": r.get("target_label"),
                "gap": g,
            }
            for g, r in failing
        ],
        "mufidelity": mufidelity(table),
        "findings": findings(table),
    }
