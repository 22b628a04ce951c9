"""The engine close to the hardware, and a job that starts fast. Every number is a
ratio of things measured side by side in one run (the machine is shared and its load drifts):

- efficiency: the engine's gradient rows/s over the bare model's forward + input gradient at
  the same call size, short passes alternating with the ceiling in one process; before (the
  engine at ``--before``, default: main's) and after (this tree).
- fixed: a 1-image ``python -m pipeline`` job vs a process that only imports TensorFlow and
  Beam, alternated; and where the job's own seconds go (benchmarks.worker fixed_costs).
- pipeline: a 2,000-image job (small CNN, 64x64; at the defaults and with --faithfulness
  none) vs the engine alone doing the same math on the same decoded images, in wall and in
  CPU seconds; the engine in the job's 16-image calls vs one call (refinement per batch);
  and where a job's seconds go, step by step (``benchmarks.worker job_breakdown``), this
  tree's job against the ``--before`` one on the same PNGs.
- precision: images/s and completeness error per ``--precision`` on this CPU.
- tutorial: whole processes, start to exit: the TF tutorial's loop (trapezoid 32 points) vs
  ``python -m pipeline`` on 800 small-CNN images (at the defaults, and with --faithfulness
  none), and 24 MobileNetV2 224 images at trapezoid 51 points, no refinement, both; equal or
  lower error. --quick: fewer images everywhere.

    .venv/bin/python -m benchmarks.performance [--parts efficiency,fixed,...] [--quick]

Writes benchmarks/performance.json and its section of benchmarks/RESULTS.md (between START and
END; benchmarks.run keeps that section by those markers when it rewrites the file).
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

import numpy as np

from benchmarks import models
from benchmarks.measure import (
    HERE,
    REPO,
    log,
    machine,
    run_pipeline,
    run_process,
    worker,
    write_pngs,
)
from benchmarks.render import README, replace_between

README_START = "<!-- generated: benchmarks.performance -->"
README_END = "<!-- /generated: benchmarks.performance -->"
PARTS = ("efficiency", "fixed", "pipeline", "precision", "tutorial")
START, END = "<!-- benchmarks.performance -->", "<!-- /benchmarks.performance -->"
DEFAULTS = {"method": "gausslegendre", "steps": 16, "tolerance": 0.01, "max_steps": 256}
TRAP = "riemann_trapezoid"
# the whole-process targets against the tutorial's loop: (model, the pipeline's extra
# arguments) -> the least speedup
TUTORIAL_TARGETS = {
    ("small_cnn", "defaults"): 1.5,
    ("small_cnn", "--faithfulness none"): 2.5,
    ("mobilenet_v2", f"--method {TRAP} --steps 51 --tolerance 0 --faithfulness none"): 1.2,
}


def merge_base(ref: str) -> str:
    """The commit where HEAD and ``ref`` meet ('' when git cannot say)."""
    return subprocess.run(
        ["git", "merge-base", "HEAD", ref], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()


def before_engine(ref: str, folder: str) -> str | None:
    base = merge_base(ref)
    text = subprocess.run(
        ["git", "show", f"{base}:attribution/integrated_gradients.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if text.returncode:
        return None
    path = os.path.join(folder, "engine_before.py")
    with open(path, "w") as f:
        f.write(text.stdout)
    return path


def before_tree(ref: str, folder: str) -> str | None:
    """The job's code at the merge base of HEAD and ``ref``, unpacked in ``folder`` (git
    archive: the repository's worktrees are left alone); None when git cannot give it."""
    base = merge_base(ref)
    tree = os.path.join(folder, "before-tree")
    os.makedirs(tree, exist_ok=True)
    archive = subprocess.run(
        [
            "git",
            "archive",
            base,
            "attribution",
            "pipeline",
            "transforms",
            "templates",
            "benchmarks",
        ],
        cwd=REPO,
        capture_output=True,
    )
    if not base or archive.returncode:
        return None
    subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
    return tree


def breakdown_worker(task: dict, tree: str | None) -> dict:
    """benchmarks.worker's task in a process whose imports come from ``tree`` (None: this
    one): the worker's code is this tree's, the job's code the other's."""
    if tree is None:
        return worker(task, timeout=3600)
    code = (
        "import runpy, sys; tree, script, task = sys.argv[1:]; sys.path.insert(0, tree); "
        "sys.argv = [script, task]; runpy.run_path(script, run_name='__main__')"
    )
    script = os.path.join(HERE, "worker.py")
    proc = run_process([sys.executable, "-c", code, tree, script, json.dumps(task)], 3600)
    lines = [line for line in proc["stdout"].splitlines() if line.startswith("RESULT ")]
    if proc["returncode"] or not lines:
        raise RuntimeError(f"breakdown in {tree} failed: {proc['stderr'][-2000:]}")
    return {**json.loads(lines[-1][len("RESULT ") :]), "wall_s": proc["wall_s"]}


