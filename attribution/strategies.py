"""Strategies per class: spectral clustering of attribution layouts (SpRAy, Lapuschkin et al.
2019, "Unmasking Clever Hans predictors"), where each strategy looks, and the boxes its
evidence is read with. NumPy and SciPy only (no Beam, no TensorFlow): the Beam stage is
``transforms/strategies.py``.

A row's **layout** is its ``grid`` (share of |attribution| per cell of a G x G grid) scaled to
unit mass (an all-zero grid counts as an even spread). Per class, on at most
``--strategy_sample`` layouts:

1. **affinity**: the symmetric k-nearest-neighbour graph of the layouts (Euclidean; an edge
   when either row is among the other's k nearest), k = round(sqrt(n)) clipped to [5, 30];
2. **spectrum**: the smallest eigenvalues 0 = l1 <= l2 <= ... of the normalised Laplacian
   I - D^-1/2 W D^-1/2;
3. **count**: the number of strategies is the k in 1..max_strategies with the largest
   eigengap l(k+1) - l(k). The gap at k = 1 is l2 itself, the graph's algebraic connectivity:
   one coherent class (a single blob of layouts) has l2 above the gaps between its next
   eigenvalues, so it gets one strategy; k well separated groups have l1..lk near 0 and a
   jump at l(k+1). The chosen gap is reported (``eigengap``): the bigger, the clearer;
4. **labels**: k-means (k-means++ seeding from a fixed seed, 10 restarts, the lowest inertia
   kept) on the rows of the first k eigenvectors scaled to unit length (Ng, Jordan and Weiss
   2001); strategies are numbered by size, largest first (0, 1, ...);
5. **model**: each strategy's centroid, the mean of its members' layouts. Every row of the
   class, sampled or not, is assigned to the nearest centroid (Euclidean), one rule for all.

The sample is sorted by its seeded hash before clustering, so the result does not depend on
the order the rows arrive in.

**Hotspot box**: the rectangle of grid cells maximising mass_fraction - 2 x area_fraction
over the strategy's mean layout: where its attribution most exceeds twice an even spread (a
cell pays its way into the box when it holds more than twice its even share, 2 / G^2; with
1x, cells at the background's level, a shade above even once the border cells' low share is
averaged out, were free to join and the box grew over the whole image). **Control box**: a rectangle of the same cell size
whose mean-layout mass is the lowest, not overlapping the hotspot when the grid leaves room.
Boxes are (x0, y0, x1, y1) fractions of the model input (cell edges over G).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

STRATEGY_MODES = ("auto", "none")
KMEANS_RESTARTS = 10
KMEANS_ITERATIONS = 100
PROTOTYPES = 6  # image ids per strategy, most typical first
MAX_STRATEGIES = 50  # --max_strategies 100000 chose k = 1,999 of 2,000 rows and never ended
MAX_SAMPLE = 20000  # --strategy_sample, --strategy_ablation_samples: rows per class
HOTSPOT_LIFT = 2.0  # a cell joins the hotspot when it holds more than this x its even share


def _option(default, help: str, choices: tuple | None = None):
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class StrategyConfig:
    """The strategy stage's options (``--<field name>``), validated once."""

    strategies: str = _option(
        "auto",
        "Find each class's strategies (spectral clustering of the attribution grids, as "
        "SpRAy) and test each hotspot by ablation; 'none' skips the stage.",
        STRATEGY_MODES,
    )
    max_strategies: int = _option(6, "Most strategies per class (1 allowed).")
    strategy_sample: int = _option(
        2000, "Most rows per class clustered (a seeded hash sample); the rest are assigned."
    )
    strategy_min_rows: int = _option(20, "Classes with fewer rows are not clustered.")
    strategy_ablation_samples: int = _option(
        32, "Members per strategy whose hotspot and control boxes are ablated (seeded)."
    )

    @property
    def enabled(self) -> bool:
        return self.strategies == "auto"

    def validate(self) -> None:
        """ValueError saying what to pass instead (a usage error, exit 2)."""
        if self.strategies not in STRATEGY_MODES:
            raise ValueError(f"--strategies must be auto or none, got {self.strategies!r}")
        for name, low in (
            ("max_strategies", 1),
            ("strategy_sample", 2),
            ("strategy_min_rows", 2),
            ("strategy_ablation_samples", 0),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"--{name} must be >= {low}, got {getattr(self, name)}")
        if self.max_strategies > MAX_STRATEGIES:
            raise ValueError(
                f"--max_strategies must be <= {MAX_STRATEGIES} (past it the eigengap's largest "
                f"jumps sit at the top of the spectrum: k-means then runs with nearly one "
                f"strategy per row), got {self.max_strategies}"
            )
        if self.strategy_sample > MAX_SAMPLE:
            raise ValueError(
                f"--strategy_sample must be <= {MAX_SAMPLE} (the clustering holds an n x n "
                f"affinity), got {self.strategy_sample}"
            )
        if self.strategy_ablation_samples > MAX_SAMPLE:  # 2^63 failed the job in Beam
            raise ValueError(
                f"--strategy_ablation_samples must be <= {MAX_SAMPLE} (each member is re-read "
                f"and ablated twice), got {self.strategy_ablation_samples}"
            )
        if self.strategy_min_rows > self.strategy_sample:
            raise ValueError(
                f"--strategy_min_rows ({self.strategy_min_rows}) must be <= --strategy_sample "
                f"({self.strategy_sample})"
            )


