"""Issue 5 benchmark: the TF tutorial's IG vs Captum-style batching vs our engine vs the whole
pipeline, at equal accuracy, on the same machine, models and images.

    .venv/bin/python -m benchmarks.run            # full (make bench), ~15 min on 2 cores
    .venv/bin/python -m benchmarks.run --quick    # a few minutes, fewer images and repeats

Every configuration runs in its own subprocess (benchmarks/worker.py) so its peak RSS
(``ru_maxrss`` from ``os.wait4``) is its own. Writes benchmarks/RESULTS.md and
benchmarks/results.json and prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(REPO, "benchmarks")
LADDER = (4, 8, 16, 32, 64, 128, 256)
CALL_SIZES = (8, 16, 32, 64)
LEVELS = (0.01, 0.05)
TRAP, GL = "riemann_trapezoid", "gausslegendre"
ENGINE_DEFAULT = {"method": GL, "steps": 16, "tolerance": 0.01, "max_steps": 256}

BLAS1 = {"OPENBLAS_NUM_THREADS": "1"}
STAND_IN = "`demo.model` was not available when this ran"
ADAPTIVE_TRAPEZOID = {"method": TRAP, "steps": 17, "max_steps": 257}  # 17->33->...->257, nested

PROFILES = {
    "full": {
        "small_cnn": {"count": 16, "pipeline_count": 96},
        "demo": {"count": 12, "pipeline_count": 32},
        "mobilenet_v2": {"count": 4},
        "repeats": 3,
        "min_seconds": 3.0,
        "pipeline_repeats": 3,
        "windows": 3,
        "ladder": LADDER,
        "levels": LEVELS,
        "memory_steps": 2000,
        "pipeline_fixed_cost": True,
        "profile": True,
    },
    "quick": {
        "small_cnn": {"count": 8, "pipeline_count": 32},
        "demo": {"count": 8, "pipeline_count": 16},
        "mobilenet_v2": {"count": 2},
        "repeats": 3,
        "min_seconds": 1.5,
        "pipeline_repeats": 1,
        "windows": 2,
        "ladder": LADDER,
        "levels": (0.01,),
        "memory_steps": None,
        "pipeline_fixed_cost": False,
        "profile": False,
    },
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- subprocesses ------------------------------------------------------------------------------
def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_process(cmd: list[str], timeout: float = 900, env: dict | None = None) -> dict:
    """Run ``cmd``; return wall seconds, exit code, peak RSS (MB, from wait4), output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=_env(env))
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return {
        "wall_s": wall,
        "returncode": proc.returncode,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,
        "stdout": stdout,
        "stderr": stderr,
    }


def worker(task: dict, timeout: float = 900, env: dict | None = None) -> dict:
    proc = run_process([sys.executable, "-m", "benchmarks.worker", json.dumps(task)], timeout, env)
    lines = [line for line in proc["stdout"].splitlines() if line.startswith("RESULT ")]
    if proc["returncode"] != 0 or not lines:
        tail = "\n".join(proc["stderr"].splitlines()[-25:])
        raise RuntimeError(f"worker {task['task']} failed ({proc['returncode']}):\n{tail}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["peak_rss_mb"] = proc["peak_rss_mb"]
    result["wall_s"] = proc["wall_s"]
    return result


# --- choices -------------------------------------------------------------------------------
def smallest_steps(ladder: dict, level: float) -> tuple[int, bool]:
    """Smallest steps whose median and p95 relative error are <= level (reached?)."""
    for steps in sorted(ladder, key=int):
        if ladder[steps]["median"] <= level and ladder[steps]["p95"] <= level:
            return int(steps), True
    return max(int(s) for s in ladder), False


def configurations(setting: dict, levels) -> list[dict]:
    """The distinct method configurations to time for one model."""
    configs, seen = [], set()

    def add(kind, method, steps, tolerance=None, max_steps=None, level=None, label=None):
        key = (kind, method, steps, tolerance, max_steps)
        if key in seen:
            for c in configs:
                if c["key"] == key and level is not None and level not in c["levels"]:
                    c["levels"].append(level)
            return
        seen.add(key)
        configs.append(
            {
                "key": key,
                "kind": kind,
                "method": method,
                "steps": steps,
                "tolerance": tolerance,
                "max_steps": max_steps,
                "levels": [] if level is None else [level],
                "label": label,
            }
        )

    for i, level in enumerate(levels):
        trap, gl = setting["steps"][str(level)][TRAP], setting["steps"][str(level)][GL]
        add("tutorial", TRAP, trap, level=level, label="tutorial (a)")
        if i == 0:  # Captum-style at the tightest level only (time budget)
            add("captum", TRAP, trap, level=level, label="captum-style (b)")
            add("captum", GL, gl, level=level, label="captum-style (b)")
        add("engine", TRAP, trap, level=level, label="engine, fixed (c)")
        add("engine", GL, gl, level=level, label="engine, fixed (c)")
        for adaptive in (ENGINE_DEFAULT, ADAPTIVE_TRAPEZOID):
            add(
                "engine",
                adaptive["method"],
                adaptive["steps"],
                level,
                adaptive["max_steps"],
                level=level,
                label="engine, adaptive (c)",
            )
    return configs


# --- pipeline ------------------------------------------------------------------------------
def write_pngs(images: np.ndarray, folder: str) -> None:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        pixels = np.round(image * 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"img_{i:04d}.png"))