# the breakdown's rows: (label, how to compute its seconds from the timed phases)
STEPS = (
    (
        "imports (TensorFlow, Beam, ours)",
        lambda p, k: sum(
            p.get(k(n), 0)
            for n in ("import tensorflow", "import apache_beam", "import pipeline (ours + rest)")
        ),
    ),
    ("launcher: model load", lambda p, k: p.get(k("load model (launcher)"), 0)),
    (
        "launcher: options, listing, graph",
        lambda p, k: (
            p[k("run() total")] - p[k("beam Pipeline.run")] - p.get(k("load model (launcher)"), 0)
        ),
    ),
    ("read + decode", lambda p, k: p.get(k("read + decode"), 0)),
    ("engine (IG, refinement included)", lambda p, k: p.get(k("engine (IG)"), 0)),
    ("faithfulness curves", lambda p, k: p.get(k("faithfulness curves"), 0)),
    # a tree whose AttributeFn computes on its own thread: the engine and the curves overlap
    # the steps below, and the bundle's thread waits for them only where it is ahead
    ("waiting for the model (bundle's thread)", lambda p, k: p.get(k("waiting for the model"), 0)),
    (
        "attribute step, the rest",
        lambda p, k: (
            p.get(k("attribute step (total)"), 0)
            - (
                p[k("waiting for the model")]
                if k("waiting for the model") in p
                else p.get(k("engine (IG)"), 0) + p.get(k("faithfulness curves"), 0)
            )
        ),
    ),
    ("PNG encoding (masks, overlays)", lambda p, k: p.get(k("PNG encoding"), 0)),
    ("statistics + grid", lambda p, k: p.get(k("statistics + grid"), 0)),
    (
        "publish files (masks, overlays)",
        lambda p, k: p.get(k("publish files (masks, overlays)"), 0),
    ),
    (
        "summarize step, the rest",
        lambda p, k: (
            p.get(k("summarize step (total)"), 0)
            - sum(
                p.get(k(n), 0)
                for n in ("PNG encoding", "statistics + grid", "publish files (masks, overlays)")
            )
        ),
    ),
    ("Parquet parts", lambda p, k: p.get(k("Parquet parts (encode + publish)"), 0)),
    ("commit: report", lambda p, k: p.get(k("report (draw + write)"), 0)),
    (
        "commit: the rest (parts, manifest)",
        lambda p, k: (
            p.get(k("commit (parts, manifest, report)"), 0) - p.get(k("report (draw + write)"), 0)
        ),
    ),
    (
        "strategies (fit, describe, fill)",
        lambda p, k: p.get(k("strategies (fit, describe, fill)"), 0),
    ),
    (
        "Beam's own work (bundles, elements, coders)",
        lambda p, k: (
            p[k("beam Pipeline.run")]
            - sum(
                p.get(k(n), 0)
                for n in (
                    "read + decode",
                    "attribute step (total)",
                    "summarize step (total)",
                    "Parquet parts (encode + publish)",
                    "commit (parts, manifest, report)",
                    "strategies (fit, describe, fill)",
                )
            )
        ),
    ),
)


def steps(phases: dict, cpu: bool = False) -> dict[str, float]:
    """The breakdown's rows (wall seconds, or process CPU seconds) from a job's phases."""
    key = (lambda n: f"{n} (cpu)") if cpu else (lambda n: n)
    out = {label: float(f(phases, key)) for label, f in STEPS}
    out["total (process)"] = float(phases[key("in-process total")])
    return out


def breakdown(model: str, folder: str, work: str, tree: str | None) -> dict:
    """Where a job's seconds go, per step, at the defaults and with --faithfulness none: this
    tree and (``tree``) the one before it, alternated, in-process with timers."""
    out = {}
    for name, extra in (("defaults", []), ("faithfulness none", ["--faithfulness", "none"])):
        out[name] = {}
        for side, path in (("before", tree), ("after", None)) if tree else (("after", None),):
            log(f"pipeline: breakdown, {name}, {side}")
            argv = [
                "--input_pattern",
                f"{folder}/*.png",
                "--output_dir",
                os.path.join(work, f"breakdown-{side}-{len(out)}"),
                "--model",
                model,
                "--progress_interval",
                "0",
                *extra,
            ]
            shutil.rmtree(argv[3], ignore_errors=True)
            result = breakdown_worker({"task": "job_breakdown", "pipeline_argv": argv}, path)
            out[name][side] = {"phases": result["phases"], "load_average": os.getloadavg()}
    return out


def efficiency(cache, before, quick):
    out = []
    for name, size, count, per_pass, method, steps, rounds in (
        ("small_cnn", 64, 64, 16, "gausslegendre", 16, 8 if quick else 16),
        ("demo", 32, 24, 12, "gausslegendre", 64, 3 if quick else 6),
        ("mobilenet_v2", 8, 4, 2, TRAP, 51, 2 if quick else 4),
    ):
        log(f"efficiency {name}")
        variants = {"after": None, **({"before": before} if before else {})}
        out.append(
            worker(
                {
                    "task": "efficiency",
                    "model": name,
                    "cache_dir": cache,
                    "count": count,
                    "batch_size": size,
                    "images_per_pass": per_pass,
                    "method": method,
                    "steps": steps,
                    "tolerance": None,
                    "rounds": rounds,
                    "variants": variants,
                },
                timeout=3600,
            )
        )
    return out