DEFAULTS = StrategyConfig()


def layouts(grids) -> np.ndarray:
    """[n, G*G] float64 grids -> unit-mass layouts (an all-zero grid, or one with a NaN or
    infinite cell, which has no layout to read: an even spread; an infinite cell made the
    row, then its strategy's centroid, NaN, and argmin sends rows to a NaN centroid)."""
    x = np.abs(np.asarray(grids, np.float64))
    x = x.reshape(len(x), -1)
    total = x.sum(axis=1, keepdims=True)
    usable = np.isfinite(total) & (total > 0)
    even = np.full_like(x, 1.0 / max(1, x.shape[1]))
    return np.where(usable, x / np.where(usable, total, 1.0), even)


def neighbours(n: int) -> int:
    """k of the kNN graph for n rows."""
    return int(min(max(5, round(np.sqrt(n))), 30, n - 1))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_affinity(x: np.ndarray, k: int) -> np.ndarray:
    """[n, n] symmetric 0/1 affinity: i ~ j when either is among the other's k nearest."""
    n = len(x)
    d = _squared_distances(x, x)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
    w = np.zeros((n, n))
    w[np.repeat(np.arange(n), k), nearest.ravel()] = 1.0
    return np.maximum(w, w.T)


DENSE_LIMIT = 400  # up to this many rows a dense eigensolver; above, ARPACK on the sparse graph