def pipeline_argv(
    input_dir: str, output_dir: str, model_path: str, batch_size: int, settings: dict
) -> list[str]:
    tolerance = settings["tolerance"] or 0
    return [
        "--input_pattern",
        f"{input_dir}/*.png",
        "--output_dir",
        output_dir,
        "--model",
        model_path,
        "--method",
        settings["method"],
        "--steps",
        str(settings["steps"]),
        "--tolerance",
        str(tolerance),
        "--max_steps",
        str(settings["max_steps"]),
        "--batch_size",
        str(batch_size),
        "--progress_interval",
        "0",
    ]


def run_pipeline(argv: list[str], env: dict | None = None) -> dict:
    output_dir = argv[argv.index("--output_dir") + 1]
    shutil.rmtree(output_dir, ignore_errors=True)
    proc = run_process([sys.executable, "-m", "pipeline", *argv], timeout=1200, env=env)
    if proc["returncode"] != 0:
        raise RuntimeError(f"pipeline failed ({proc['returncode']}): {proc['stderr'][-2000:]}")
    import pyarrow.parquet as pq

    with open(os.path.join(output_dir, "manifest.json")) as f:
        manifest = json.load(f)
    files = glob.glob(os.path.join(output_dir, "summaries", "*.parquet"))
    table = (
        pq.read_table(files, columns=["relative_completeness_error", "gradient_evaluations"])
        if len(files) == 1
        else None
    )
    if table is None:
        import pyarrow as pa

        table = pa.concat_tables(
            [
                pq.read_table(p, columns=["relative_completeness_error", "gradient_evaluations"])
                for p in files
            ]
        )
    errors = np.array(table.column("relative_completeness_error").to_pylist())
    evaluations = np.array(table.column("gradient_evaluations").to_pylist())
    return {
        "wall_s": proc["wall_s"],
        "peak_rss_mb": proc["peak_rss_mb"],
        "counts": manifest["counts"],
        "model_loads": manifest["metrics"].get("model_loads"),
        "errors": {
            "median": float(np.median(errors)),
            "p95": float(np.percentile(errors, 95)),
            "max": float(errors.max()),
        },
        "evaluations_per_image": float(evaluations.mean()),
    }


# --- machine -------------------------------------------------------------------------------
def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tensorflow as tf, keras, apache_beam, numpy; "
            "print(tf.__version__, keras.__version__, apache_beam.__version__, numpy.__version__)",
        ],
        capture_output=True,
        text=True,
        env=_env(),
    ).stdout.split()
    names = ("tensorflow", "keras", "apache_beam", "numpy")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = f.readline().split()[1]
            memory = round(int(memory) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    dirty = [
        line[3:]
        for line in subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.splitlines()
    ]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": memory,
        "git_commit": git,
        "git_modified_files": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load,
        **dict(zip(names, versions)),
    }