def fixed(cache, work, quick):
    info = models.build("small_cnn", cache)
    one = os.path.join(work, "one")
    write_pngs(models.synthetic_images(1, 64, 11), one)
    argv = [
        "--input_pattern",
        f"{one}/*.png",
        "--output_dir",
        os.path.join(work, "one-out"),
        "--model",
        info.path,
        "--progress_interval",
        "0",
    ]
    imports, jobs = [], []
    for i in range(2 if quick else 3):
        log(f"fixed: imports only / 1-image job ({i + 1})")
        imports.append(
            run_process([sys.executable, "-c", "import tensorflow, apache_beam"])["wall_s"]
        )
        jobs.append(run_pipeline(argv)["wall_s"])
    log("fixed: breakdown")
    breakdown = worker(
        {
            "task": "fixed_costs",
            "pipeline_argv": [*argv[:3], os.path.join(work, "one-out-b"), *argv[4:]],
        }
    )
    return {
        "imports_s": imports,
        "job_s": jobs,
        "breakdown": breakdown,
        "overhead_s": paired_overhead(imports, jobs),
    }


def paired_overhead(imports, jobs) -> float:
    """Median over the alternated pairs of (job - imports): each pair saw about the same load."""
    return float(np.median(np.array(jobs) - np.array(imports)))


def pipeline(cache, work, quick, tree=None):
    """Two jobs on the same PNGs, each against the engine doing the same math in one process:
    at the defaults (IG + the deletion/insertion checks) and with --faithfulness none (IG);
    then where a job's seconds go (``breakdown``, on fewer images: this tree's and ``tree``'s
    code, the 'before')."""
    info = models.build("small_cnn", cache)
    count = 400 if quick else 2000
    folder = os.path.join(work, f"png{count}")
    write_pngs(models.synthetic_images(count, 64, 21), folder)
    shares = 200 if quick else 1000
    write_pngs(models.synthetic_images(shares, 64, 21), os.path.join(work, f"png{shares}"))
    task = {
        "task": "engine_rate",
        "model_path": info.path,
        "pattern": f"{folder}/*.png",
        "batch_size": 32,
        "faithfulness": "deletion,insertion",
        **DEFAULTS,
    }
    engines, jobs = [], {}
    log(f"pipeline: engine alone on {count} images (IG, then the checks; IG in 16s)")
    engines.append(worker({**task, "image_batch_size": 16}, timeout=3600))
    for name, extra in (("defaults", []), ("faithfulness none", ["--faithfulness", "none"])):
        log(f"pipeline: python -m pipeline on {count} PNGs ({name})")
        jobs[name] = run_pipeline(
            [
                "--input_pattern",
                f"{folder}/*.png",
                "--output_dir",
                os.path.join(work, f"out2k-{len(jobs)}"),
                "--model",
                info.path,
                "--progress_interval",
                "0",
                *extra,
            ]
        )
        jobs[name].pop("counts", None)
    log("pipeline: engine alone again")
    engines.append(worker(task, timeout=3600))
    ig = float(np.median([e["images_per_s"] for e in engines]))
    checked = float(np.median([e["with_checks_images_per_s"] for e in engines]))
    rates = {name: count / job["wall_s"] for name, job in jobs.items()}
    # CPU seconds (every thread's): the job's whole process against the engine's timed part
    ig_cpu = float(np.median([e["cpu_seconds"] for e in engines]))
    checks_cpu = float(np.median([e["checks_cpu_seconds"] for e in engines]))
    engine_cpu = {"defaults": ig_cpu + checks_cpu, "faithfulness none": ig_cpu}
    shares_folder = os.path.join(work, f"png{shares}")
    return {
        "breakdown_images": shares,
        "breakdown": breakdown(info.path, shares_folder, work, tree),
        "cpu_ratios": {name: engine_cpu[name] / job["cpu_s"] for name, job in jobs.items()},
        "engine_cpu_s": engine_cpu,
        "load_average_end": os.getloadavg(),
        "images": count,
        "engine": engines,
        "jobs": jobs,
        "job_images_per_s": rates,
        "engine_images_per_s": {"defaults": checked, "faithfulness none": ig},
        "ratios": {
            "defaults": rates["defaults"] / checked,
            "faithfulness none": rates["faithfulness none"] / ig,
        },
    }


def precision(cache, quick):
    out = []
    for name, count, size, steps in (("small_cnn", 16, 64, 16), ("mobilenet_v2", 2, 8, 16)):
        log(f"precision {name}")
        out.append(
            worker(
                {
                    "task": "precision",
                    "model": name,
                    "cache_dir": cache,
                    "count": count,
                    "batch_size": size,
                    "method": "gausslegendre",
                    "steps": steps,
                    "rounds": 2 if quick else 3,
                    "precisions": ["float32", "mixed_bfloat16", "mixed_float16"],
                },
                timeout=3600,
            )
        )
    return out


