"""Cost per image of each ``--attribution`` at its defaults, on one benchmark model.

    python -m benchmarks.methods [--model small_cnn|demo|mobilenet_v2] [--images 8]
        [--methods gradcam,occlusion]   (a subset: their rows replace those in the JSON)

One engine per method with the pipeline's defaults (Gauss-Legendre 16 points, tolerance
0.01, max 256, call size 32; Guided IG 128 steps), all images handed over at once as the
pipeline does with ``--image_batch_size``; a warm-up pass first (tracing), then the timed
pass. Prints a Markdown table (seconds per image, gradient rows per image, model calls,
median relative completeness error) and writes it as JSON beside the other results.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from attribution.integrated_gradients import IntegratedGradients
from attribution.methods import ATTRIBUTIONS, GUIDED_STEPS, MethodConfig, explain
from attribution.methods.cam import Cam
from attribution.methods.config import CAMS, default_layer
from attribution.models import load_model
from attribution.targets import Targets
from benchmarks import models

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "methods.json")


def measure(fn, image_size, output, images, attribution: str, model=None) -> dict:
    steps = GUIDED_STEPS if attribution == "guided_ig" else 16
    engine = IntegratedGradients(
        fn, image_size=image_size, model_output=output, steps=steps, max_steps=max(256, steps)
    )
    cam = None
    if attribution in CAMS:  # the default layer: the last with a 4-D output
        features = model.features(default_layer(model.layers))
        cam = Cam(features, engine, plus_plus=attribution == "gradcam_plus_plus")
    keys = [f"image-{i}" for i in range(len(images))]
    references = images[:16]  # --baseline_samples 16 from the input set
    config = MethodConfig(attribution=attribution)
    targets = Targets.parse("predicted")
    explain(engine, images[:2], keys[:2], targets, config, references, cam)  # warm-up: tracing
    calls = engine.model_calls
    start = time.perf_counter()
    groups = explain(engine, list(images), keys, targets, config, references, cam)
    seconds = time.perf_counter() - start
    results = [r for group in groups for r in group]
    errors = [r.relative_completeness_error for r in results]
    return {
        "attribution": attribution,
        "seconds_per_image": seconds / len(images),
        "gradient_rows_per_image": float(np.mean([r.gradient_evaluations for r in results])),
        "model_calls_per_image": (engine.model_calls - calls) / len(images),
        # None for the methods without completeness (gradcam, occlusion, rise)
        "median_relative_completeness_error": (
            None if None in errors else float(np.median(errors))
        ),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.methods")
    parser.add_argument("--model", default="small_cnn", choices=models.MODELS)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument(
        "--cache_dir", default=os.path.join(tempfile.gettempdir(), "ig-bench-models")
    )
    parser.add_argument("--methods", default=",".join(ATTRIBUTIONS), help="A comma list.")
    args = parser.parse_args(argv)
    info = models.build(args.model, args.cache_dir)
    model = load_model(info.path)
    images = models.images_for(info, args.images)
    rows = [
        measure(model.fn, model.image_size, model.output, images, name, model)
        for name in args.methods.split(",")
    ]
    print(
        f"| {info.name} ({args.images} images) | s / image | gradient rows / image | "
        f"model calls / image | median relative completeness error |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['attribution']} | {row['seconds_per_image']:.3f} | "
            f"{row['gradient_rows_per_image']:.0f} | {row['model_calls_per_image']:.1f} | "
            f"{_percent(row['median_relative_completeness_error'])} |"
        )
    record = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            record = json.load(f)
    kept = [r for r in record.get(info.name, {}).get("methods", []) if r not in rows]
    names = {r["attribution"] for r in rows}
    rows = [r for r in kept if r["attribution"] not in names] + rows
    rows.sort(key=lambda r: ATTRIBUTIONS.index(r["attribution"]))
    record[info.name] = {"images": args.images, "description": info.description, "methods": rows}
    with open(RESULTS, "w") as f:
        json.dump(record, f, indent=2)
    return 0


def _percent(value) -> str:
    return "none" if value is None else f"{value:.2%}"


if __name__ == "__main__":
    raise SystemExit(main())
