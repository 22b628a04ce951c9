"""The measuring half of ``python -m benchmarks.run``: the profiles, the configurations to
time, the worker and pipeline subprocesses, and one model's whole benchmark
(:func:`bench_model`). Rendering the results is benchmarks/render.py's.

Every configuration runs in its own subprocess (benchmarks/worker.py) so its peak RSS
(``ru_maxrss`` from ``os.wait4``) is its own.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from transforms.layout import MANIFEST, SUMMARIES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(REPO, "benchmarks")
LADDER = (4, 8, 16, 32, 64, 128, 256)
CALL_SIZES = (8, 16, 32, 64)
LEVELS = (0.01, 0.05)
TRAP, GL = "riemann_trapezoid", "gausslegendre"
ENGINE_DEFAULT = {"method": GL, "steps": 16, "tolerance": 0.01, "max_steps": 256}

BLAS1 = {"OPENBLAS_NUM_THREADS": "1"}
ADAPTIVE_TRAPEZOID = {"method": TRAP, "steps": 17, "max_steps": 257}  # 17->33->...->257, nested

# setting: (its value in the full profile, in the quick one: fewer images, repeats and
# levels; no memory run, 1-image job or cProfile)
_SETTINGS = {
    "small_cnn": ({"count": 16, "pipeline_count": 96}, {"count": 8, "pipeline_count": 32}),
    "demo": ({"count": 12, "pipeline_count": 32}, {"count": 8, "pipeline_count": 16}),
    "mobilenet_v2": ({"count": 4}, {"count": 2}),
    "repeats": (3, 3),
    "min_seconds": (3.0, 1.5),
    "pipeline_repeats": (3, 1),
    "windows": (3, 2),
    "ladder": (LADDER, LADDER),
    "levels": (LEVELS, (0.01,)),
    "memory_steps": (2000, None),
    "pipeline_fixed_cost": (True, False),
    "profile": (True, False),
}
PROFILES = {
    name: {setting: values[i] for setting, values in _SETTINGS.items()}
    for i, name in enumerate(("full", "quick"))
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
        "cpu_s": usage.ru_utime + usage.ru_stime,  # every thread's, whatever the load
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

    with open(os.path.join(output_dir, MANIFEST)) as f:
        manifest = json.load(f)
    files = glob.glob(os.path.join(output_dir, SUMMARIES, "*.parquet"))
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
        "cpu_s": proc["cpu_s"],
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
    """What the numbers were measured on: CPU, memory, versions, commit, load."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    commit, modified = _git()
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu(),
        "memory_gb": _memory_gb(),
        "git_commit": commit,
        "git_modified_files": modified,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load,
        **_versions(),
    }


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        return None


def _versions() -> dict:
    """The libraries' versions, as a benchmark subprocess imports them."""
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
    return dict(zip(("tensorflow", "keras", "apache_beam", "numpy"), versions))


def _git() -> tuple[str, list[str]]:
    """(the short commit, the tracked files with uncommitted changes)."""

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout

    status = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD").strip(), [line[3:] for line in status.splitlines()]


# --- the benchmark -------------------------------------------------------------------------
def bench_model(name: str, profile: dict, work: str, cache_dir: str) -> dict:
    """One model's benchmark: setup (model, images, ceiling, error ladder), then the 224x224
    model's tutorial/engine/memory runs, or the smaller models' method runs, pipeline and
    profiles."""
    data = os.path.join(work, f"{name}.npz")
    result, base = _setup(name, profile, data, cache_dir)
    if name == "mobilenet_v2":
        result["runs"] = _same_rule_runs(name, base)
        result["memory"] = _memory_runs(name, base, profile["memory_steps"])
        return result
    for key, index in (("steps", 0), ("reached", 1)):
        result[key] = {
            str(level): {m: smallest_steps(result["ladder"][m], level)[index] for m in (TRAP, GL)}
            for level in profile["levels"]
        }
    result["runs"] = _method_runs(name, base, configurations(result, profile["levels"]))
    folder = os.path.join(work, f"{name}-png")
    result["pipeline"] = _pipeline(name, profile, work, base, folder)
    if profile["profile"] and name == "demo":
        result["engine_vs_captum"] = engine_vs_captum(name, base)
    if profile["profile"] and name == "small_cnn":
        result["profile"] = _profile(name, base, work, folder)
    return result