def tutorial(cache, work, quick):
    out = []
    for i, (name, count, points, pipeline_args) in enumerate(
        (
            # the pipeline at its defaults (p95 up to its 1% tolerance) must have equal or lower
            # error: the tutorial at 32 points (p95 1.7% in the error ladder), not 64 (0.5%)
            ("small_cnn", 96 if quick else 800, 32, []),
            # the same math as the tutorial's loop: IG only, without the faithfulness checks
            ("small_cnn", 96 if quick else 800, 32, ["--faithfulness", "none"]),
            (
                "mobilenet_v2",
                4 if quick else 24,
                51,
                ["--method", TRAP, "--steps", "51", "--tolerance", "0", "--faithfulness", "none"],
            ),
        )
    ):
        info = models.build(name, cache)
        folder = os.path.join(work, f"{name}-{i}-tut")
        write_pngs(models.synthetic_images(count, info.image_size[0], 31), folder)
        log(f"tutorial {name}: the tutorial's loop, {count} images, {points} points")
        proc = run_process(
            [
                sys.executable,
                "-m",
                "benchmarks.tutorial_script",
                info.path,
                f"{folder}/*.png",
                str(points),
                os.path.join(work, f"{name}-{i}-npy"),
            ],
            timeout=3600,
        )
        if proc["returncode"]:
            raise RuntimeError(proc["stderr"][-2000:])
        result = json.loads(
            [line for line in proc["stdout"].splitlines() if line.startswith("RESULT ")][-1][7:]
        )
        errors = np.array(result["errors"])
        log(f"tutorial {name}: python -m pipeline")
        job = run_pipeline(
            [
                "--input_pattern",
                f"{folder}/*.png",
                "--output_dir",
                os.path.join(work, f"{name}-{i}-job"),
                "--model",
                info.path,
                "--progress_interval",
                "0",
                *pipeline_args,
            ]
        )
        job.pop("counts", None)
        out.append(
            {
                "model": name,
                "images": count,
                "tutorial_points": points,
                "pipeline_args": pipeline_args or "defaults",
                "tutorial": {
                    "wall_s": proc["wall_s"],
                    "peak_rss_mb": proc["peak_rss_mb"],
                    "traces": result["traces"],
                    "errors": {
                        "median": float(np.median(errors)),
                        "p95": float(np.percentile(errors, 95)),
                    },
                },
                "pipeline": job,
                "speedup": proc["wall_s"] / job["wall_s"],
            }
        )
    return out


# --- report ------------------------------------------------------------------------------
def pct(x):
    return f"{x:.0%}"


