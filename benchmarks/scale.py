"""``make scale``: a simulated large run. N synthetic images in TFRecord shards, a tiny model,
``python -m pipeline`` on DirectRunner (multi-processing, 2 workers, few steps, no per-image
files); records images/s and the launcher's peak memory (VmHWM of the launcher process
alone, polled from /proc; the workers are other processes) in benchmarks/RESULTS.md.

    python -m benchmarks.scale --images 10000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import scale_data
from transforms.layout import MANIFEST

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "RESULTS.md")
SCALE_JSON = os.path.join(REPO, "benchmarks", "scale.json")
HEADER = "## Simulated large run (`make scale`)"
LIMIT_MB = 150  # the launcher may grow by at most this much from 10,000 to 100,000 images
PIPELINE_FLAGS = [
    "--runner",
    "DirectRunner",
    "--direct_num_workers",
    "2",
    "--direct_running_mode",
    "multi_processing",
    "--steps",
    "4",
    "--method",
    "gausslegendre",
    "--tolerance",
    "0",
    "--artifacts",
    "none",
    "--no_report",
    "--progress_interval",
    "0",
    "--label_key",
    "image/class/label",
]


def _status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_once(count: int, work: str, model: str) -> dict:
    data = os.path.join(work, f"data-{count}")
    if not os.path.isdir(data):
        scale_data.write_shards(data, count)
    out = os.path.join(work, f"out-{count}")
    shutil.rmtree(out, ignore_errors=True)
    argv = [
        sys.executable,
        "-m",
        "pipeline",
        "--input_pattern",
        f"{data}/*.tfrecord",
        "--output_dir",
        out,
        "--model",
        model,
        *PIPELINE_FLAGS,
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.monotonic()
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak_kb = 0
    while process.poll() is None:
        peak_kb = max(peak_kb, _status_kb(process.pid, "VmHWM") or 0)
        time.sleep(0.5)
    wall = time.monotonic() - started
    output = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(
            f"the run of {count} images failed ({process.returncode}):\n{output[-3000:]}"
        )
    with open(os.path.join(out, MANIFEST)) as f:
        manifest = json.load(f)
    counts = manifest["counts"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "images": count,
        "attributed": counts["attributed"],
        "failed": counts["failed"],
        "complete": manifest["complete"],
        "wall_s": round(wall, 1),
        "images_per_s": round(counts["attributed"] / wall, 1),
        "launcher_peak_mb": round(peak_kb / 1024, 1),
        "model_loads": manifest["metrics"]["model_loads"],
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def markdown(results: list[dict]) -> str:
    lines = [
        HEADER,
        "",
        (
            "Command: `python -m benchmarks.scale` (`make scale`). Each size: synthetic 16x16 "
            "PNGs in TFRecord shards of 1,000 (benchmarks/scale_data.py), a tiny Conv2D model "
            "(3 classes), `python -m pipeline` with "
            f"`{' '.join(PIPELINE_FLAGS)}`. Wall time of the whole command (start-up, "
            "model load, manifest included). Launcher peak: VmHWM of the `python -m "
            "pipeline` process (the multi-processing workers are separate processes). "
            "Shared 2-core machine: the load average after each run is shown."
        ),
        "",
        (
            "| images | attributed | failed | complete | wall s | images/s | launcher peak MB "
            "| model loads | load average |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['images']:,} | {r['attributed']:,} | {r['failed']} | "
            f"{r['complete']} | {r['wall_s']} | {r['images_per_s']} | "
            f"{r['launcher_peak_mb']} | {r['model_loads']} | "
            f"{', '.join(map(str, r['load_average']))} |"
        )
    sizes = {r["images"]: r for r in results}
    if 10_000 in sizes and 100_000 in sizes:
        growth = sizes[100_000]["launcher_peak_mb"] - sizes[10_000]["launcher_peak_mb"]
        verdict = "PASS" if growth <= LIMIT_MB else "FAIL"
        lines += [
            "",
            (
                f"Launcher memory growth from 10,000 to 100,000 images: {growth:.1f} "
                f"MB (limit {LIMIT_MB} MB): **{verdict}**."
            ),
        ]
    return "\n".join(lines) + "\n"


def record(results: list[dict]) -> None:
    previous = []
    if os.path.exists(SCALE_JSON):
        with open(SCALE_JSON) as f:
            previous = json.load(f)
    merged = {r["images"]: r for r in previous}
    merged.update({r["images"]: r for r in results})
    results = [merged[k] for k in sorted(merged)]
    with open(SCALE_JSON, "w") as f:
        json.dump(results, f, indent=2)
    with open(RESULTS) as f:
        text = f.read()
    head = text.split(HEADER)[0].rstrip("\n")
    with open(RESULTS, "w") as f:
        f.write(f"{head}\n\n{markdown(results)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument(
        "--images", default="10000,100000", help="Comma list of sizes to run, smallest first."
    )
    parser.add_argument(
        "--work_dir",
        default=None,
        help="Where data, model and outputs go (default: a temporary folder).",
    )
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="ig-scale-")
    os.makedirs(work, exist_ok=True)
    model = os.path.join(work, "model")
    if not os.path.isdir(model):
        scale_data.tiny_model(model)
    for count in (int(v) for v in args.images.split(",")):
        result = run_once(count, work, model)
        print(json.dumps(result), flush=True)
        record([result])
    return 0


if __name__ == "__main__":
    sys.exit(main())