# --- the benchmark -------------------------------------------------------------------------
def bench_model(name: str, profile: dict, work: str, cache_dir: str) -> dict:
    spec = profile[name]
    data = os.path.join(work, f"{name}.npz")
    big = name == "mobilenet_v2"
    task = {
        "task": "setup",
        "model": name,
        "cache_dir": cache_dir,
        "data": data,
        "count": spec["count"],
        "pipeline_count": spec.get("pipeline_count", 0),
        "sizes": list(CALL_SIZES),
        "windows": profile["windows"],
        "rows_per_window": 64 if big else 768,
        "ladder": [] if big else list(profile["ladder"]),
        "methods": [TRAP, GL],
        "stop_at": min(profile["levels"]),
    }
    log(f"{name}: setup (model, images, ceiling{'' if big else ', error ladder'})")
    setup = worker(task, timeout=1800)
    info = setup["prepare"]["info"]
    batch = setup["best_batch_size"]
    result = {
        "model": info,
        "prepare": setup["prepare"],
        "ceiling": setup["ceiling"],
        "best_batch_size": batch,
        "ceiling_rows_per_s": setup["ceiling"][str(batch)]["rows_per_s"],
        "ladder": setup.get("ladder"),
        "runs": [],
    }
    base = {
        "task": "method",
        "model_path": info["path"],
        "data": data,
        "repeats": profile["repeats"],
        "min_seconds": profile["min_seconds"],
        "max_repeats": 9,
        "batch_size": batch,
        "ceiling_size": batch,
        "ceiling_rows": 32 if big else 512,
    }
    if big:
        # same rule and steps as the tutorial's defaults: trapezoid, m_steps=50 (51 points)
        for kind in ("tutorial", "engine"):
            log(f"{name}: {kind} trapezoid 51 points")
            run = worker({**base, "kind": kind, "method": TRAP, "steps": 51, "tolerance": None})
            run.update(
                kind=kind,
                method=TRAP,
                steps=51,
                tolerance=None,
                levels=[],
                label="tutorial (a)" if kind == "tutorial" else "engine, fixed (c)",
            )
            result["runs"].append(run)
        steps = profile["memory_steps"]
        memory = []
        if steps:
            log(f"{name}: engine {steps} steps, one image (memory)")
            run = worker(
                {
                    **base,
                    "kind": "engine",
                    "method": GL,
                    "steps": steps,
                    "tolerance": None,
                    "repeats": 1,
                    "count": 1,
                    "batch_size": 32,
                    "ceiling_size": None,
                },
                timeout=1800,
            )
            run.update(kind="engine", method=GL, steps=steps, batch_size=32)
            memory.append(run)
        result["memory"] = memory
        return result

    result["steps"] = {
        str(level): {m: smallest_steps(result["ladder"][m], level)[0] for m in (TRAP, GL)}
        for level in profile["levels"]
    }
    result["reached"] = {
        str(level): {m: smallest_steps(result["ladder"][m], level)[1] for m in (TRAP, GL)}
        for level in profile["levels"]
    }
    for config in configurations(result, profile["levels"]):
        config.pop("key")
        log(
            f"{name}: {config['kind']} {config['method']} steps={config['steps']} "
            f"tolerance={config['tolerance']} {config.get('env') or ''}"
        )
        run = worker(
            {
                **base,
                **{k: config[k] for k in ("kind", "method", "steps")},
                "tolerance": config["tolerance"],
                "max_steps": config["max_steps"] or 256,
            },
            env=config.get("env"),
        )
        run.update(config)
        result["runs"].append(run)

    # (d) the whole pipeline vs the engine, same images, same settings (engine defaults)
    folder = os.path.join(work, f"{name}-png")
    with np.load(data) as d:
        write_pngs(d["pipe_images"], folder)
        one = os.path.join(work, f"{name}-png-one")
        write_pngs(d["pipe_images"][:1], one)
        count = len(d["pipe_images"])
    log(f"{name}: engine on the pipeline's {count} images")
    engine = worker({**base, "kind": "engine", **ENGINE_DEFAULT, "images": "pipe"})
    engine.update(kind="engine", **ENGINE_DEFAULT)
    argv = pipeline_argv(
        folder, os.path.join(work, f"{name}-out"), info["path"], batch, ENGINE_DEFAULT
    )
    runs = []
    for i in range(profile["pipeline_repeats"]):
        log(f"{name}: python -m pipeline on {count} PNGs ({i + 1}/{profile['pipeline_repeats']})")
        runs.append(run_pipeline(argv))
    walls = [r["wall_s"] for r in runs]
    pipeline = {
        "images": count,
        "argv": argv,
        "runs": runs,
        "wall_s": float(np.median(walls)),
        "images_per_s": count / float(np.median(walls)),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "errors": runs[0]["errors"],
        "counts": runs[0]["counts"],
        "model_loads": runs[0]["model_loads"],
        "evaluations_per_image": runs[0]["evaluations_per_image"],
        "engine": engine,
    }
    if profile["pipeline_fixed_cost"]:
        log(f"{name}: python -m pipeline on 1 PNG (fixed cost)")
        one_run = run_pipeline(
            pipeline_argv(
                one, os.path.join(work, f"{name}-out-one"), info["path"], batch, ENGINE_DEFAULT
            )
        )
        pipeline["one_image_wall_s"] = one_run["wall_s"]
        if pipeline["wall_s"] > one_run["wall_s"]:
            pipeline["marginal_images_per_s"] = (count - 1) / (
                pipeline["wall_s"] - one_run["wall_s"]
            )
    result["pipeline"] = pipeline
    if profile["profile"] and name == "demo":
        result["engine_vs_captum"] = engine_vs_captum(name, base)
    if profile["profile"] and name == "small_cnn":
        log(f"{name}: cProfile of the engine and of the pipeline")
        result["profile"] = worker(
            {
                "task": "profile",
                "model_path": info["path"],
                "data": data,
                "batch_size": batch,
                "pipeline_argv": pipeline_argv(
                    folder,
                    os.path.join(work, f"{name}-out-prof"),
                    info["path"],
                    batch,
                    ENGINE_DEFAULT,
                ),
            }
        )
    return result


AB_VARIANTS = (("engine", None), ("engine", BLAS1), ("captum", None))


def engine_vs_captum(name: str, base: dict, rounds: int = 3) -> dict:
    """The engine, the engine with single-threaded OpenBLAS, and the Captum-style loop at the
    same rule, steps and call size, each in its own process, interleaved round by round so
    the machine's drifting load hits all three alike."""
    runs = {f"{kind}{'+blas1' if env else ''}": [] for kind, env in AB_VARIANTS}
    for i in range(rounds):
        for kind, env in AB_VARIANTS:
            label = f"{kind}{'+blas1' if env else ''}"
            log(f"{name}: A/B round {i + 1}/{rounds}: {label} GL 64")
            runs[label].append(
                worker(
                    {
                        **base,
                        "kind": kind,
                        "method": GL,
                        "steps": 64,
                        "tolerance": None,
                        "repeats": 3,
                        "min_seconds": 0,
                    },
                    env=env,
                )
            )
    out = {
        "method": GL,
        "steps": 64,
        "batch_size": base["batch_size"],
        "rounds": rounds,
        "variants": {},
    }
    for label, rs in runs.items():
        rates = [rows_per_s(r) for r in rs]
        fractions = [rows_per_s(r) / r["ceiling_now_rows_per_s"] for r in rs]
        out["variants"][label] = {
            "rows_per_s": float(np.median(rates)),
            "all": rates,
            "ceiling_fraction": float(np.median(fractions)),
            "images": rs[0]["images"],
        }
    return out


def rows_per_s(run: dict) -> float:
    return run["images_per_s"] * run["evaluations_per_image"]


