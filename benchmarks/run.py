"""The engine benchmark: the TF tutorial's IG vs Captum-style batching vs our engine vs the
whole pipeline, at equal accuracy, on the same machine, models and images.

    .venv/bin/python -m benchmarks.run            # full (make bench), ~15 min on 2 cores
    .venv/bin/python -m benchmarks.run --quick    # a few minutes, fewer images and repeats

Every configuration runs in its own subprocess (benchmarks/worker.py) so its peak RSS
(``ru_maxrss`` from ``os.wait4``) is its own. Writes benchmarks/RESULTS.md and
benchmarks/results.json and prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

from benchmarks import render
from benchmarks.measure import HERE, PROFILES, bench_model, log, machine


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.from_json:
        results = _rendered_again(args.from_json)
    else:
        results = _measured(args, argv)
    _write(results, args.output_dir, measured=not args.from_json)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer images, repeats and levels")
    parser.add_argument(
        "--models",
        default="small_cnn,demo,mobilenet_v2",
        help="comma-separated subset of small_cnn,demo,mobilenet_v2",
    )
    parser.add_argument(
        "--cache_dir",
        default=os.path.join(tempfile.gettempdir(), "beam-ig-bench-cache"),
        help="where built models (and the demo's trained model) are kept",
    )
    parser.add_argument(
        "--output_dir", default=HERE, help="where RESULTS.md and results.json are written"
    )
    parser.add_argument(
        "--from_json",
        default=None,
        help="only re-render RESULTS.md from a results.json (no measuring)",
    )
    return parser


def _rendered_again(path: str) -> dict:
    """The saved results with their targets and computed notes derived anew (the stand-in
    note is the measuring run's, kept as saved)."""
    with open(path) as f:
        results = json.load(f)
    results["targets"] = render.targets(results, {"levels": results["levels"]})
    kept = [n for n in results["notes"] if render.STAND_IN in n]
    results["notes"] = kept + render.notes(results)
    return results


def _measured(args: argparse.Namespace, argv: list[str] | None) -> dict:
    profile_name = "quick" if args.quick else "full"
    profile = PROFILES[profile_name]
    started = time.perf_counter()
    given = sys.argv[1:] if argv is None else argv
    command = ".venv/bin/python -m benchmarks.run" + (
        " " + " ".join(shlex.quote(a) for a in given) if given else ""
    )
    results = {
        "command": command,
        "profile": profile_name,
        "levels": list(profile["levels"]),
        "started_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "models": {},
        "notes": [],
    }
    log(f"machine: {results['machine']}")
    work = tempfile.mkdtemp(prefix="ig-bench-")
    try:
        for name in [n.strip() for n in args.models.split(",") if n.strip()]:
            results["models"][name] = bench_model(name, profile, work, args.cache_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = time.perf_counter() - started
    results["targets"] = render.targets(results, profile)
    demo = results["models"].get("demo")
    if demo and not demo["model"]["trained"]:
        results["notes"].append(
            f"demo: {render.STAND_IN}, so a STAND-IN small CNN at the demo's input size was used."
        )
    results["notes"].extend(render.notes(results))
    return results


def _write(results: dict, output_dir: str, measured: bool) -> None:
    """results.json (when measured), RESULTS.md, README's tables when writing into
    benchmarks/, and the markdown on stdout."""
    report = render.markdown(results, results["profile"])
    if measured:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=float)
    render.write_results(os.path.join(output_dir, "RESULTS.md"), report)
    if os.path.abspath(output_dir) == os.path.abspath(HERE):
        readme = render.readme_tables(results)
        render.replace_between(render.README, render.README_START, render.README_END, readme)
    print(report)


if __name__ == "__main__":
    sys.exit(main())