def markdown(r: dict) -> str:
    lines = [
        START,
        "## Engine efficiency, fixed costs, precision, whole process (benchmarks.performance)\n",
        f"Last command: `python -m benchmarks.performance{r['args']}`, started "
        f"{r['started']}, took {r['elapsed_s'] / 60:.1f} min (performance.json keeps "
        "each part's latest results; parts not named ran in an earlier run of the same "
        "command); load average at start "
        f"{', '.join(f'{x:.1f}' for x in r['machine']['load_average_at_start'] or ())} on "
        f"{r['machine']['nproc']} cores (a shared machine whose load drifts: only "
        "same-run ratios mean anything). Code: commit "
        f"{r['machine']['git_commit']}.\n",
    ]
    add = lines.append
    targets = []
    if "efficiency" in r:
        add("### Engine vs the bare model at the same call size\n")
        add(
            "Short engine passes alternate with the bare model's forward + input gradient "
            "(`benchmarks.worker` efficiency) in one process; % = the engine's gradient rows/s "
            "over the ceiling's, from the totals of all rounds (median of per-round ratios in "
            "brackets). 'before' is the engine at the `--before` ref, 'after' this tree's.\n"
        )
        add("| model | call size | rule | images per pass | rounds | before | after |")
        add("|---|---|---|---|---|---|---|")
        for e in r["efficiency"]:
            v = e["variants"]

            def cell(k, v=v):
                return (
                    f"{pct(v[k]['fraction'])} ({pct(v[k]['median_ratio'])}; "
                    f"{v[k]['rows_per_s']:.0f} vs {v[k]['ceiling_rows_per_s']:.0f} rows/s)"
                    if k in v
                    else "-"
                )

            short = "GL" if e["method"] == "gausslegendre" else "trapezoid"
            add(
                f"| {e['model']} | {e['batch_size']} | {short} {e['steps']} | "
                f"{e.get('images_per_pass', '-')} | {len(v['after']['ratio'])} | "
                f"{cell('before')} | {cell('after')} |"
            )
            targets.append(
                (
                    f"engine >= 92% of the bare ceiling, {e['model']}",
                    v["after"]["fraction"] >= 0.92,
                    f"{pct(v['after']['fraction'])} (median of rounds "
                    f"{pct(v['after']['median_ratio'])}); before "
                    + (pct(v["before"]["fraction"]) if "before" in v else "-"),
                )
            )
        add("")
    if "fixed" in r:
        f = r["fixed"]
        b = f["breakdown"]
        add("### Fixed costs of a job\n")
        add(
            f"Whole processes, alternated: `python -c 'import tensorflow, apache_beam'` "
            f"{', '.join(f'{x:.1f}' for x in f['imports_s'])} s; `python -m pipeline` on 1 PNG "
            f"(small CNN, defaults, report included) "
            f"{', '.join(f'{x:.1f}' for x in f['job_s'])} s: the job's own cost beyond the two "
            f"imports is **{paired_overhead(f['imports_s'], f['job_s']):.1f} s** (median of "
            "the pairs' differences; the load swings make single pairs unreliable).\n"
        )
        add(
            "Where the 1-image job's seconds go (one process, wall-clock timers on each "
            "phase; `beam Pipeline.run` contains the worker's load and the engine's first "
            "call):\n"
        )
        add("| phase | s |")
        add("|---|---|")
        for k, v in b.items():
            if isinstance(v, (int, float)) and k not in ("process_seconds", "self_peak_rss_mb"):
                add(f"| {k} | {v:.2f} |")
        add("")
        overhead = paired_overhead(f["imports_s"], f["job_s"])
        imports = b["import tensorflow"] + b["import apache_beam"]
        ours = b["in-process total"] - imports
        targets.append(
            (
                "1-image job within 1.0 s of the TF + Beam imports",
                overhead <= 1.0,
                f"whole processes: {overhead:.1f} s beyond the imports (median of "
                f"pairs); in one process: {ours:.1f} s after {imports:.1f} s of imports",
            )
        )
    if "pipeline" in r and "jobs" in r["pipeline"]:
        p = r["pipeline"]
        add("### A 2,000-image job vs the engine\n")
        add(
            f"`python -m pipeline` on {p['images']} PNGs (small CNN 64x64; decode, masks, "
            "overlays, Parquet, manifest and report included, process start to exit) against "
            "the engine doing the same math on the same decoded images in one process (every "
            "image in one attribute() call, then `faithfulness.evaluate` on all rows as the "
            "pipeline runs it; median of a run before and after the jobs). At the defaults the "
            "job also draws the deletion/insertion curves (57 forward rows per row), so its "
            "engine side includes them; with `--faithfulness none` both sides are IG alone.\n"
        )
        cpu = p.get("cpu_ratios", {})
        add(
            "| job | wall s | images/s | p95 error | engine, same math, images/s | ratio | "
            "CPU-seconds ratio |"
        )
        add("|---|---|---|---|---|---|---|")
        for name, job in p["jobs"].items():
            add(
                f"| {name} | {job['wall_s']:.1f} | {p['job_images_per_s'][name]:.1f} | "
                f"{job['errors']['p95']:.2%} | {p['engine_images_per_s'][name]:.1f} | "
                f"**{pct(p['ratios'][name])}** | "
                + (f"{pct(cpu[name])} |" if name in cpu else "- |")
            )
        e = p["engine"][0]
        add(
            f"\nEngine side, first run: IG {e['seconds']:.1f} s ({e['rows']} gradient rows), "
            f"the checks {e['checks_seconds']:.1f} s ({e['forward_rows']} forward rows). "
            "The CPU-seconds ratio is the engine's CPU seconds (every thread, the timed "
            "part) over the job's whole process's (imports included): steadier than wall "
            "seconds when other processes share the cores."
            + (
                f" Load average at the end: {', '.join(f'{x:.1f}' for x in p['load_average_end'])}."
                if "load_average_end" in p
                else ""
            )
            + "\n"
        )
        if "breakdown" in p:
            add(breakdown_table(p["breakdown"], p["breakdown_images"], p.get("before_commit")))
        for name in p["jobs"]:
            targets.append(
                (
                    f"pipeline >= 90% of the engine's images/s, {p['images']} images, {name}",
                    p["ratios"][name] >= 0.9,
                    f"{pct(p['ratios'][name])}: {p['job_images_per_s'][name]:.1f} vs "
                    f"{p['engine_images_per_s'][name]:.1f} images/s",
                )
            )
    if "precision" in r:
        add("### --precision on this CPU\n")
        add(
            "One process per model, the three precisions interleaved (engine, fixed "
            "Gauss-Legendre rule, no refinement); completeness is checked in float64 on the "
            "float32 scores whatever the model computes in.\n"
        )
        add(
            "| model | images | rule | precision | images/s | speed vs float32 | error "
            "median / p95 | attribution correlation with float32 |"
        )
        add("|---|---|---|---|---|---|---|---|")
        for m in r["precision"]:
            base = m["precisions"]["float32"]["images_per_s"]
            for name, d in m["precisions"].items():
                add(
                    f"| {m['model']} | {m['images']} | GL {m['steps']} | {name} | "
                    f"{d['images_per_s']:.2f} | {d['images_per_s'] / base:.2f}x | "
                    f"{d['errors']['median']:.2%} / {d['errors']['p95']:.2%} | "
                    f"{d['correlation_with_first']:.4f} |"
                )
        add("")
    if "tutorial" in r:
        add("### Whole process: the tutorial's loop vs python -m pipeline\n")
        add(
            "Process start to exit for both (imports, model load, decoding, all images; the "
            "pipeline also writes masks, overlays, Parquet, the manifest and the report).\n"
        )
        add(
            "| model | images | tutorial | error med / p95 | pipeline | error med / p95 | speedup |"
        )
        add("|---|---|---|---|---|---|---|")
        for t in r["tutorial"]:
            args = t["pipeline_args"]
            args = "defaults (GL 16->256, tol 0.01)" if args == "defaults" else " ".join(args)
            add(
                f"| {t['model']} | {t['images']} | trapezoid {t['tutorial_points']} points: "
                f"{t['tutorial']['wall_s']:.1f} s | {t['tutorial']['errors']['median']:.2%} / "
                f"{t['tutorial']['errors']['p95']:.2%} | {args}: {t['pipeline']['wall_s']:.1f} s"
                f" | {t['pipeline']['errors']['median']:.2%} / "
                f"{t['pipeline']['errors']['p95']:.2%} | {t['speedup']:.2f}x |"
            )
            lower = t["pipeline"]["errors"]["p95"] <= t["tutorial"]["errors"]["p95"] * 1.001
            given = t["pipeline_args"]
            goal = TUTORIAL_TARGETS.get(
                (t["model"], given if isinstance(given, str) else " ".join(given))
            )
            if goal:
                targets.append(
                    (
                        f"whole process >= {goal:.1f}x the tutorial's loop, {t['model']}, "
                        f"{t['images']} images ({args}), error no higher",
                        t["speedup"] >= goal and lower,
                        f"{t['speedup']:.2f}x; p95 error {t['pipeline']['errors']['p95']:.2%} "
                        f"vs {t['tutorial']['errors']['p95']:.2%}",
                    )
                )
            targets.append(
                (
                    f"whole process vs the tutorial's loop, {t['model']} ({args}): the "
                    "pipeline's p95 error equal or lower",
                    lower,
                    f"{t['pipeline']['errors']['p95']:.2%} vs {t['tutorial']['errors']['p95']:.2%}"
                    f"; {t['speedup']:.2f}x the tutorial's speed, process start to exit",
                )
            )
        add("")
    if targets:
        add("### Targets of the engine and the job\n")

        add("| target | result | numbers |")
        add("|---|---|---|")
        for name, ok, numbers in targets:
            add(f"| {name} | {'PASS' if ok else 'FAIL'} | {numbers} |")
        add("")
    notes = findings(r)
    if notes:
        add("### Findings\n")
        lines.extend(f"- {n}" for n in notes)
        add("")
    add(END)
    return "\n".join(lines)