def spectrum(w: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` smallest eigenvalues (ascending) and eigenvectors of the normalised
    Laplacian I - D^-1/2 W D^-1/2 of affinity ``w``. Above DENSE_LIMIT rows: the largest
    eigenvalues 1 - l of the normalised affinity, by ARPACK (sparse, a fixed start vector:
    the same input gives the same output; 2,000 rows took 5 s dense, under 1 s this way)."""
    from scipy.linalg import eigh

    degree = w.sum(1)
    scale = 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0))
    affinity = scale[:, None] * w * scale[None, :]
    n = len(w)
    top = min(count, n) - 1
    if n <= DENSE_LIMIT or top + 2 >= n:
        values, vectors = eigh(np.eye(n) - affinity, subset_by_index=[0, top])
        return np.clip(values, 0.0, None), vectors
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import eigsh

    values, vectors = eigsh(csr_matrix(affinity), k=top + 1, which="LA", v0=np.ones(n), tol=1e-10)
    order = np.argsort(-values, kind="stable")
    return np.clip(1.0 - values[order], 0.0, None), vectors[:, order]


def choose_count(values: np.ndarray, max_strategies: int) -> tuple[int, float]:
    """(k, its eigengap): the k in 1..max_strategies with the largest l(k+1) - l(k)."""
    gaps = np.diff(values[: max_strategies + 1])
    if len(gaps) == 0:
        return 1, 0.0
    k = int(np.argmax(gaps)) + 1
    return k, float(gaps[k - 1])


def kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Labels of k-means on ``x``: k-means++ seeding from ``seed``, KMEANS_RESTARTS restarts,
    the lowest inertia kept (deterministic for a given x)."""
    n = len(x)
    if k <= 1 or n <= k:
        return np.zeros(n, np.int64) if k <= 1 else np.arange(n) % k
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(KMEANS_RESTARTS):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):
            d = _squared_distances(x, np.array(centres)).min(1)
            p = d / d.sum() if d.sum() > 0 else np.full(n, 1.0 / n)
            centres.append(x[rng.choice(n, p=p)])
        centres = np.array(centres)
        for _ in range(KMEANS_ITERATIONS):
            labels = np.argmin(_squared_distances(x, centres), axis=1)
            moved = np.array(
                [x[labels == c].mean(0) if np.any(labels == c) else centres[c] for c in range(k)]
            )
            if np.allclose(moved, centres):
                break
            centres = moved
        labels = np.argmin(_squared_distances(x, centres), axis=1)
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels, inertia
    return best


def by_size(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered by cluster size, largest 0 (ties: the cluster seen first)."""
    found = list(dict.fromkeys(labels.tolist()))
    sizes = {c: int((labels == c).sum()) for c in found}
    order = sorted(found, key=lambda c: (-sizes[c], found.index(c)))
    mapping = {c: i for i, c in enumerate(order)}
    return np.array([mapping[c] for c in labels.tolist()], np.int64)


@dataclass(frozen=True)
class ClassModel:
    """One class's strategies, fitted on its sample: what every row is assigned with."""

    centroids: np.ndarray  # [k, G*G] mean unit-mass layout of each strategy's sample members
    eigengap: float
    sampled: int  # rows clustered
    rows: int  # rows of the class

    @property
    def count(self) -> int:
        return len(self.centroids)


def cluster(
    grids, max_strategies: int = DEFAULTS.max_strategies, seed: int = 0
) -> tuple[np.ndarray, float, np.ndarray]:
    """(labels of the rows of ``grids`` by size, chosen eigengap, eigenvalues)."""
    x = layouts(grids)
    n = len(x)
    if n < 3:
        return np.zeros(n, np.int64), 0.0, np.zeros(n)
    w = knn_affinity(x, neighbours(n))
    values, vectors = spectrum(w, max_strategies + 1)
    k, gap = choose_count(values, max_strategies)
    if k == 1:
        return np.zeros(n, np.int64), gap, values
    embedding = vectors[:, :k]
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    embedding = embedding / np.where(norms > 0, norms, 1.0)
    return by_size(kmeans(embedding, k, seed)), gap, values


def fit(grids, rows: int, max_strategies: int = DEFAULTS.max_strategies, seed: int = 0):
    """A ClassModel from the sampled ``grids`` (already in hash order) of a class of ``rows``."""
    labels, gap, _ = cluster(grids, max_strategies, seed)
    x = layouts(grids)
    centroids = np.array([x[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
    return ClassModel(centroids=centroids, eigengap=gap, sampled=len(x), rows=int(rows))


def assign(model: ClassModel, grid) -> tuple[int, float]:
    """(strategy, squared distance to its centroid) of one row's grid."""
    d = _squared_distances(layouts([grid]), model.centroids)[0]
    best = int(np.argmin(d))
    return best, float(d[best])


def _box_sums(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """[G-h+1, G-w+1] sums of ``grid`` over every h x w window (top-left index)."""
    s = np.pad(np.cumsum(np.cumsum(grid, 0), 1), ((1, 0), (1, 0)))
    return s[height:, width:] - s[:-height, width:] - s[height:, :-width] + s[:-height, :-width]


def hotspot(mean_grid) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1), ends exclusive: the cell rectangle maximising its mass
    fraction minus HOTSPOT_LIFT x its area fraction (first in scan order on ties)."""
    g = np.asarray(mean_grid, np.float64)
    g = g / g.sum() if g.sum() > 0 else np.full_like(g, 1.0 / g.size)
    rows, cols = g.shape
    best, box = -np.inf, (0, 0, rows, cols)
    for h in range(1, rows + 1):
        for w in range(1, cols + 1):
            excess = _box_sums(g, h, w) - HOTSPOT_LIFT * h * w / g.size
            i = int(np.argmax(excess))
            r, c = divmod(i, excess.shape[1])
            if excess[r, c] > best + 1e-12:
                best, box = float(excess[r, c]), (r, c, r + h, c + w)
    return box


def control(mean_grid, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """A rectangle of ``box``'s size with the least mean-layout mass, not overlapping ``box``
    when one fits (first in scan order on ties)."""
    g = np.asarray(mean_grid, np.float64)
    r0, c0, r1, c1 = box
    h, w = r1 - r0, c1 - c0
    sums = _box_sums(g, h, w)
    rs, cs = np.meshgrid(np.arange(sums.shape[0]), np.arange(sums.shape[1]), indexing="ij")
    apart = (rs + h <= r0) | (rs >= r1) | (cs + w <= c0) | (cs >= c1)
    if apart.any():
        sums = np.where(apart, sums, np.inf)
    i = int(np.argmin(sums))
    r, c = divmod(i, sums.shape[1])
    return r, c, r + h, c + w


def fractions(box: tuple[int, int, int, int], cells: tuple[int, int]) -> list[float]:
    """Cell rectangle (row0, col0, row1, col1) -> [x0, y0, x1, y1] fractions of the input."""
    r0, c0, r1, c1 = box
    rows, cols = cells
    return [c0 / cols, r0 / rows, c1 / cols, r1 / rows]


def box_mass(mean_grid, box: tuple[int, int, int, int]) -> float:
    g = np.asarray(mean_grid, np.float64)
    total = g.sum()
    r0, c0, r1, c1 = box
    return float(g[r0:r1, c0:c1].sum() / total) if total > 0 else 0.0


def to_pixels(box: list[float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """[x0, y0, x1, y1] fractions -> model-input pixels (for faithfulness.box_weights)."""
    height, width = size
    x0, y0, x1, y1 = box
    return x0 * width, y0 * height, x1 * width, y1 * height


def adjusted_rand_index(a, b) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings (1: identical partitions)."""
    a, b = np.asarray(a), np.asarray(b)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def pairs(v):
        return float((v * (v - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = len(a) * (len(a) - 1) / 2
    expected = rows * cols / total if total else 0.0
    best = (rows + cols) / 2
    return 1.0 if best == expected else (index - expected) / (best - expected)
