"""``--method score_guided`` against the adaptive rules it should beat, per model.

    python -m benchmarks.score_guided            # full (make bench): ~15 min on a quiet machine
    python -m benchmarks.score_guided --quick    # 1% only, 16 images, MobileNetV2 ladder only

For each model (the small CNN, the demo's trained model, the MobileNetV2-shaped one:
``benchmarks.models``) the same images (``benchmarks.worker.prepare``: |F(x) - F(black)| >= 0.1, predicted class)
go through the engine with each adaptive rule at the same tolerance: trapezoid 17 -> 257,
Gauss-Legendre 16 -> 256 and score_guided (trapezoid 9 -> 257, and 16 -> 241 as --steps'
default gives, each placed by a forward scan: 15 rows, then bisections where the curve
moves). Per rule: gradient rows and forward rows per row, the relative completeness
error recomputed from the attributions (median, p95, max), images/s (the scan included).
The rules' timed passes are interleaved (round robin, a fresh engine warmed up on a held-out
image each time) and the median taken, so the machine's load drifts over all of them alike;
the load average is printed. Fixed-step ladders (no refinement) give the p95 error each rule
reaches per gradient rows, and the rows score_guided needs to match each rung: the random-
weight MobileNetV2 reaches 1% within 257 points with no rule, so it gets the ladder only.
Writes benchmarks/score_guided.json and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks import models, worker
from benchmarks.render import README, replace_between

README_START = "<!-- generated: benchmarks.score_guided -->"
README_END = "<!-- /generated: benchmarks.score_guided -->"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "score_guided.json")
RULES = {
    "trapezoid 17->257": {"method": "riemann_trapezoid", "steps": 17, "max_steps": 257},
    "GL 16->256": {"method": "gausslegendre", "steps": 16, "max_steps": 256},
    "score_guided 9->257": {"method": "score_guided", "steps": 9, "max_steps": 257},
    "score_guided 16->241": {"method": "score_guided", "steps": 16, "max_steps": 256},
}
GUIDED = "score_guided 9->257"  # the gains column compares with this one
TARGET = 1.5  # fewer gradient rows at equal p95 error
# fixed steps (no refinement): the p95 error each rule reaches per gradient rows
LADDER = {
    "trapezoid": ("riemann_trapezoid", (17, 33, 65, 129)),
    "GL": ("gausslegendre", (16, 32, 64, 128)),
    # every rung a fixed rule of its own: the in-between ones measure the rows at equal error
    # more finely than doubling would
    "score_guided": ("score_guided", (9, 17, 25, 33, 41, 49, 65, 85, 97, 129)),
}
# adaptive runs only where the rules reach the levels within 257 points: the random-weight
# MobileNetV2's paths are too rough for 1% (README: p95 109% at 51 points), so it gets the
# ladder alone
PROFILES = {
    "quick": {
        "small_cnn": 16,
        "demo": 16,
        "mobilenet_v2": 6,
        "repeats": 1,
        "levels": {"small_cnn": (0.01,), "demo": (0.01,), "mobilenet_v2": ()},
        "ladder": {"small_cnn": False, "demo": False, "mobilenet_v2": True},
    },
    "full": {
        "demo": 48,
        # a p95 over 6 images is about the worst image's error, which draws a different rung
        # per rule (its gradient is rough below any scan's resolution): 24 images
        "mobilenet_v2": 24,
        # the smooth small CNN, where the default (Gauss-Legendre 16) converges in ~20 rows
        "small_cnn": 48,
        "repeats": 3,
        "levels": {"small_cnn": (0.01, 0.05), "demo": (0.01, 0.05), "mobilenet_v2": ()},
        "ladder": {"small_cnn": False, "demo": True, "mobilenet_v2": True},
    },
}
BATCH = {"small_cnn": 32, "demo": 32, "mobilenet_v2": 16}


def run_rule(model, images, warmup, rule: dict, tolerance, batch_size: int) -> dict:
    """One timed pass of a fresh engine (warmed up on the held-out image ``warmup``: tracing;
    None: untimed, no warm-up)."""
    from attribution.integrated_gradients import Request, engine_for

    engine = engine_for(model, tolerance=tolerance, batch_size=batch_size, **rule)
    if warmup is not None:
        engine.attribute([Request(-1, warmup, np.zeros_like(warmup))])
    requests = [Request(i, x, np.zeros_like(x)) for i, x in enumerate(images)]
    started = time.perf_counter()
    results = engine.attribute(requests)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "results": results}


def bench_model(name: str, profile: dict, cache_dir: str, work: str) -> dict:
    info = models.build(name, cache_dir)
    data = os.path.join(work, f"{name}.npz")
    worker.prepare({"model": name, "cache_dir": cache_dir, "data": data, "count": profile[name]})
    model, d = worker._load({"model_path": info.path}), worker._data({"data": data})
    images, fx, fb = d["bench_images"], d["bench_fx"], d["bench_fb"]
    out = {"model": info.description, "images": len(images), "levels": {}, "ladder": {}}
    if profile["ladder"][name]:
        for label, (method, ladder) in LADDER.items():
            out["ladder"][label] = {}
            for steps in ladder:
                rule = {"method": method, "steps": steps}
                run = run_rule(model, images, None, rule, None, BATCH[name])
                errors = worker.relative_errors(
                    np.stack([r.attributions for r in run["results"]]), fx, fb
                )
                out["ladder"][label][str(steps)] = worker._stats(errors)
                if method == "score_guided":
                    out["scan_rows"] = float(
                        np.mean([r.forward_evaluations for r in run["results"]])
                    )
    for level in profile["levels"][name]:
        times = {label: [] for label in RULES}
        last = {}
        for _ in range(profile["repeats"]):
            for label, rule in RULES.items():  # round robin: the load drifts over all alike
                run = run_rule(model, images, d["warmup"][0], rule, level, BATCH[name])
                times[label].append(run["seconds"])
                last[label] = run["results"]
        rows = {}
        for label, results in last.items():
            attributions = np.stack([r.attributions for r in results])
            if [r.target for r in results] != d["bench_targets"].tolist():
                raise RuntimeError(f"{label}: targets differ from the prepared ones")
            errors = worker.relative_errors(attributions, fx, fb)
            seconds = float(np.median(times[label]))
            rows[label] = {
                "gradient_rows_per_row": float(np.mean([r.gradient_evaluations for r in results])),
                "forward_rows_per_row": float(np.mean([r.forward_evaluations for r in results])),
                "errors": worker._stats(errors),
                "converged": int(sum(r.converged for r in results)),
                "images_per_s": len(images) / seconds,
                "times": times[label],
            }
        out["levels"][str(level)] = rows
    return out


def markdown(results: dict) -> list[str]:
    lines = [
        f"Load average at start {results['load_start']}, at end {results['load_end']}; "
        f"`{results['command']}`.",
        "",
        "| model | tolerance | rule | gradient rows / row | forward rows / row | "
        "p95 (median) relative error | converged | images/s | score_guided's gain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ladders = [(name, m) for name, m in results["models"].items() if m["ladder"]]
    for name, model in results["models"].items():
        for level, rows in model["levels"].items():
            guided = rows[GUIDED]
            for label, row in rows.items():
                gain = (
                    ""
                    if label.startswith("score_guided")
                    else f"{row['gradient_rows_per_row'] / guided['gradient_rows_per_row']:.2f}x "
                    f"fewer rows, {guided['images_per_s'] / row['images_per_s']:.2f}x images/s"
                )
                lines.append(
                    f"| {name} ({model['images']} images) | {float(level):.0%} | {label} | "
                    f"{row['gradient_rows_per_row']:.1f} | {row['forward_rows_per_row']:.0f} | "
                    f"{row['errors']['p95']:.3%} ({row['errors']['median']:.3%}) | "
                    f"{row['converged']}/{model['images']} | {row['images_per_s']:.2f} | {gain} |"
                )
    for name, model in ladders:
        lines += [
            "",
            f"Fixed steps, {name} ({model['images']} images): p95 (median) relative "
            "completeness error per gradient rows a row (score_guided: + "
            f"{model.get('scan_rows', 15):.1f} forward rows, the scan)",
            "",
            "| rule | " + " | ".join(f"{label}" for label in model["ladder"]) + " |",
            "|---|" + "---|" * len(model["ladder"]),
        ]
        rungs = sorted({int(s) for ladder in model["ladder"].values() for s in ladder})
        for steps in rungs:
            cells = []
            for ladder in model["ladder"].values():
                e = ladder.get(str(steps))
                cells.append(f"{e['p95']:.2%} ({e['median']:.2%})" if e else "")
            lines.append(f"| {steps} points | " + " | ".join(cells) + " |")
        lines += ["", *equal_error(model["ladder"])]
    return lines


def equal_error(ladders: dict) -> list[str]:
    """For each rung of the other rules, the fewest score_guided points from which every
    score_guided rung has a p95 no higher (the p95 of rough paths is not monotone in the
    points, and the lowest rung that happens to reach it would flatter the rule): the
    gradient rows ratio at equal p95 error."""
    guided = sorted((int(s), e["p95"]) for s, e in ladders["score_guided"].items())
    out = []
    for label, ladder in ladders.items():
        if label == "score_guided":
            continue
        for steps, e in sorted((int(s), e) for s, e in ladder.items()):
            match = next(
                (n for j, (n, _) in enumerate(guided) if all(p <= e["p95"] for _, p in guided[j:])),
                None,
            )
            out.append(
                f"- {label} {steps} points, p95 {e['p95']:.2%}: "
                + (
                    f"score_guided reaches it from {match} points on ({steps / match:.2f}x "
                    f"fewer rows: {'meets' if steps / match >= TARGET else 'misses'} the "
                    f"{TARGET}x target)"
                    if match
                    else "score_guided does not reach it on its ladder"
                )
            )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.score_guided")
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats, 1% only")
    parser.add_argument("--models", default="small_cnn,demo,mobilenet_v2")
    parser.add_argument(
        "--cache_dir",
        default=os.path.join(tempfile.gettempdir(), "beam-ig-bench-cache"),
        help="where built models (and the demo's trained model) are kept",
    )
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument(
        "--from_json", action="store_true", help="only re-render README's block from --output"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.output) as f:
            return _render(json.load(f))
    worker._quiet()
    profile = PROFILES["quick" if args.quick else "full"]
    results = {
        "command": "python -m benchmarks.score_guided" + (" --quick" if args.quick else ""),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="ig-score-guided-") as work:
        for name in [n.strip() for n in args.models.split(",") if n.strip()]:
            results["models"][name] = bench_model(name, profile, args.cache_dir, work)
    results["load_end"] = [round(x, 2) for x in os.getloadavg()]
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    return _render(results)


def _render(results: dict) -> int:
    """Print the tables and write them into README between their markers."""
    text = "\n".join(markdown(results))
    print(text)
    replace_between(README, README_START, README_END, "\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