def breakdown_table(b: dict, images: int, before: str | None = None) -> str:
    """Where a job's seconds go: one row per step, wall and CPU seconds and the share of the
    process, before and after, at the defaults and with --faithfulness none."""
    lines = [
        f"**Where the job's seconds go ({images} images).** "
        "`python -m pipeline` run in one process by `benchmarks.worker job_breakdown` with "
        "wall-clock and process-CPU timers on each step. Where the job computes a batch on "
        "its own thread while the bundle's thread runs the steps downstream (the row 'waiting "
        "for the model' has seconds), the engine and curve rows overlap the others: shares add "
        "up to more than 100% and a step's CPU seconds include the other thread's; where the "
        "steps run one at a time a step's CPU seconds are its own, TensorFlow's threads "
        "included. "
        f"'before' is the job's code at {before or 'the merge base with `--before`'}, 'after' "
        "this tree's, run alternately on the same PNGs. Cells: wall s / CPU s (share of the "
        "process's wall time).\n",
    ]
    lines = ["".join(lines[:2])]
    modes = list(b)
    sides = [side for side in ("before", "after") if side in b[modes[0]]]
    header = [f"{mode}, {side}" for mode in modes for side in sides]
    lines.append("| step | " + " | ".join(header) + " |")
    lines.append("|---|" + "---|" * len(header))
    tables = {
        (mode, side): (steps(b[mode][side]["phases"]), steps(b[mode][side]["phases"], cpu=True))
        for mode in modes
        for side in sides
    }
    for label in [*[label for label, _ in STEPS], "total (process)"]:
        cells = []
        for mode in modes:
            for side in sides:
                wall, cpu = tables[mode, side]
                total = wall["total (process)"]
                cells.append(f"{wall[label]:.2f} / {cpu[label]:.2f} ({wall[label] / total:.0%})")
        name = f"**{label}**" if label == "total (process)" else label
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    loads = ", ".join(
        f"{mode} {side} {b[mode][side]['load_average'][0]:.1f}" for mode in modes for side in sides
    )
    lines.append(f"\nLoad average (1 min) after each run: {loads}.\n")
    return "\n".join(lines)


README_SECTIONS = (
    "Targets of the engine and the job",
    "Whole process",
    "A 2,000-image job",
    "--precision",
)