def _setup(name: str, profile: dict, data: str, cache_dir: str) -> tuple[dict, dict]:
    """(the model's result so far, the base task of its method runs)."""
    big = name == "mobilenet_v2"
    task = {
        "task": "setup",
        "model": name,
        "cache_dir": cache_dir,
        "data": data,
        "count": profile[name]["count"],
        "pipeline_count": profile[name].get("pipeline_count", 0),
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
    return result, base


def _same_rule_runs(name: str, base: dict) -> list[dict]:
    """The tutorial and the engine at the tutorial's defaults: trapezoid, m_steps=50 (51
    points)."""
    runs = []
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
        runs.append(run)
    return runs


def _memory_runs(name: str, base: dict, steps: int | None) -> list[dict]:
    """The engine at ``steps`` points on one image (peak RSS), when ``steps`` is set."""
    if not steps:
        return []
    log(f"{name}: engine {steps} steps, one image (memory)")
    task = {
        **base,
        "kind": "engine",
        "method": GL,
        "steps": steps,
        "tolerance": None,
        "repeats": 1,
        "count": 1,
        "batch_size": 32,
        "ceiling_size": None,
    }
    run = worker(task, timeout=1800)
    run.update(kind="engine", method=GL, steps=steps, batch_size=32)
    return [run]


def _method_runs(name: str, base: dict, configs: list[dict]) -> list[dict]:
    """One worker run per configuration, the configuration recorded with its numbers."""
    runs = []
    for config in configs:
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
        runs.append(run)
    return runs


def _pipeline(name: str, profile: dict, work: str, base: dict, folder: str) -> dict:
    """(d) the whole pipeline vs the engine, same images, same settings (engine defaults)."""
    one = os.path.join(work, f"{name}-png-one")
    with np.load(base["data"]) as d:
        write_pngs(d["pipe_images"], folder)
        write_pngs(d["pipe_images"][:1], one)
        count = len(d["pipe_images"])
    log(f"{name}: engine on the pipeline's {count} images")
    engine = worker({**base, "kind": "engine", **ENGINE_DEFAULT, "images": "pipe"})
    engine.update(kind="engine", **ENGINE_DEFAULT)
    argv = _default_argv(folder, os.path.join(work, f"{name}-out"), base)
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
        **{k: runs[0][k] for k in ("errors", "counts", "model_loads", "evaluations_per_image")},
        "engine": engine,
    }
    if profile["pipeline_fixed_cost"]:
        log(f"{name}: python -m pipeline on 1 PNG (fixed cost)")
        one_run = run_pipeline(_default_argv(one, os.path.join(work, f"{name}-out-one"), base))
        pipeline["one_image_wall_s"] = one_run["wall_s"]
        if pipeline["wall_s"] > one_run["wall_s"]:
            pipeline["marginal_images_per_s"] = (count - 1) / (
                pipeline["wall_s"] - one_run["wall_s"]
            )
    return pipeline


def _default_argv(input_dir: str, output_dir: str, base: dict) -> list[str]:
    """The pipeline's arguments at the engine's defaults and the model's best call size."""
    return pipeline_argv(
        input_dir, output_dir, base["model_path"], base["batch_size"], ENGINE_DEFAULT
    )


def _profile(name: str, base: dict, work: str, folder: str) -> dict:
    log(f"{name}: cProfile of the engine and of the pipeline")
    task = {
        "task": "profile",
        "model_path": base["model_path"],
        "data": base["data"],
        "batch_size": base["batch_size"],
        "pipeline_argv": _default_argv(folder, os.path.join(work, f"{name}-out-prof"), base),
    }
    return worker(task)


AB_VARIANTS = (("engine", None), ("engine", BLAS1), ("captum", None))


def engine_vs_captum(name: str, base: dict, rounds: int = 3) -> dict:
    """The engine, the engine with single-threaded OpenBLAS, and the Captum-style loop at the
    same rule, steps and call size, each in its own process, interleaved round by round so
    the machine's drifting load hits all three alike."""
    runs = {f"{kind}{'+blas1' if env else ''}": [] for kind, env in AB_VARIANTS}
    task = {**base, "method": GL, "steps": 64, "tolerance": None, "repeats": 3, "min_seconds": 0}
    for i in range(rounds):
        for kind, env in AB_VARIANTS:
            label = f"{kind}{'+blas1' if env else ''}"
            log(f"{name}: A/B round {i + 1}/{rounds}: {label} GL 64")
            runs[label].append(worker({**task, "kind": kind}, env=env))
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
    """Gradient rows per second: images/s times gradient evaluations per image."""
    return run["images_per_s"] * run["evaluations_per_image"]
