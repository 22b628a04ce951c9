"""The report at 1,000 classes: a synthetic run folder (summaries as the pipeline writes them,
DIR/strategies with a planted suspicious strategy in some classes, masks and overlays of
ImageNet size) and the time ``pipeline.report`` takes to read it and draw the page, and the
page's size. The per-class sections draw ``--report_classes`` (24) classes, most suspicious
first; the rest are table rows.

    python -m benchmarks.report_scale            # 1,000 classes x 100 rows
    python -m benchmarks.report_scale --quick    # 1,000 classes x 10 rows (a smoke run)

Writes benchmarks/report_scale.json (the full run only) and prints one line per measure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from transforms.strategies import STRATEGY_SCHEMA  # DIR/strategies as the stage writes it

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(REPO, "benchmarks", "report_scale.json")
SIZE = 224  # model input, pixels
CELLS = 14  # --grid_cells
POINTS = 17  # path points per row
DISTINCT_FILES = 16  # distinct originals, masks and overlays the rows point to
PLANT_EVERY = 37  # every 37th class has a planted suspicious strategy (28 of 1,000)


def planted_classes(classes: int) -> list[int]:
    return list(range(0, classes, PLANT_EVERY))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pictures(rng: np.random.Generator) -> tuple[bytes, bytes, bytes]:
    """(original, mask, overlay) PNGs like a photo's: smooth shapes with sensor noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    cx, cy = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
    base = rng.uniform(0.2, 0.8, 3) * (0.6 + 0.4 * np.sin(6 * xx + rng.uniform(0, 6)))[..., None]
    original = np.clip(base + 0.5 * blob[..., None] + rng.normal(0, 0.03, (SIZE, SIZE, 3)), 0, 1)
    heat = np.clip(blob + rng.normal(0, 0.05, blob.shape), 0, 1)
    mask = np.stack([heat, heat**2, 0.2 * heat], axis=-1)
    overlay = 0.6 * original + 0.4 * mask
    return tuple(_png((np.clip(p, 0, 1) * 255).astype(np.uint8)) for p in (original, mask, overlay))


def _grid(rng: np.random.Generator, n: int, corner: bool) -> np.ndarray:
    """``n`` layouts of unit mass: a blob in the middle, or most mass in the top left cell."""
    grids = rng.gamma(2.0, 1.0, (n, CELLS, CELLS))
    grids[:, 4:10, 4:10] += 6.0
    if corner:
        grids[:, 0, 0] += 120.0
    grids /= grids.sum(axis=(1, 2), keepdims=True)
    return grids.reshape(n, CELLS * CELLS).astype(np.float32)


def _list_array(values: np.ndarray) -> pa.Array:
    n, width = values.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * width + 1, width, dtype=np.int32)), pa.array(values.ravel())
    )