def readme_tables(r: dict) -> str:
    """README's part of this benchmark: the sections of its RESULTS.md text named in
    README_SECTIONS (targets first), with the run they come from."""
    sections = markdown(r).split("\n### ")[1:]
    chosen = {
        name: "#### " + section.replace(END, "").strip()
        for section in sections
        for name in README_SECTIONS
        if section.startswith(name)
    }
    m = r["machine"]
    head = (
        "Generated from benchmarks/performance.json: each part's latest run (last command "
        f"`python -m benchmarks.performance{r['args']}` on {r['started'][:10]}, "
        f"(commit {m['git_commit']}, load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'] or ())} on {m['nproc']} "
        "cores); every table and the breakdowns: benchmarks/RESULTS.md.\n"
    )
    return head + "\n" + "\n\n".join(chosen[n] for n in README_SECTIONS if n in chosen)


def findings(r: dict) -> list[str]:
    """What the numbers say, and why the missed targets miss."""
    out = []
    for e in r.get("efficiency", []):
        after = e["variants"]["after"]
        if after["fraction"] >= 0.92:
            continue
        per_pass = after["rows"] // max(1, len(after["ratio"]))
        call_ms = 1000 * e["batch_size"] / after["ceiling_rows_per_s"]
        out.append(
            f"{e['model']}: a pass of {e.get('images_per_pass', '?')} images is {per_pass} "
            f"gradient rows in calls of {e['batch_size']} (a bare call of that size: "
            f"{call_ms:.1f} ms) plus one forward call of one row per image and one per distinct "
            "baseline. What the engine does beyond the bare model is IG's own work: each row's "
            "point baseline + alpha (image - baseline) is gathered and built on the device, "
            "and its weighted gradient is added to its job's float64 integral (measured "
            "separately at about 1-2 ms a call at 64x64-112x112, memory-bound), plus F(x) "
            "and F(baseline) for the completeness check. A float32 sum inside the call was "
            "no faster within the noise, and would give up the float64 integral."
        )
    f = r.get("fixed")
    if f:
        b = f["breakdown"]
        imports = b["import tensorflow"] + b["import apache_beam"]
        ours = b["in-process total"] - imports
        beam_rest = (
            b["beam Pipeline.run (whole job graph)"]
            - b["engine attribute, first call (traces)"]
            - b.get("load_model (worker)", 0)
            - b.get("commit (publish parts, manifest, report)", 0)
        )
        out.append(
            f"fixed costs: in the breakdown run the two imports took {imports:.1f} s and "
            f"everything after them {ours:.1f} s. Of that: importing our modules "
            f"{b['import pipeline (ours + rest)']:.2f} s, the launcher's model load "
            f"{b['load_model (launcher)']:.2f} s (the in-process worker reuses it: "
            f"{b.get('load_model (worker)', 0):.3f} s), the engine's first call with its two "
            f"traces {b['engine attribute, first call (traces)']:.2f} s, the commit step "
            f"{b.get('commit (publish parts, manifest, report)', 0):.2f} s of which the report "
            f"{b['report (draw + write)']:.2f} s (matplotlib charts), the rest of Beam's run "
            f"{beam_rest:.2f} s. What took it here from 2.5 s to about 1 s: gc.freeze() after "
            "the imports and after the worker's model load (each full collection re-walked "
            "TensorFlow's million objects, 0.2 s each), tracing without AutoGraph (first call "
            "0.62 -> 0.29 s), scikit-image/scipy imported only when XRAI runs (0.18 s), report "
            "charts drawn with fixed margins instead of constrained layout."
        )
    tutorial = {
        tuple(t["pipeline_args"]) if t["pipeline_args"] != "defaults" else (): t
        for t in r.get("tutorial", [])
    }
    if () in tutorial and ("--faithfulness", "none") in tutorial:
        out.append(
            "whole process, small CNN: at the defaults the job also runs the faithfulness "
            "checks (57 forward rows per row, more than IG's own work on this model) and "
            "writes masks, overlays, Parquet and the report, which the tutorial's loop does "
            f"not: {tutorial[()]['speedup']:.2f}x the tutorial's speed at lower error. With "
            "`--faithfulness none` (the tutorial's math) it is "
            f"{tutorial[('--faithfulness', 'none')]['speedup']:.2f}x; 96 images are few "
            "enough that the TensorFlow and Beam imports are a large share of both processes."
        )
    p = r.get("pipeline")
    if p and "ratios" in p:
        e = p["engine"][0]
        if "breakdown" in p:
            b = p["breakdown"]["faithfulness none"]["after"]["phases"]
            wall = steps(b)
            engine = "engine (IG, refinement included)"
            rest = {k: v for k, v in wall.items() if k not in (engine, "total (process)")}
            top = sorted(rest.items(), key=lambda kv: -kv[1])[:4]
            out.append(
                f"where the rest goes ({p['breakdown_images']} images, --faithfulness none, "
                f"this tree): the engine {wall[engine]:.1f} s of {wall['total (process)']:.1f} s; "
                "the largest other steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in top) + "."
            )
        sides = p.get("breakdown", {}).get("faithfulness none", {})
        if "before" in sides:
            cpu = {
                mode: {
                    side: steps(d["phases"], cpu=True) for side, d in p["breakdown"][mode].items()
                }
                for mode in p["breakdown"]
            }
            out.append(
                "before -> after, the job's whole process in CPU seconds ("
                + "; ".join(
                    f"{mode}: {c['before']['total (process)']:.1f} -> "
                    f"{c['after']['total (process)']:.1f}, of which not the engine or the "
                    f"curves {_outside(c['before']):.1f} -> {_outside(c['after']):.1f}"
                    for mode, c in cpu.items()
                )
                + "): decoding without the same-size resize and one mask computation for "
                "the mask and the overlay; the rest of the job's own work is its start "
                "(imports, graph, report) and per-image work no step dominates."
            )
        batched = p["engine"][0].get("batched")
        if batched:
            e = p["engine"][0]
            out.append(
                "refinement per batch: the engine alone with every image in one call spent "
                f"{e['rows']} gradient rows in {e['model_calls']} model calls "
                f"({e['seconds']:.1f} s, {e['cpu_seconds']:.1f} CPU s); in the job's "
                f"{batched['image_batch_size']}-image calls {batched['rows']} rows in "
                f"{batched['model_calls']} calls ({batched['seconds']:.1f} s, "
                f"{batched['cpu_seconds']:.1f} CPU s; attributions within "
                f"{batched['max_difference']:.1e} of the one-call ones). The short refinement "
                "calls cost "
                f"{batched['model_calls'] / e['model_calls'] - 1:.0%} more calls, so carrying "
                "unconverged rows into the next batch would win at most that."
            )
        out.append(
            f"{p['images']} images: at the defaults most of the work is the faithfulness checks "
            f"({e['forward_rows']} forward rows against {e['rows']} gradient rows; engine "
            f"side {e['checks_seconds']:.1f} s of checks after {e['seconds']:.1f} s of IG). "
            "What is left beside the engine is the job's own work per image (decode, masks "
            "and overlays as PNGs, statistics, Beam's per-element work) and its start "
            "(imports, model load, graph, report)."
        )
        if f:
            imports = float(np.median(f["imports_s"]))
            ig = p["images"] / p["engine_images_per_s"]["faithfulness none"]
            out.append(
                f"{p['images']} images, bound: the process that only imports TensorFlow and Beam "
                "takes "
                f"{imports:.1f} s here, so a job whose engine work takes {ig:.1f} s (IG alone) "
                f"cannot pass {ig / (ig + imports):.0%} of the engine's rate however little it "
                "does per image; the ratio is measured process start to exit against an engine "
                "timed without its imports."
            )
    return out


