"""The model-randomization sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An explanation that shows what the model learned must change when the model's weights are
destroyed. Cascading randomization re-initialises the model from the top down, in stages:

- ``top_layer``: the variables of the last layer (the logits),
- ``top_25``, ``top_50``, ``top_100``: the last 25%, 50%, 100% of the variables in layer order
  (always including the top layer).

Layer order is the order the loaded model lists its variables (``LoadedModel.variables``): for
a ``.keras`` file ``model.weights`` (layers from input to output); for a SavedModel the
restored object's ``variables`` list (a Keras ``model.export()`` keeps the layer order; other
SavedModels list them as they were tracked when saved). "Layer" is a variable's name without
its last path component (``dense/kernel`` -> ``dense``). Each chosen floating-point variable is
re-drawn from a normal distribution with its own mean and standard deviation (seeded by the
stage's variable index, so every worker draws the same weights); variables with no negative
value (BatchNorm variances) keep their sign by taking the absolute value. Integer variables
(counters, seed states) are left alone.

Maps are compared by the Spearman rank correlation of their per-pixel |attribution| mass and the
SSIM of the masks (mass scaled to [0, 1] by its maximum). The check passes when, by the
``top_50`` stage, the median rank correlation has fallen below 0.5 (IG passes it in the paper),
passes late when it falls below 0.5 only with every variable random, and fails otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

STAGES = ("top_layer", "top_25", "top_50", "top_100")
_FRACTIONS = {"top_25": 0.25, "top_50": 0.5, "top_100": 1.0}
VERDICT_STAGE = "top_50"
PASS_CORRELATION = 0.5


def parse_stage(text: str) -> str:
    if text not in STAGES:
        raise ValueError(f"randomization stage must be one of {', '.join(STAGES)}; got {text!r}")
    return text


def _layer(variable) -> str:
    name = str(getattr(variable, "path", None) or variable.name).split(":")[0]
    return name.rsplit("/", 1)[0]


def _floating(variable) -> bool:
    return np.issubdtype(np.dtype(_numpy(variable).dtype), np.floating)


def _numpy(variable) -> np.ndarray:
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)


def stage_indices(variables: Sequence, stage: str) -> list[int]:
    """Indices of the variables a stage randomizes (from the top of the layer order)."""
    parse_stage(stage)
    n = len(variables)
    if n == 0:
        raise ValueError(
            "the model lists no variables to randomize (a SavedModel without a "
            "`variables` attribute): export it with Keras model.export() or save "
            "a .keras file"
        )
    top = _layer(variables[-1])
    count = 1
    while count < n and _layer(variables[n - 1 - count]) == top:
        count += 1
    if stage != "top_layer":
        count = max(count, math.ceil(_FRACTIONS[stage] * n))
    return list(range(n - count, n))


def randomize(variables: Sequence, stage: str, seed: int = 0) -> list[int]:
    """Re-initialise a stage's variables in place (deterministic); returns their indices."""
    chosen = [i for i in stage_indices(variables, stage) if _floating(variables[i])]
    for i in chosen:
        values = _numpy(variables[i]).astype(np.float64)
        rng = np.random.default_rng([int(seed), i])
        new = rng.normal(values.mean(), values.std(), size=values.shape)
        if values.size and values.min() >= 0:
            new = np.abs(new)
        variables[i].assign(new.astype(_numpy(variables[i]).dtype))
    return chosen


def cascade(variables: Sequence, explain: Callable[[], dict], seed: int = 0) -> dict[str, dict]:
    """{'original': explain(), stage: explain() after randomizing it, ...}; the variables are
    restored afterwards. ``explain`` returns {image id: attribution [H, W, C]}."""
    saved = [_numpy(v).copy() for v in variables]
    out = {"original": explain()}
    try:
        for stage in STAGES:
            randomize(variables, stage, seed)
            out[stage] = explain()
    finally:
        for v, value in zip(variables, saved):
            if _floating(v):
                v.assign(value)
    return out


def mass(attributions: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(attributions, np.float64)).sum(axis=-1)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' |attribution| mass (NaN when one is constant)."""
    from scipy import stats

    x, y = mass(a).ravel(), mass(b).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def mask_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of the two masks, each |attribution| mass scaled to [0, 1] by its maximum."""
    from skimage.metrics import structural_similarity

    x, y = mass(a), mass(b)
    x, y = (m / m.max() if m.max() > 0 else m for m in (x, y))
    window = min(7, *x.shape)
    window -= 1 - window % 2  # odd
    return float(structural_similarity(x, y, data_range=1.0, win_size=max(window, 3)))


def compare(maps: dict[str, dict]) -> list[dict]:
    """One row per (image, stage): rank correlation and SSIM against the original map."""
    original = maps["original"]
    rows = []
    for index, stage in enumerate(STAGES):
        for image, attributions in sorted(maps.get(stage, {}).items()):
            if image not in original:
                continue
            rows.append(
                {
                    "image": image,
                    "stage": stage,
                    "stage_index": index,
                    "rank_correlation": rank_correlation(original[image], attributions),
                    "ssim": mask_ssim(original[image], attributions),
                }
            )
    return rows


def medians(rows: Sequence[dict]) -> dict[str, dict]:
    """{stage: {'rank_correlation': median, 'ssim': median, 'images': n}} in stage order."""
    out = {}
    for stage in STAGES:
        mine = [r for r in rows if r["stage"] == stage]
        if mine:
            out[stage] = {
                key: float(np.nanmedian([r[key] for r in mine]))
                if any(np.isfinite(r[key]) for r in mine)
                else float("nan")
                for key in ("rank_correlation", "ssim")
            }
            out[stage]["images"] = len(mine)
    return out


def verdict(rows: Sequence[dict]) -> tuple[bool, str]:
    """(passed, the verdict in words).

    PASS: the median rank correlation is below 0.5 by the top_50 stage (as IG in the paper).
    LATE PASS (passed): it falls below 0.5 only once every variable is random: the maps do
    depend on the weights, but mostly on the lowest layers'. FAIL: it never falls below 0.5,
    not even for a fully random model: the maps barely change.
    """
    stats = medians(rows)
    finite = {s: m for s, m in stats.items() if np.isfinite(m["rank_correlation"])}
    if not finite:
        return False, (
            "FAIL: no comparable maps (every map was constant or missing), so the "
            "check could not show that the attributions depend on the weights."
        )
    trail = ", ".join(f"{s} {m['rank_correlation']:.2f}" for s, m in finite.items())
    n = max(m["images"] for m in finite.values())
    below = [s for s, m in finite.items() if m["rank_correlation"] < PASS_CORRELATION]
    if below and STAGES.index(below[0]) <= STAGES.index(VERDICT_STAGE):
        return True, (
            f"PASS: the median rank correlation of |attribution| with the trained "
            f"model's maps falls below {PASS_CORRELATION} by the {below[0]} stage "
            f"({trail}; {n} images): the maps depend on what the model learned."
        )
    if below:
        return True, (
            f"LATE PASS: the median rank correlation of |attribution| with the "
            f"trained model's maps falls below {PASS_CORRELATION} only at the "
            f"{below[0]} stage ({trail}; {n} images): the maps depend on the "
            f"weights, but keep their structure while the lowest layers are intact, "
            f"so they show what the first layers detect as much as the decision."
        )
    return False, (
        f"FAIL: the median rank correlation of |attribution| with the trained "
        f"model's maps stays at or above {PASS_CORRELATION} at every stage "
        f"({trail}; {n} images), even with every variable random: the maps barely "
        f"change when the model is randomized, so they show the input rather than "
        f"what the model learned. Do not read model behaviour from these maps."
    )
