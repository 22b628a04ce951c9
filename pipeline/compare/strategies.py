"""Strategy drift: did a class change how it decides between two runs?

Per class clustered in both runs, the strategies of run A and run B are matched by layout
(cosine similarity of their ``mean_grid``, the assignment maximising the total similarity,
scipy's Hungarian solver); pairs less similar than ``MIN_MATCH`` count as unmatched (a strategy
that went away, or a new one). The class's **shift** is the share of its rows that changed
strategy: half the sum, over matched pairs and unmatched strategies, of |share in B - share in
A| (0: the same strategies in the same proportions; 1: none in common). A class is flagged
when its shift exceeds ``--max_strategy_shift`` or when it gained a suspicious strategy (one
that ``pipeline.strategies.is_suspicious`` flags in B whose match in A was not flagged,
or that has no match).

The metrics (``max_strategy_shift``, ``new_suspicious_strategies``, ...) join
drift_summary.json's and may be named by ``--fail_on``; ``--max_strategy_shift F`` gates on
both: ``max_strategy_shift>F`` and ``new_suspicious_strategies>0``.
"""

from __future__ import annotations

import numpy as np

from pipeline.strategies import Strategy, read_strategies

MIN_MATCH = 0.5  # cosine similarity below which two strategies' layouts are not the same
TABLE_ROWS = 200  # classes listed on the page


def cosine(a, b) -> float | None:
    """Cosine similarity of two layouts; None when their sizes differ or one is all zero."""
    if a is None or b is None or len(a) != len(b):
        return None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else None


def match(a: list[Strategy], b: list[Strategy]) -> list[tuple[int, int, float]]:
    """(index in a, index in b, cosine) of the matched pairs: the assignment maximising the
    summed similarity, keeping pairs at least MIN_MATCH similar."""
    from scipy.optimize import linear_sum_assignment

    if not a or not b:
        return []
    similarity = np.full((len(a), len(b)), -1.0)
    for i, s in enumerate(a):
        for j, t in enumerate(b):
            value = cosine(s.mean_grid, t.mean_grid)
            if value is not None:
                similarity[i, j] = value
    rows, columns = linear_sum_assignment(similarity, maximize=True)
    return [
        (int(i), int(j), float(similarity[i, j]))
        for i, j in zip(rows, columns)
        if similarity[i, j] >= MIN_MATCH
    ]


def _share(s: Strategy) -> float:
    return s.share or 0.0


def class_drift(a: list[Strategy], b: list[Strategy]) -> dict:
    """Shift, matched pairs and new suspicious strategies of one class (a or b may be empty:
    the class was clustered in one run only)."""
    pairs = match(a, b)
    matched_a, matched_b = {i for i, _, _ in pairs}, {j for _, j, _ in pairs}
    moved = sum(abs(_share(b[j]) - _share(a[i])) for i, j, _ in pairs)
    moved += sum(_share(s) for i, s in enumerate(a) if i not in matched_a)
    moved += sum(_share(t) for j, t in enumerate(b) if j not in matched_b)
    partner = {j: i for i, j, _ in pairs}
    new = [
        t.strategy
        for j, t in enumerate(b)
        if t.suspicious and (j not in partner or not a[partner[j]].suspicious)
    ]
    return {
        "shift": moved / 2 if a and b else None,
        "pairs": [
            {
                "a": a[i].strategy,
                "b": b[j].strategy,
                "cosine": round(value, 4),
                "share_a": a[i].share,
                "share_b": b[j].share,
            }
            for i, j, value in pairs
        ],
        "gone": [s.strategy for i, s in enumerate(a) if i not in matched_a],
        "new": [t.strategy for j, t in enumerate(b) if j not in matched_b],
        "new_suspicious": new,
    }


def drift(run_a: str, run_b: str, manifests: dict, max_shift: float | None) -> dict:
    """{"metrics": ..., "classes": [...]} for two run folders; classes flagged first, then by
    shift. Runs without strategies give metrics of None (nothing compared)."""
    found = {
        "a": read_strategies(run_a, manifests.get("a")),
        "b": read_strategies(run_b, manifests.get("b")),
    }
    classes = []
    for class_id in sorted(set(found["a"].classes) | set(found["b"].classes)):
        a, b = found["a"].classes.get(class_id, []), found["b"].classes.get(class_id, [])
        row = class_drift(a, b)
        shifted = row["shift"] is not None and max_shift is not None and row["shift"] > max_shift
        row.update(
            {
                "class": class_id,
                "label": (b or a)[0].label,
                "strategies_a": len(a),
                "strategies_b": len(b),
                "flagged": bool(shifted or row["new_suspicious"]),
            }
        )
        classes.append(row)
    compared = [c for c in classes if c["shift"] is not None]
    ran = found["a"].ran and found["b"].ran
    metrics = {
        "strategy_classes_compared": len(compared) if ran else None,
        "strategy_classes_flagged": sum(c["flagged"] for c in classes) if ran else None,
        "max_strategy_shift": max((c["shift"] for c in compared), default=None),
        "new_suspicious_strategies": sum(len(c["new_suspicious"]) for c in classes)
        if ran
        else None,
    }
    classes.sort(key=lambda c: (not c["flagged"], -(c["shift"] or 0.0), c["class"]))
    return {
        "ran": {"a": found["a"].ran, "b": found["b"].ran},
        "metrics": metrics,
        "classes": classes,
    }


def gate(max_shift: float | None) -> list[str]:
    """The --fail_on thresholds ``--max_strategy_shift`` stands for."""
    if max_shift is None:
        return []
    return [f"max_strategy_shift>{max_shift!r}", "new_suspicious_strategies>0"]