def make_folder(folder, classes: int = 1000, rows_per_class: int = 100, seed: int = 0) -> Path:
    """A finished run folder with ``classes`` x ``rows_per_class`` summary rows, its
    strategies (benign ones everywhere, a suspicious minority in ``planted_classes``), the
    masks and overlays the report embeds, and a manifest."""
    from transforms.write import SUMMARY_SCHEMA

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for name in ("images", "masks", "overlays", "summaries", "errors", "strategies"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(DISTINCT_FILES):
        original, mask, overlay = _pictures(rng)
        paths = [folder / "images" / f"img{i}.png", folder / "masks" / f"m{i}.png"]
        paths.append(folder / "overlays" / f"o{i}.png")
        for path, data in zip(paths, (original, mask, overlay)):
            path.write_bytes(data)
        files.append(paths)

    n = classes * rows_per_class
    target = np.repeat(np.arange(classes, dtype=np.int32), rows_per_class)
    index = np.tile(np.arange(rows_per_class), classes)
    planted = set(planted_classes(classes))
    corner = np.array([t in planted for t in target]) & (index < max(1, rows_per_class // 5))
    grids = np.empty((n, CELLS * CELLS), np.float32)
    grids[corner] = _grid(rng, int(corner.sum()), True)
    grids[~corner] = _grid(rng, int((~corner).sum()), False)
    labels = [f"class_{c:04d}" for c in range(classes)]
    ids = [f"class_{c:04d}_{i:03d}" for c, i in zip(target.tolist(), index.tolist())]
    which = np.arange(n) % DISTINCT_FILES
    alphas = np.tile(np.linspace(0, 1, POINTS, dtype=np.float32), (n, 1))
    scores = (alphas ** rng.uniform(0.3, 2.0, (n, 1))).astype(np.float32)
    columns = {
        "image_uri": pa.array([str(files[w][0]) for w in which]),
        "image_id": pa.array(ids),
        "target_class": pa.array(target),
        "target_rank": pa.array(np.zeros(n, np.int32)),
        "target_label": pa.array([labels[t] for t in target]),
        "predicted_class": pa.array(target),
        "predicted_label": pa.array([labels[t] for t in target]),
        "target_score": pa.array(rng.uniform(0.5, 1.0, n)),
        "relative_completeness_error": pa.array(10 ** rng.uniform(-5, -1.5, n)),
        "converged": pa.array(np.ones(n, bool)),
        "steps": pa.array(np.full(n, POINTS, np.int32)),
        "gradient_evaluations": pa.array(np.full(n, POINTS, np.int32)),
        "mask_uri": pa.array([str(files[w][1]) for w in which]),
        "overlay_uri": pa.array([str(files[w][2]) for w in which]),
        "grid_cells": pa.array(np.full(n, CELLS, np.int32)),
        "grid": _list_array(grids),
        "path_alphas": _list_array(alphas),
        "path_scores": _list_array(scores),
    }
    top = np.sort(grids, axis=1)[:, -max(1, CELLS * CELLS // 20) :].sum(axis=1)
    columns["top5_share"] = pa.array(top.astype(np.float64))
    columns["gini"] = pa.array(rng.uniform(0.3, 0.8, n))
    arrays = [
        columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type)
        for f in SUMMARY_SCHEMA
    ]
    table = pa.Table.from_arrays(arrays, schema=SUMMARY_SCHEMA)
    half = n // 2
    for part, piece in enumerate((table.slice(0, half), table.slice(half))):
        pq.write_table(piece, folder / "summaries" / f"part-{part:05d}-of-00002.parquet")
    pq.write_table(
        pa.Table.from_pylist([], schema=_error_schema()), folder / "errors" / "e.parquet"
    )

    strategies = []
    for c in range(classes):
        rows = np.flatnonzero(target == c)
        groups = [rows[corner[rows]], rows[~corner[rows]]] if c in planted else [rows]
        for number, members in enumerate(g for g in groups if g.size):
            mean = grids[members].mean(axis=0)
            suspicious = bool(corner[members[0]])
            box = [0.0, 0.0, 1 / CELLS, 1 / CELLS] if suspicious else [0.3, 0.3, 0.7, 0.7]
            area = (box[2] - box[0]) * (box[3] - box[1])
            cells = mean.reshape(CELLS, CELLS)
            mass = float(cells[0, 0] if suspicious else cells[4:10, 4:10].sum())
            prototypes = [ids[m] for m in members[:3]]
            for p, m in zip(prototypes, members[:3]):
                target_path = folder / "overlays" / f"{p}.png"
                if not target_path.exists():
                    os.link(files[which[m]][2], target_path)
            strategies.append(
                {
                    "target_class": c,
                    "target_label": labels[c],
                    "strategy": number,
                    "rows": int(members.size),
                    "share": members.size / rows.size,
                    "eigengap": 0.4,
                    "mean_grid": mean.tolist(),
                    "hotspot_box": box,
                    "hotspot_area_fraction": area,
                    "hotspot_mass_fraction": mass,
                    "ablation_score": 0.3 if suspicious else 0.7,
                    "ablation_drop": 0.62 if suspicious else 0.2,
                    "control_drop": 0.04 if suspicious else 0.12,
                    "prototypes": prototypes,
                    "control_box": [0.8, 0.8, 0.8 + 1 / CELLS, 0.8 + 1 / CELLS],
                    "ablation_n": int(min(32, members.size)),
                    "target_mean_score": 0.92 if suspicious else 0.9,
                }
            )
    pq.write_table(
        pa.Table.from_pylist(strategies, schema=STRATEGY_SCHEMA),
        folder / "strategies" / "part-00000-of-00001.parquet",
    )
    manifest = {
        "counts": {"matched": n, "attributed": n, "failed": 0, "rows": n},
        "complete": True,
        "metrics": {"model_loads": 2},
        "config": {"grid_cells": CELLS, "target": "predicted", "score": "probability"},
        "model": {"handle": "synthetic", "input_size": [SIZE, SIZE], "num_classes": classes},
        "files": {"summaries": [], "errors": [], "strategies": ["part-00000-of-00001.parquet"]},
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T01:00:00+00:00",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _error_schema() -> pa.Schema:
    from transforms.write import ERROR_SCHEMA

    return ERROR_SCHEMA


def measure(classes: int, rows_per_class: int) -> dict:
    from pipeline.report import write_report

    work = tempfile.mkdtemp(prefix="report-scale-")
    try:
        started = time.perf_counter()
        folder = make_folder(Path(work) / "run", classes, rows_per_class)
        made = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.process_time()
        page = Path(write_report(str(folder)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        text = page.read_text()
        return {
            "classes": classes,
            "rows_per_class": rows_per_class,
            "rows": classes * rows_per_class,
            "folder_seconds": round(made, 2),
            "report_seconds": round(seconds, 2),  # wall clock (the machine may be shared)
            "report_cpu_seconds": round(cpu, 2),  # this process's CPU time
            "page_bytes": page.stat().st_size,
            "images": text.count("<img "),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 rows a class; no JSON written")
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args(argv)
    result = measure(args.classes, 10 if args.quick else 100)
    result["cores"] = os.cpu_count()
    for key, value in result.items():
        print(f"{key}: {value}")
    if not args.quick:
        Path(RESULT).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
