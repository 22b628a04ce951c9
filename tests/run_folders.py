"""Run folders made by hand, as the pipeline writes them (summaries in two files, errors,
manifest), for the report and the comparison page tests."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from transforms.strategies import STRATEGY_SCHEMA  # DIR/strategies' columns
from transforms.write import ERROR_SCHEMA, SUMMARY_SCHEMA

REPO = Path(__file__).resolve().parent.parent


def cli(module: str, *args, timeout: int = 300, **options) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository, output captured; ``options``: more
    ``subprocess.run`` arguments (``preexec_fn`` ...)."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        **options,
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The only line on stderr, which must start with ``error: ``."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


CLASSES = ("circle", "square", "triangle")
ROWS_PER_CLASS = 6
CELLS = 4
HOSTILE = "we<ird> & \"quoted\" 'name' <script>alert(1)</script>.png"
HOSTILE_REGION = "<i>region</i> & \"co'</th>"
# Planted shortcut: `circle` puts 58% of its positive attribution on `cue`, the others 12%;
# `object` gets 30% from circle and 60% from the others, which is no clear outlier.
CUE = {"circle": 0.58, "square": 0.12, "triangle": 0.12}
OBJECT = {"circle": 0.30, "square": 0.60, "triangle": 0.60}


def png(path: Path, size=(16, 16), seed=0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def images_of(folder: Path) -> Path:
    """Where a hand-made run's inputs are: beside the run folder, as a run's inputs are never
    inside its output folder (the report reads originals only from the run's inputs)."""
    return folder.parent / "images"


def summary_row(
    folder: Path, index: int, class_id: int, *, regions=True, converged=True, image_uri=None
) -> dict:
    label = CLASSES[class_id]
    name = f"{label}{index}"
    image_uri = image_uri or png(
        images_of(folder) / f"{name}.png", (20, 30), 1000 * (class_id + 1) + index
    )
    grid = np.zeros(CELLS * CELLS, np.float32)
    grid[class_id * 5] = 1.0  # all mass in one cell per class: cells 0, 5 and 10
    return {
        "image_uri": image_uri,
        "image_id": name,
        "content_sha256": hashlib.sha256(Path(image_uri).read_bytes()).hexdigest()
        if Path(image_uri).is_file()
        else None,
        "target_rank": 0,
        "width": 30,
        "height": 20,
        "target_class": class_id,
        "target_label": label,
        "predicted_class": class_id,
        "predicted_label": label,
        "target_score": 0.9,
        "baseline_score": 0.1,
        "relative_completeness_error": 10.0 ** -(2 + index % 5),
        "converged": converged,
        "steps": 16 if converged else 256,
        "gradient_evaluations": 16,
        "top5_share": 0.1 + 0.05 * index,
        "gini": 0.5,
        "mask_uri": png(folder / "masks" / f"{name}.png", seed=100 + index),
        "overlay_uri": png(folder / "overlays" / f"{name}.png", seed=200 + index),
        "grid_cells": CELLS,
        "grid": grid.tolist(),
        # the score rises linearly from 0 to 1 + class_id along the path
        "path_alphas": [0.0, 0.5, 1.0],
        "path_scores": [0.0, 0.5 + class_id / 2, 1.0 + class_id],
        "regions": [
            {
                "name": "cue",
                "mass_fraction": CUE[label],
                "pointing_hit": label == "circle",
                "area_fraction": 0.01,
            },
            {"name": "object", "mass_fraction": OBJECT[label], "pointing_hit": label != "circle"},
        ]
        if regions
        else None,
    }


def make_run(folder: Path, *, rows=None, errors=(), matched=None, regions=True) -> Path:
    """A run folder as the pipeline writes it: summaries in two files, errors, manifest."""
    if rows is None:
        rows = [
            summary_row(folder, i, c, regions=regions, converged=i < ROWS_PER_CLASS - 1)
            for c in range(len(CLASSES))
            for i in range(ROWS_PER_CLASS)
        ]
    halves = (rows[: len(rows) // 2], rows[len(rows) // 2 :]) if rows else ([],)
    for n, part in enumerate(halves):
        write_parquet(
            folder / "summaries" / f"part-{n:05d}-of-{len(halves):05d}.parquet",
            part,
            SUMMARY_SCHEMA,
        )
    write_parquet(folder / "errors" / "part-00000-of-00001.parquet", list(errors), ERROR_SCHEMA)
    uris = {r["image_uri"] for r in rows}
    manifest = {
        "counts": {
            "matched": matched or len(uris) + len(errors),
            "attributed": len(uris),
            "failed": len(errors),
            "rows": len(rows),
            "missing": 0,
            "in_both": 0,
        },
        "complete": True,
        "metrics": {"model_loads": 1},
        "config": {
            "method": "gausslegendre",
            "steps": 16,
            "tolerance": 0.01,
            "max_steps": 256,
            "baseline": "black",
            "score": "probability",
            "target": "predicted",
            "grid_cells": CELLS,
            "max_pixels": 1000000,
            "input_pattern": str(images_of(folder) / "*"),
        },
        "model": {
            "handle": "/models/<toy>",
            "kind": "saved_model",
            "input_size": [16, 16],
            "num_classes": 3,
            "output": "logits",
            "fingerprint": "ab" * 32,
        },
        "versions": {"python": "3.11", "tensorflow": "2.21.0"},
        "started_at": "2026-01-01T10:00:00+00:00",
        "finished_at": "2026-01-01T10:01:05+00:00",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def error(uri: str, kind: str = "UnsupportedFormat") -> dict:
    return {"image_uri": uri, "stage": "decode", "error_type": kind, "message": f"bad {uri}"}


def strategy_row(class_id: int, strategy: int, **values) -> dict:
    """A benign strategy of ``class_id`` (attribution spread over a quarter of the image, whose
    removal costs little more than the control's); ``values`` override any column."""
    grid = np.full(CELLS * CELLS, 1.0 / CELLS**2)
    row = {
        "target_class": class_id,
        "target_label": CLASSES[class_id],
        "strategy": strategy,
        "rows": ROWS_PER_CLASS,
        "share": 1.0,
        "eigengap": 0.5,
        "mean_grid": grid.tolist(),
        "hotspot_box": [0.25, 0.25, 0.75, 0.75],
        "hotspot_area_fraction": 0.25,
        "hotspot_mass_fraction": 0.4,
        "ablation_score": 0.75,
        "ablation_drop": 0.15,
        "control_drop": 0.1,
        "prototypes": [f"{CLASSES[class_id]}{i}" for i in range(3)],
        "control_box": [0.0, 0.5, 0.5, 1.0],
        "ablation_n": ROWS_PER_CLASS,
        "target_mean_score": 0.9,
    }
    row.update(values)
    return row


def write_strategies(folder: Path, rows: list[dict], schema: pa.Schema = STRATEGY_SCHEMA) -> None:
    """``rows`` as DIR/strategies/part-00000-of-00001.parquet (``schema`` may drop columns)."""
    rows = [{k: v for k, v in r.items() if k in schema.names} for r in rows]
    write_parquet(folder / "strategies" / "part-00000-of-00001.parquet", rows, schema)