def ceiling_fraction(run: dict, fallback: float) -> float:
    """Gradient rows/s over the bare model's rows/s measured in the same process right after
    each timed pass (the shared machine's load drifts between configurations)."""
    return rows_per_s(run) / (run.get("ceiling_now_rows_per_s") or fallback)


def load_corrected(a: dict, b: dict) -> float:
    """a's speed over b's, each divided by its own contemporaneous ceiling."""
    if a.get("ceiling_now_rows_per_s") and b.get("ceiling_now_rows_per_s"):
        return (a["images_per_s"] / a["ceiling_now_rows_per_s"]) / (
            b["images_per_s"] / b["ceiling_now_rows_per_s"]
        )
    return float("nan")


def rss(run: dict) -> float:
    return run.get("method_peak_rss_mb") or run["peak_rss_mb"]


def targets(results: dict, profile: dict) -> list[dict]:
    """The issue's targets, pass/fail with the numbers."""
    out = []
    for name in ("small_cnn", "demo"):
        r = results["models"].get(name)
        if not r:
            continue
        for level in profile["levels"]:

            def meets(run, level=level):
                return run["errors"]["p95"] <= level and run["errors"]["median"] <= level

            at = [run for run in r["runs"] if level in run["levels"]]
            tutorial = [x for x in at if x["kind"] == "tutorial"]
            engines = [x for x in at if x["kind"] == "engine" and meets(x) and not x.get("env")]
            if not tutorial or not engines:
                continue
            t = tutorial[0]
            e = max(engines, key=lambda x: x["images_per_s"])
            ratio = e["images_per_s"] / t["images_per_s"]
            # a tutorial short of the level at the ladder's top would need more points:
            # the ratio is then a lower bound
            bound = (
                ""
                if meets(t)
                else (
                    f" (tutorial p95 above {level:.0%} even at "
                    f"{t['steps']} points: the ratio is a lower bound)"
                )
            )
            out.append(
                {
                    "target": f"engine >= 3x tutorial images/s at equal p95 error "
                    f"(<= {level:.0%}), {name}",
                    "pass": ratio >= 3,
                    "numbers": f"{ratio:.2f}x: engine {describe(e)} {e['images_per_s']:.1f} img/s "
                    f"(p95 {e['errors']['p95']:.2%}) vs tutorial trapezoid "
                    f"{t['steps']} pts {t['images_per_s']:.1f} img/s "
                    f"(p95 {t['errors']['p95']:.2%}); load-corrected "
                    f"{load_corrected(e, t):.2f}x{bound}",
                }
            )
    big = results["models"].get("mobilenet_v2")
    if big:
        t = next(x for x in big["runs"] if x["kind"] == "tutorial")
        e = next(x for x in big["runs"] if x["kind"] == "engine")
        ratio = e["images_per_s"] / t["images_per_s"]
        out.append(
            {
                "target": "engine >= 1.2x tutorial images/s, 224x224 MobileNetV2, same rule "
                "and steps (trapezoid, 51 points)",
                "pass": ratio >= 1.2,
                "numbers": f"{ratio:.2f}x: engine {e['images_per_s']:.3f} img/s vs tutorial "
                f"{t['images_per_s']:.3f} img/s ({t['images']} images, "
                f"tutorial traces in timed pass: "
                f"{np.median(t['traces_in_timed_pass']):.0f}); load-corrected "
                f"{load_corrected(e, t):.2f}x",
            }
        )
        for m in big.get("memory", []):
            out.append(
                {
                    "target": f"{m['steps']} steps at 224x224 under 2 GB peak RSS",
                    "pass": m["peak_rss_mb"] < 2048,
                    "numbers": f"{m['peak_rss_mb']:.0f} MB peak RSS (engine, "
                    f"{m['method']}, batch_size {m['batch_size']}, "
                    f"{m['seconds']:.0f} s)",
                }
            )
    for name in ("small_cnn", "demo"):
        r = results["models"].get(name)
        if not r or "pipeline" not in r:
            continue
        p = r["pipeline"]
        ratio = p["images_per_s"] / p["engine"]["images_per_s"]
        extra = ""
        if "marginal_images_per_s" in p:
            extra = (
                f"; 1-image job {p['one_image_wall_s']:.1f} s, marginal "
                f"{p['marginal_images_per_s']:.1f} img/s = "
                f"{p['marginal_images_per_s'] / p['engine']['images_per_s']:.0%} of engine"
            )
        out.append(
            {
                "target": f"pipeline end to end >= 85% of engine images/s, {name}",
                "pass": ratio >= 0.85,
                "numbers": f"{ratio:.0%}: pipeline {p['images_per_s']:.2f} img/s "
                f"({p['images']} PNGs, job {p['wall_s']:.1f} s) vs engine "
                f"{p['engine']['images_per_s']:.1f} img/s{extra}",
            }
        )
    return out


def describe(run: dict) -> str:
    short = {TRAP: "trapezoid", GL: "GL"}[run["method"]]
    if run.get("tolerance"):
        return f"{short} {run['steps']}->{run.get('max_steps')} tol {run['tolerance']:g}"
    return f"{short} {run['steps']}"


