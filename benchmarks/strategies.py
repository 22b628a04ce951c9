"""Strategy discovery at scale (``--strategies auto``): clustering time and peak memory at 1,000 classes x
100 rows and at one class x 100,000 rows (sample then assign), the way the Beam stage does it:

- rows stream past once; per class a bounded heap keeps the ``--strategy_sample`` smallest
  seeded hashes (what ``beam.combiners.Top.PerKey`` keeps) and a count;
- each class with enough rows is fitted (``attribution.strategies.fit``: kNN graph,
  Laplacian spectrum, eigengap, k-means);
- rows stream past again and each is assigned to its nearest centroid.

Times are the process's CPU seconds (``time.process_time``: the machine is shared, wall
time measures the neighbours), under tracemalloc (which slows NumPy's small allocations).
Layouts are synthetic 14 x 14 grids with two planted strategies (70/30) per class. Peak
memory is ``tracemalloc``'s (NumPy reports its buffers to it) over the whole run: it must not
grow with the number of rows, since no step holds more than the sample. Results go to
benchmarks/strategies.json and print as a Markdown table.

    python -m benchmarks.strategies            # 1,000 x 100 and 1 x 100,000 (~1 min)
    python -m benchmarks.strategies --quick    # 100 x 100, 1 x 10,000 and 1 x 20,000
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import time
import tracemalloc

import numpy as np

from attribution import strategies as st
from attribution.baselines import seed_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(REPO, "benchmarks", "strategies.json")
CELLS = 14
FULL = [(1000, 100), (1, 10_000), (1, 100_000)]
QUICK = [(100, 100), (1, 10_000), (1, 20_000)]


def _bases() -> np.ndarray:
    a = np.full((CELLS, CELLS), 0.2)
    a[4:10, 4:10] += 3.0  # the object
    b = np.full((CELLS, CELLS), 0.2)
    b[12:14, 8:14] += 6.0  # a bar at the edge
    return np.stack([a.ravel() / a.sum(), b.ravel() / b.sum()])


def rows(classes: int, per_class: int, seed: int = 0):
    """(class, key, grid) for every row, generated on the fly (never held as a whole)."""
    bases = _bases()
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            grid = rng.gamma(1.0, size=bases.shape[1]) * bases[int(i % 10 >= 7)]
            yield c, seed_for(f"strategy:{c}:{i}"), (grid / grid.sum()).astype(np.float32)


def run(classes: int, per_class: int, sample: int = 2000) -> dict:
    tracemalloc.start()
    started = time.process_time()
    heaps: dict[int, list] = {}
    counts: dict[int, int] = {}
    for c, key, grid in rows(classes, per_class):  # pass 1: bounded sample + count
        heap = heaps.setdefault(c, [])
        counts[c] = counts.get(c, 0) + 1
        item = (-key, grid.tobytes())
        if len(heap) < sample:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    sampled = time.process_time()
    models = {}
    for c, heap in heaps.items():  # fit each class on its sample, in hash order
        ordered = sorted(heap, key=lambda item: -item[0])
        grids = np.stack([np.frombuffer(g, np.float32) for _, g in ordered])
        models[c] = st.fit(grids, counts[c])
    heaps.clear()
    fitted = time.process_time()
    found = {}
    for c, _, grid in rows(classes, per_class):  # pass 2: assign every row
        strategy, _ = st.assign(models[c], grid)
        found[(c, strategy)] = found.get((c, strategy), 0) + 1
    done = time.process_time()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    strategies = [m.count for m in models.values()]
    return {
        "classes": classes,
        "rows_per_class": per_class,
        "rows": classes * per_class,
        "sample": min(sample, per_class),
        "sample_s": round(sampled - started, 2),
        "fit_s": round(fitted - sampled, 2),
        "assign_s": round(done - fitted, 2),
        "total_s": round(done - started, 2),
        "fit_ms_per_class": round(1000 * (fitted - sampled) / classes, 2),
        "assign_us_per_row": round(1e6 * (done - fitted) / (classes * per_class), 1),
        "peak_mb": round(peak / 2**20, 1),
        "strategies_found": sorted(set(strategies)),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| classes x rows | sample | sample s | fit s (ms/class) | assign s (us/row) "
        "| total s | peak MB | strategies found |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['classes']:,} x {r['rows_per_class']:,} | {r['sample']:,} | "
            f"{r['sample_s']} | {r['fit_s']} ({r['fit_ms_per_class']}) | "
            f"{r['assign_s']} ({r['assign_us_per_row']}) | {r['total_s']} | {r['peak_mb']} | "
            f"{r['strategies_found']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args(argv)
    results = [run(c, n) for c, n in (QUICK if args.quick else FULL)]
    with open(OUTPUT, "w", encoding="utf-8") as f:
        json.dump({"quick": args.quick, "results": results}, f, indent=2)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