def _outside(rows: dict) -> float:
    """A breakdown's seconds outside the engine and the faithfulness curves."""
    inside = ("engine (IG, refinement included)", "faithfulness curves")
    return rows["total (process)"] - sum(rows[k] for k in inside)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.performance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--before",
        default="main",
        help="git ref whose merge base holds the 'before' engine ('' skips it)",
    )
    parser.add_argument(
        "--before_job",
        default=None,
        help="git ref whose merge base holds the 'before' job of the pipeline part's "
        "breakdown (default: --before)",
    )
    parser.add_argument(
        "--cache_dir", default=os.path.join(tempfile.gettempdir(), "beam-ig-bench-cache")
    )
    parser.add_argument("--output_dir", default=HERE)
    parser.add_argument(
        "--from_json", action="store_true", help="only re-render the section from performance.json"
    )
    args = parser.parse_args(argv)
    path = os.path.join(args.output_dir, "performance.json")
    if args.from_json:
        with open(path) as f:
            results = json.load(f)
    else:
        started = time.perf_counter()
        previous = {}
        if os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
        results = {
            "args": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
        }
        work = tempfile.mkdtemp(prefix="ig-perf-")
        try:
            before = before_engine(args.before, work) if args.before else None
            for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
                if part == "efficiency":
                    results[part] = efficiency(args.cache_dir, before, args.quick)
                elif part == "pipeline":
                    ref = args.before if args.before_job is None else args.before_job
                    tree = before_tree(ref, work) if ref else None
                    results[part] = pipeline(args.cache_dir, work, args.quick, tree)
                    results[part]["before_commit"] = merge_base(ref)[:7] if tree else None
                elif part in ("fixed", "tutorial"):
                    results[part] = globals()[part](args.cache_dir, work, args.quick)
                elif part == "precision":
                    results[part] = precision(args.cache_dir, args.quick)
                else:
                    raise SystemExit(f"unknown part {part!r}: one of {PARTS}")
                merged = {**previous, **results}
                merged["elapsed_s"] = time.perf_counter() - started
                with open(path, "w") as f:
                    json.dump(merged, f, indent=1, default=float)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results = {**previous, **results, "elapsed_s": time.perf_counter() - started}
        with open(path, "w") as f:
            json.dump(results, f, indent=1, default=float)
    text = markdown(results)
    body = text[len(START) : -len(END)]
    replace_between(os.path.join(args.output_dir, "RESULTS.md"), START, END, body)
    if os.path.abspath(args.output_dir) == os.path.abspath(HERE):
        replace_between(README, README_START, README_END, readme_tables(results))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