# --- report --------------------------------------------------------------------------------
def notes(results: dict) -> list[str]:
    """Findings computed from the numbers (the profile's are in their own section)."""
    out = []
    demo = results["models"].get("demo", {})
    ab = demo.get("engine_vs_captum")
    if ab:
        v = ab["variants"]
        out.append(
            f"demo: per gradient row the engine reaches {v['engine']['ceiling_fraction']:.0%} "
            f"of the bare model's rows/s where the Captum-style loop reaches "
            f"{v['captum']['ceiling_fraction']:.0%} at the same rule, steps and call size "
            f"({v['engine']['rows_per_s']:.0f} vs {v['captum']['rows_per_s']:.0f} rows/s). "
            "Before issue 13 (commit e4c0365 and earlier) the engine did per call on the host, "
            "serially with the model: a fancy-index copy "
            "of the full image and baseline for every row, their numpy->tensor conversion, "
            "`.numpy()` of the whole gradient batch, and the weighted sum of the batch's "
            "gradients per job segment (a float32 `np.einsum` loop, kept off BLAS: a "
            "`np.tensordot` there let OpenBLAS's threads spin against TensorFlow's on 2 "
            "cores); the Captum-style loop passes the images once, gathers rows in the graph "
            "and accumulates weighted gradients in the graph (`unsorted_segment_sum`). With "
            f"OPENBLAS_NUM_THREADS=1 the engine reaches {v['engine+blas1']['rows_per_s']:.0f} "
            "rows/s. Since issue 13 the engine also gathers and accumulates in the graph "
            "(before/after: the Issue 13 section, benchmarks.performance)."
        )
    big = results["models"].get("mobilenet_v2")
    tutorial = next((x for x in (big or {}).get("runs", []) if x["kind"] == "tutorial"), None)
    if tutorial and tutorial.get("ceiling_now_rows_per_s"):
        traces = float(np.median(tutorial["traces_in_timed_pass"]))
        compute = (
            tutorial["images"]
            * tutorial["evaluations_per_image"]
            / tutorial["ceiling_now_rows_per_s"]
        )
        if traces:
            out.append(
                f"mobilenet_v2: the tutorial's timed pass ({tutorial['seconds']:.1f} s for "
                f"{tutorial['images']} images of {tutorial['images']} different classes) "
                f"holds {traces:.0f} retraces (one per new class and per short last batch); "
                f"its gradient rows alone would take ~{compute:.1f} s at the bare model's "
                f"rate, so each trace costs ~{(tutorial['seconds'] - compute) / traces:.1f} s. "
                "The per-row work is the same as the engine's: on a long run over few classes "
                "(warm trace cache) the 224x224 gap at equal rule and steps shrinks to the "
                "per-row efficiency gap."
            )
    if big:
        rows = [
            (
                r.get("batch_size") or (32 if r["kind"] == "tutorial" else big["best_batch_size"]),
                rss(r),
                r["kind"],
            )
            for r in big["runs"] + big.get("memory", [])
        ]
        out.append(
            "mobilenet_v2: peak RSS is set by the call size, not the steps: "
            + "; ".join(f"{kind} at {size} rows/call {mb:.0f} MB" for size, mb, kind in rows)
            + ". Under 2 GiB: "
            + (
                ", ".join(
                    str(size)
                    for size in sorted({x[0] for x in rows})
                    if all(mb < 2048 for z, mb, _ in rows if z == size)
                )
                or "none"
            )
            + " rows per call."
        )
    for name in ("small_cnn", "demo"):
        r = results["models"].get(name)
        if not r:
            continue
        gl = [
            x
            for x in r["runs"]
            if x["kind"] == "engine" and x["method"] == GL and x.get("tolerance") == 0.01
        ]
        tr = [
            x
            for x in r["runs"]
            if x["kind"] == "engine" and x["method"] == TRAP and x.get("tolerance") == 0.01
        ]
        if gl and tr:
            out.append(
                f"{name}: adaptive GL 16->256 spent {gl[0]['evaluations_per_image']:.0f} "
                f"gradient rows per image for p95 {gl[0]['errors']['p95']:.2%}; adaptive "
                f"trapezoid 17->257 (nested: refinement reuses every point) spent "
                f"{tr[0]['evaluations_per_image']:.0f} for p95 {tr[0]['errors']['p95']:.2%}. "
                "GL refinement does not nest (16+32+64+... all evaluated)."
            )
    return out


def n_images(results: dict) -> int:
    return results["models"]["small_cnn"]["pipeline"]["images"]


def fmt_err(e: dict) -> str:
    return f"{e['median']:.2%} / {e['p95']:.2%}"


def summary(results: dict) -> list[str]:
    """One row per model: images/s of each method at its cheapest setting within the
    tightest level (p95 and median), or, for the 224x224 model, at the tutorial's rule and
    steps."""
    level = min(results["levels"])
    lines = [
        "| model | (a) tutorial | (b) Captum-style | (c) engine, fixed steps | "
        "(c) engine, adaptive default | (d) pipeline, end to end | ceiling rows/s |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(run):
        if not run:
            return "-"
        return f"{run['images_per_s']:.2f} img/s ({describe(run)}, p95 {run['errors']['p95']:.2%})"

    def best(runs):
        """The fastest run within the level, else the most accurate one."""
        within = [x for x in runs if max(x["errors"]["p95"], x["errors"]["median"]) <= level]
        if within:
            return max(within, key=lambda x: x["images_per_s"])
        return min(runs, key=lambda x: x["errors"]["p95"]) if runs else None

    for name, r in results["models"].items():
        if name == "mobilenet_v2":
            runs = r["runs"]
            title = f"{name} (same rule and steps)"
        else:
            runs = [x for x in r["runs"] if level in x.get("levels", []) and not x.get("env")]
            title = f"{name} (p95 <= {level:.0%})"
        tutorial = best([x for x in runs if x["kind"] == "tutorial"])
        captum = best([x for x in runs if x["kind"] == "captum"])
        fixed = best([x for x in runs if x["kind"] == "engine" and not x.get("tolerance")])
        adaptive = next(
            (
                x
                for x in runs
                if x["kind"] == "engine"
                and x.get("tolerance")
                and x["method"] == ENGINE_DEFAULT["method"]
            ),
            None,
        )
        p = r.get("pipeline")
        pipe = (
            f"{p['images_per_s']:.2f} img/s ({p['images']} PNGs, job {p['wall_s']:.1f} s; "
            f"marginal {p.get('marginal_images_per_s', float('nan')):.1f} img/s)"
            if p
            else "-"
        )
        lines.append(
            f"| {title} | {cell(tutorial)} | {cell(captum)} | {cell(fixed)} | "
            f"{cell(adaptive)} | {pipe} | {r['ceiling_rows_per_s']:.0f} at "
            f"{r['best_batch_size']} |"
        )
    return lines


def markdown(results: dict, profile_name: str) -> str:
    m, lines = results["machine"], []
    add = lines.append
    add("# Benchmark results (issue 5)\n")
    add(
        f"Command: `{results['command']}` (profile `{profile_name}`), started "
        f"{results['started_at']}, took {results['elapsed_s'] / 60:.1f} min.  "
    )
    add(
        f"Machine: `nproc`={m['nproc']}, CPU `{m['cpu']}`, {m['memory_gb']} GB RAM, "
        f"Python {m['python']}, TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}, "
        f"Beam {m.get('apache_beam')}, NumPy {m.get('numpy')}. Load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'] or ())} (a shared machine: "
        f"its load drifts). Code: commit {m.get('git_commit')}"
        + (
            f" with uncommitted changes in {', '.join(m['git_modified_files'])}"
            if m.get("git_modified_files")
            else ""
        )
        + ".\n"
    )
    add(
        "Models are built in code, offline; **random weights** unless said otherwise "
        "(benchmarks/models.py). Images: seeded smooth noise + shapes, uint8-quantized; the "
        "demo model gets `demo.dataset.make_arrays` images. Baseline black, target = "
        "predicted class, score = softmax probability (the tutorial's). Images with "
        "|F(x)-F(b)| < 0.1 are skipped (relative error ill-conditioned). Error = relative "
        "completeness error |sum(IG) - (F(x)-F(b))| / |F(x)-F(b)|, shown as median / p95 over "
        "the images. images/s: median of repeats; each repeat builds the method anew (empty "
        "trace cache), warms up on one held-out image, then times one pass over the images. "
        "`steps` = points of the rule (tutorial m_steps = steps - 1). % of ceiling: the method's "
        "gradient rows/s over the bare model's forward+input-gradient rows/s at the best call "
        "size, re-measured in the same process right after each timed pass (the machine's "
        "load drifts; 'load-corrected' speedups divide each side by its own ceiling). Peak "
        "RSS: `ru_maxrss` of the configuration's own process after its warm-up and first "
        "timed pass (model, TF runtime and images included); pipeline and memory rows: "
        "`ru_maxrss` of the whole process from `os.wait4`.\n"
    )
    add("## Summary\n")
    lines.extend(summary(results))
    add("")
    add("## Targets\n")
    add("| target | result | numbers |")
    add("|---|---|---|")
    for t in results["targets"]:
        add(f"| {t['target']} | {'PASS' if t['pass'] else 'FAIL'} | {t['numbers']} |")
    add("")
    for name, r in results["models"].items():
        info, prep = r["model"], r["prepare"]
        add(f"## {name}: {info['description']}\n")
        add(
            f"{info['image_size'][0]}x{info['image_size'][1]}, {info['num_classes']} classes; "
            f"{len(r['runs']) and r['runs'][0]['images']} benchmark images, "
            f"{prep['distinct_targets']} distinct predicted classes, median F(x) "
            f"{prep['median_fx']:.3f}, median F(black) {prep['median_fb']:.3g}; "
            f"{prep['excluded_small_delta']} of {prep['pool']} candidate images skipped.\n"
        )
        ceiling = " | ".join(f"{s}: {v['rows_per_s']:.1f}" for s, v in r["ceiling"].items())
        add(
            f"Ceiling (bare forward + input gradient, rows/s by call size): {ceiling}. "
            f"Best call size **{r['best_batch_size']}** (the smallest within 5% of the fastest; "
            f"used as the engine's batch_size, Captum's internal_batch_size and the pipeline's "
            f"--batch_size).\n"
        )
        if r.get("ladder"):
            rungs = sorted({int(k) for rule in r["ladder"].values() for k in rule})
            add(
                "Error ladder, median / p95 (a rule stops at its first rung within the "
                "tightest level):\n"
            )
            add("| rule | " + " | ".join(f"{s} pts" for s in rungs) + " |")
            add("|---" * (len(rungs) + 1) + "|")
            for rule in (TRAP, GL):
                add(
                    f"| {rule} | "
                    + " | ".join(
                        fmt_err(r["ladder"][rule][str(k)]) if str(k) in r["ladder"][rule] else "-"
                        for k in rungs
                    )
                    + " |"
                )
            add("")
            chosen = "; ".join(
                f"<= {float(level):.0%}: trapezoid {s[TRAP]}"
                f"{'' if r['reached'][level][TRAP] else ' (NOT reached)'}, GL {s[GL]}"
                f"{'' if r['reached'][level][GL] else ' (NOT reached)'}"
                for level, s in r["steps"].items()
            )
            add(f"Smallest steps with median and p95 error at the level: {chosen}.\n")
        add(
            "| method | rule, steps | level | grad evals/img | error med / p95 | images/s | "
            "grad rows/s | % of ceiling | traces (timed pass) | peak RSS MB |"
        )
        add("|---|---|---|---|---|---|---|---|---|---|")
        for run in r["runs"]:
            levels = ", ".join(f"{x:.0%}" for x in run.get("levels", [])) or "-"
            add(
                f"| {run['label']} | {describe(run)} | {levels} | "
                f"{run['evaluations_per_image']:.1f} | {fmt_err(run['errors'])} | "
                f"{run['images_per_s']:.2f} | {rows_per_s(run):.1f} | "
                f"{ceiling_fraction(run, r['ceiling_rows_per_s']):.0%} | "
                f"{'/'.join(str(t) for t in run['traces_in_timed_pass'])} | "
                f"{rss(run):.0f} |"
            )
        if "pipeline" in r:
            p = r["pipeline"]
            e = p["engine"]
            walls = ", ".join(f"{x['wall_s']:.1f}" for x in p["runs"])
            add(
                f"| pipeline (d), DirectRunner | {describe(e)} | 1% | "
                f"{p['evaluations_per_image']:.1f} | {fmt_err(p['errors'])} | "
                f"{p['images_per_s']:.2f} | - | - | - | {p['peak_rss_mb']:.0f} |"
            )
            add(
                f"| engine on the pipeline's images | {describe(e)} | 1% | "
                f"{e['evaluations_per_image']:.1f} | {fmt_err(e['errors'])} | "
                f"{e['images_per_s']:.2f} | {rows_per_s(e):.1f} | "
                f"{ceiling_fraction(e, r['ceiling_rows_per_s']):.0%} | "
                f"{'/'.join(str(t) for t in e['traces_in_timed_pass'])} | "
                f"{rss(e):.0f} |"
            )
            add("")
            add(
                f"Pipeline: `python -m pipeline` on {p['images']} PNGs of the same kind of "
                f"images (decode, masks, overlays, Parquet, manifest included; nothing "
                f"subtracted): job wall {p['wall_s']:.1f} s (median of {len(p['runs'])}: "
                f"{walls}), "
                f"{p['counts']['attributed']} attributed, {p['counts']['failed']} failed, "
                f"model loaded {p['model_loads']} time(s) in the workers."
                + (
                    f" A 1-image job takes {p['one_image_wall_s']:.1f} s (process start, "
                    f"imports, model loads, traces, Beam setup), so the marginal rate is "
                    f"{p['marginal_images_per_s']:.1f} images/s."
                    if "marginal_images_per_s" in p
                    else ""
                )
                + "\n"
            )
        ab = r.get("engine_vs_captum")
        if ab:
            v = ab["variants"]
            add(
                f"Engine vs Captum-style at the same rule, steps and call size ({ab['method']} "
                f"{ab['steps']} points, call size {ab['batch_size']}, "
                f"{v['engine']['images']} images), separate processes interleaved over "
                f"{ab['rounds']} rounds (median rows/s, % of own ceiling): engine "
                f"{v['engine']['rows_per_s']:.0f} ({v['engine']['ceiling_fraction']:.0%}); "
                f"engine with OPENBLAS_NUM_THREADS=1 {v['engine+blas1']['rows_per_s']:.0f} "
                f"({v['engine+blas1']['ceiling_fraction']:.0%}); Captum-style "
                f"{v['captum']['rows_per_s']:.0f} ({v['captum']['ceiling_fraction']:.0%}). "
                f"All rounds: "
                + "; ".join(f"{k} " + ", ".join(f"{x:.0f}" for x in d["all"]) for k, d in v.items())
                + ".\n"
            )
        for mem in r.get("memory", []):
            add(
                f"Memory: engine, {mem['method']} {mem['steps']} points, tolerance None, "
                f"batch_size {mem['batch_size']}, one image: peak RSS "
                f"**{mem['peak_rss_mb']:.0f} MB**, {mem['seconds']:.0f} s, error "
                f"{mem['errors']['median']:.3%}. (The tutorial keeps every gradient batch: "
                f"{mem['steps'] + 1} x 224x224x3 float32 = "
                f"{(mem['steps'] + 1) * 224 * 224 * 3 * 4 / 2**30:.2f} GiB for the gradients, "
                f"~3x that at the concat and trapezoid; not run.)\n"
            )
        add("")
    prof = results["models"].get("small_cnn", {}).get("profile")
    if prof:
        e, p = prof["engine"], prof["pipeline"]
        add("## Profile (cProfile, small_cnn, engine defaults)\n")
        add(
            f"Engine `attribute` on {e['images']} images (all at once): {e['attribute']:.2f} s, "
            f"{e['calls']} model calls, of which in `_call` (TF execute + conversions) "
            f"{e['tf_calls']:.2f} s ({e['tf_calls'] / e['attribute']:.0%}); Python "
            f"outside the calls {e['python_outside_tf_calls_s']:.2f} s "
            f"(of which `_finish`, the completeness check per result, {e['finish']:.2f} s; "
            "the rows are gathered and their gradients summed inside the calls).\n"
        )
        keys = (
            "load_model",
            "engine_attribute",
            "engine_tf_calls",
            "decode_image",
            "resize_with_pad",
            "mask_png",
            "overlay_png",
            "png_encode",
            "statistics",
            "grid",
            "publish",
            "parquet_write_record",
            "parquet_close",
            "manifest_build",
        )
        add(
            f"Pipeline `run()` in one process (imports already done), {p['total_s']:.1f} s "
            f"total; the engine got the same {n_images(results)} images in "
            f"{p['attribute_calls']} `attribute` calls (BatchElements batches, mean "
            f"{n_images(results) / max(1, p['attribute_calls']):.1f} images) and made "
            f"{p['engine_calls']} model calls (vs {e['calls']} standalone). Cumulative "
            "seconds (DirectRunner work on other threads would not be seen):\n"
        )
        n = r_images = results["models"]["small_cnn"]["pipeline"]["images"]
        add("| | " + " | ".join(keys) + " |")
        add("|---" * (len(keys) + 1) + "|")
        add("| s | " + " | ".join(f"{p[k]:.2f}" for k in keys) + " |")
        add(
            f"| ms/image ({n}) | "
            + " | ".join(f"{1000 * p[k] / r_images:.1f}" for k in keys)
            + " |"
        )
        add("")
        add(
            "Top self time: "
            + "; ".join(
                f"`{x['function']}` {x['tottime_s']:.2f} s"
                for x in prof["pipeline_top_tottime"][:8]
            )
            + "\n"
        )
    if results.get("notes"):
        add("## Notes\n")
        for note in results["notes"]:
            add(f"- {note}")
        add("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    profile_name = "quick" if args.quick else "full"
    profile = PROFILES[profile_name]
    started = time.perf_counter()
    command = ".venv/bin/python -m benchmarks.run" + (
        " " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        if (sys.argv[1:] if argv is None else argv)
        else ""
    )
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
        results["targets"] = targets(results, {"levels": results["levels"]})
        results["notes"] = [n for n in results["notes"] if STAND_IN in n] + notes(results)
        report = markdown(results, results["profile"])
        write_results(os.path.join(args.output_dir, "RESULTS.md"), report)
        if os.path.abspath(args.output_dir) == os.path.abspath(HERE):
            replace_between(README, README_START, README_END, readme_tables(results))
        print(report)
        return 0
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
    results["targets"] = targets(results, profile)
    demo = results["models"].get("demo")
    if demo and not demo["model"]["trained"]:
        results["notes"].append(
            f"demo: {STAND_IN}, so a STAND-IN small CNN at the demo's input size was used."
        )
    results["notes"].extend(notes(results))
    report = markdown(results, profile_name)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    write_results(os.path.join(args.output_dir, "RESULTS.md"), report)
    if os.path.abspath(args.output_dir) == os.path.abspath(HERE):
        replace_between(README, README_START, README_END, readme_tables(results))
    print(report)
    return 0


README = os.path.join(REPO, "README.md")
README_START = "<!-- generated: benchmarks.run -->"
README_END = "<!-- /generated: benchmarks.run -->"


def replace_between(path: str, start: str, end: str, text: str) -> bool:
    """Put ``start`` + ``text`` + ``end`` where those markers are in ``path`` (appended when
    absent). README's benchmark tables are written this way from the benchmarks' own output,
    never by hand. Returns False when ``path`` does not exist."""
    import re

    if not os.path.exists(path):
        return False
    with open(path) as f:
        old = f.read()
    block = f"{start}\n{text.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    new = (
        pattern.sub(lambda _: block, old)
        if pattern.search(old)
        else old.rstrip("\n") + "\n\n" + block + "\n"
    )
    with open(path, "w") as f:
        f.write(new)
    return True


def readme_tables(results: dict) -> str:
    """The summary and targets tables as README shows them, with the run they come from."""
    m = results["machine"]
    lines = [
        f"Generated by `{results['command']}` on {results['started_at'][:10]} (commit "
        f"{m.get('git_commit')}, load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'] or ())} on "
        f"{m['nproc']} cores); every table and note: benchmarks/RESULTS.md.\n",
        *summary(results),
        "",
        "| target | result | numbers |",
        "|---|---|---|",
        *(
            f"| {t['target']} | {'PASS' if t['pass'] else 'FAIL'} | {t['numbers']} |"
            for t in results["targets"]
        ),
    ]
    return "\n".join(lines)


def write_results(path: str, report: str) -> None:
    """RESULTS.md anew, keeping the sections other benchmarks wrote after this one's:
    benchmarks.performance's (issue 13) and benchmarks.scale's (from its header on)."""
    import re

    kept = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        match = re.search(r"<!-- issue 13: .*?<!-- /issue 13 -->", text, re.S)
        kept = "\n" + match.group(0) + "\n" if match else ""
        scale = text.find("## Simulated large run")
        kept += ("\n" + text[scale:]) if scale >= 0 else ""
    with open(path, "w") as f:
        f.write(report + "\n" + kept)


if __name__ == "__main__":
    sys.exit(main())
