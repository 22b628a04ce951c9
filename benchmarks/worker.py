"""One benchmark configuration in its own process (clean peak RSS): ``python -m
benchmarks.worker '<json task>'``. Prints ``RESULT <json>`` as its last line.

Tasks: prepare (model + images + targets), ladder (completeness error of a rule per steps),
ceiling (raw forward+input-gradient rows/s per call size), method (time one algorithm at one
setting: repeats, errors, traces), profile (cProfile of the engine and of the pipeline).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

MIN_DELTA = 0.1  # |F(x) - F(b)| below this makes the relative error ill-conditioned


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)


def _load(task):
    from attribution.models import load_model

    return load_model(task["model_path"])


def _data(task):
    with np.load(task["data"]) as d:
        return {k: d[k] for k in d.files}


def relative_errors(attributions: np.ndarray, fx: np.ndarray, fb: np.ndarray) -> np.ndarray:
    sums = attributions.reshape(len(attributions), -1).astype(np.float64).sum(1)
    delta = fx.astype(np.float64) - fb.astype(np.float64)
    return np.abs(sums - delta) / np.abs(delta)


def _stats(errors: np.ndarray) -> dict:
    return {
        "median": float(np.median(errors)),
        "p95": float(np.percentile(errors, 95)),
        "max": float(np.max(errors)),
    }


def _engine(model, task, engine_class=None, **overrides):
    """The engine at the task's rule, steps, tolerance, max_steps and call size (``overrides``
    win); ``engine_class`` swaps in another implementation (see _engine_class)."""
    from attribution.integrated_gradients import engine_for

    settings = {
        "method": task["method"],
        "steps": task["steps"],
        "tolerance": task.get("tolerance"),
        "max_steps": task.get("max_steps", 256),
        "batch_size": task.get("batch_size"),
    }
    return engine_for(model, settings, engine_class or _engine_class(None), **overrides)


def _captum(model, method: str, steps: int, batch_size: int):
    """The Captum-style loop at one rule, steps and internal batch size."""
    from benchmarks.baselines import CaptumStyleIG

    return CaptumStyleIG(
        model.fn,
        image_size=model.image_size,
        method=method,
        steps=steps,
        internal_batch_size=batch_size,
    )


# --- setup: model, images, ceiling, error ladder --------------------------------------------
def prepare(task):
    """Build the model, choose the images, their predicted targets and F(x), F(black).

    Images whose |F(x) - F(black)| < MIN_DELTA at the predicted class are skipped (the
    relative completeness error divides by it); the first kept image only warms up. Set
    ``bench`` is the first ``count`` of the rest, set ``pipe`` the first ``pipeline_count``.
    """
    from attribution.integrated_gradients import engine_for
    from benchmarks import models

    info = models.build(task["model"], task["cache_dir"], seed=task.get("seed", 0))
    model = _load({"model_path": info.path})
    count, pipe_count = task["count"], task.get("pipeline_count", 0)
    pool = models.images_for(info, int(1.5 * max(count, pipe_count)) + 8, seed=task.get("seed", 0))
    ig = engine_for(model, tolerance=None)
    scores = ig.scores(pool)
    base = ig.scores(np.zeros_like(pool[:1]))[0]
    targets = scores.argmax(1)
    fx = scores[np.arange(len(pool)), targets]
    fb = base[targets]
    keep = np.flatnonzero(np.abs(fx - fb) >= MIN_DELTA)
    if len(keep) < max(count, pipe_count) + 1:
        raise RuntimeError(
            f"only {len(keep)} of {len(pool)} images have |F(x)-F(b)| >= {MIN_DELTA}"
        )
    warm, rest = keep[0], keep[1:]
    arrays = {
        "warmup": pool[warm : warm + 1],
        "warmup_target": targets[warm : warm + 1].astype(np.int32),
    }
    for name, n in (("bench", count), ("pipe", pipe_count)):
        chosen = rest[:n]
        arrays.update(
            {
                f"{name}_images": pool[chosen],
                f"{name}_targets": targets[chosen].astype(np.int32),
                f"{name}_fx": fx[chosen],
                f"{name}_fb": fb[chosen],
            }
        )
    np.savez(task["data"], **arrays)
    bench = rest[:count]
    return {
        "info": info.to_json(),
        "pool": int(len(pool)),
        "kept": int(len(keep)),
        "excluded_small_delta": int(len(pool) - len(keep)),
        "distinct_targets": int(len(set(targets[bench].tolist()))),
        "median_fx": float(np.median(fx[bench])),
        "median_fb": float(np.median(fb[bench])),
    }


def setup(task):
    """prepare, then the ceiling, then the error ladder (one process: no RSS is read here)."""
    out = {"prepare": prepare(task)}
    task = {**task, "model_path": out["prepare"]["info"]["path"]}
    out["ceiling"] = ceiling(task)
    # the smallest call size within 5% of the fastest (memory grows with the call size)
    top = max(v["rows_per_s"] for v in out["ceiling"].values())
    best = min((int(k) for k, v in out["ceiling"].items() if v["rows_per_s"] >= 0.95 * top))
    out["best_batch_size"] = best
    if task.get("ladder"):
        out["ladder"] = ladder({**task, "batch_size": best})
    return out


# --- ladder --------------------------------------------------------------------------------
def ladder(task):
    """Relative completeness error per (rule, steps). The rules are the same math in every
    method (tests/test_benchmarks.py checks it), so the fastest one computes the ladder: the
    Captum-style loop, which accumulates in the graph. A rule's ladder stops at the first rung
    whose median and p95 are both <= ``stop_at``."""
    model, d = _load(task), _data(task)
    images = d["bench_images"]
    targets = d["bench_targets"].tolist()
    out = {}
    for method in task["methods"]:
        out[method] = {}
        for steps in task["ladder"]:
            ig = _captum(model, method, steps, task["batch_size"])
            attributions = ig.attribute(images, np.zeros_like(images), targets)
            errors = relative_errors(attributions, d["bench_fx"], d["bench_fb"])
            out[method][str(steps)] = {**_stats(errors), "errors": errors.tolist()}
            if max(np.median(errors), np.percentile(errors, 95)) <= task.get("stop_at", 0):
                break
    return out


# --- ceiling -------------------------------------------------------------------------------
class RawGradients:
    """The bare model's forward + input gradient at one call size: one traced function with
    a fixed signature, fixed random rows, softmax probability of a class. Nothing else."""

    def __init__(self, model, size: int):
        import tensorflow as tf

        h, w = model.image_size
        self.size = size

        @tf.function(
            input_signature=[tf.TensorSpec([size, h, w, 3]), tf.TensorSpec([size], tf.int32)]
        )
        def step(x, t):
            with tf.GradientTape() as tape:
                tape.watch(x)
                p = tf.gather(tf.nn.softmax(model.fn(x)), t, axis=1, batch_dims=1)
            return p, tape.gradient(p, x)

        self.step = step
        self.x = tf.random.uniform([size, h, w, 3], seed=1)
        self.t = tf.zeros([size], tf.int32)
        self.window(size)  # trace + warm up

    def window(self, rows: int) -> float:
        """rows/s over ceil(rows / size) calls."""
        calls = max(1, -(-int(rows) // self.size))
        started = time.perf_counter()
        for _ in range(calls):
            [v.numpy() for v in self.step(self.x, self.t)]
        return calls * self.size / (time.perf_counter() - started)


def ceiling(task):
    """Raw forward + input-gradient rows/s of the bare model at each call size."""
    model = _load(task)
    out = {}
    for size in task["sizes"]:
        raw = RawGradients(model, size)
        rates = [raw.window(task["rows_per_window"]) for _ in range(task["windows"])]
        out[str(size)] = {"rows_per_s": float(np.median(rates)), "windows": rates}
    return out


# --- method --------------------------------------------------------------------------------
def _make_runner(kind, model, task, d):
    """-> (run(images) -> (attributions, targets, gradient evaluations), traces())."""
    import tensorflow as tf

    from attribution.integrated_gradients import Request
    from benchmarks.baselines import TutorialIG

    steps = task["steps"]
    if kind == "tutorial":
        tutorial = TutorialIG(model.fn, batch_size=32)

        def run(images):
            attributions, targets = tutorial.attribute(images, np.zeros_like(images), steps)
            return attributions, targets, [steps] * len(images)

        return run, lambda: tutorial.trace_count
    if kind == "captum":
        captum = _captum(model, task["method"], steps, task["batch_size"])

        def run(images):
            scores = tf.nn.softmax(model.fn(tf.convert_to_tensor(images)))  # the targets
            targets = np.argmax(scores.numpy(), axis=1).tolist()
            return (
                captum.attribute(images, np.zeros_like(images), targets),
                targets,
                [steps] * len(images),
            )

        return run, lambda: captum.trace_count
    if kind == "engine":
        engine = _engine(model, task)

        def run(images):
            results = engine.attribute(
                [Request(i, x, np.zeros_like(x)) for i, x in enumerate(images)]
            )
            return (
                np.stack([r.attributions for r in results]),
                [r.target for r in results],
                [r.gradient_evaluations for r in results],
            )

        return run, lambda: engine.trace_count
    raise ValueError(kind)


def method(task):
    """Time one method at one setting: per repeat a fresh object (empty trace cache), a
    warm-up on a held-out image, then one timed pass over the benchmark images."""
    model, d = _load(task), _data(task)
    which = task.get("images", "bench")
    images = d[f"{which}_images"][: task.get("count")]
    fx, fb = d[f"{which}_fx"][: len(images)], d[f"{which}_fb"][: len(images)]
    times, traces, ceilings = [], [], []
    raw, method_rss = None, None
    # at least ``repeats`` repeats, more (up to max_repeats) until min_seconds are timed:
    # short passes on a shared machine need more samples for a stable median
    while len(times) < task["repeats"] or (
        sum(times) < task.get("min_seconds", 0) and len(times) < task.get("max_repeats", 9)
    ):
        run, trace_count = _make_runner(task["kind"], model, task, d)
        run(d["warmup"])
        before = trace_count()
        started = time.perf_counter()
        attributions, targets, evaluations = run(images)
        times.append(time.perf_counter() - started)
        traces.append(trace_count() - before)
        if method_rss is None:
            method_rss = _rss_mb()  # before the reference below allocates anything
        if task.get("ceiling_size"):  # the ceiling now, in this process: the load drifts
            raw = raw or RawGradients(model, task["ceiling_size"])
            ceilings.append(raw.window(min(task["ceiling_rows"], max(evaluations) * len(images))))
    if list(targets) != d[f"{which}_targets"][: len(images)].tolist():
        raise RuntimeError(f"targets differ from the prepared ones: {targets}")
    errors = relative_errors(attributions, fx, fb)
    seconds = float(np.median(times))
    return {
        "seconds": seconds,
        "times": times,
        "images": len(images),
        "images_per_s": len(images) / seconds,
        "evaluations_per_image": float(np.mean(evaluations)),
        "traces_in_timed_pass": traces,
        "errors": _stats(errors),
        "method_peak_rss_mb": method_rss,
        "ceiling_now_rows_per_s": float(np.median(ceilings)) if ceilings else None,
        "ceilings_now": ceilings,
        "self_peak_rss_mb": _rss_mb(),
    }


# --- efficiency: engine rows/s over the bare model's, interleaved in one process ---------
def _engine_class(module_path: str | None):
    """The engine class, or the one in ``module_path`` (a before/after A/B of its internals)."""
    if not module_path:
        from attribution.integrated_gradients import IntegratedGradients

        return IntegratedGradients
    import importlib.util

    spec = importlib.util.spec_from_file_location("engine_variant", module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    engine = module.IntegratedGradients
    accepted = inspect.signature(engine.__init__).parameters

    def older(fn, **kwargs):  # an older engine lacks the newer keywords (channels: RGB)
        dropped = {k: v for k, v in kwargs.items() if k not in accepted}
        if dropped.get("channels", 3) != 3 or set(dropped) - {"channels"}:
            raise ValueError(f"the engine in {module_path} has no {sorted(dropped)}")
        return engine(fn, **{k: v for k, v in kwargs.items() if k in accepted})

    return older


def efficiency(task):
    """Per round: one engine pass per variant, then the bare model's forward + input gradient
    for as many rows at the same call size; the engine's gradient rows/s over that ceiling,
    median over rounds. Each variant's engine is built and warmed up once (no traces timed)."""
    from attribution.integrated_gradients import Request
    from benchmarks import models

    info = models.build(task["model"], task["cache_dir"])
    model = _load({"model_path": info.path})
    images = models.images_for(info, task["count"] + 1, seed=task.get("seed", 7))
    requests = [Request(i, x, np.zeros_like(x)) for i, x in enumerate(images[1:])]
    size = task["batch_size"]
    raw = RawGradients(model, size)
    engines = {}
    for name, path in task["variants"].items():
        engine = _engine(model, task, _engine_class(path))
        engine.attribute([Request(-1, images[0], np.zeros_like(images[0]))])
        engines[name] = engine
    out = {
        name: {"seconds": 0.0, "rows": 0, "ceiling_seconds": 0.0, "ceiling_rows": 0, "ratio": []}
        for name in engines
    }
    # short passes alternate with the ceiling: the shared machine's load drifts within
    # seconds, so each side of a ratio is measured under the same load
    per_pass = task.get("images_per_pass", len(requests))
    for i in range(task["rounds"]):
        chunk = [requests[(i * per_pass + k) % len(requests)] for k in range(per_pass)]
        order = list(engines.items())
        for name, engine in order if i % 2 == 0 else order[::-1]:  # ABBA: no order bias
            started = time.perf_counter()
            results = engine.attribute(chunk)
            seconds = time.perf_counter() - started
            rows = int(sum(r.gradient_evaluations for r in results))
            calls = -(-rows // size)
            started = time.perf_counter()
            for _ in range(calls):
                [v.numpy() for v in raw.step(raw.x, raw.t)]
            ceiling_seconds = time.perf_counter() - started
            d = out[name]
            d["seconds"] += seconds
            d["rows"] += rows
            d["ceiling_seconds"] += ceiling_seconds
            d["ceiling_rows"] += calls * size
            d["ratio"].append((rows / seconds) / (calls * size / ceiling_seconds))
    for d in out.values():
        d["rows_per_s"] = d["rows"] / d["seconds"]
        d["ceiling_rows_per_s"] = d["ceiling_rows"] / d["ceiling_seconds"]
        d["fraction"] = d["rows_per_s"] / d["ceiling_rows_per_s"]
        d["median_ratio"] = float(np.median(d["ratio"]))
    return {
        "model": info.name,
        "batch_size": size,
        "images": len(requests),
        "images_per_pass": per_pass,
        "method": task["method"],
        "steps": task["steps"],
        "tolerance": task.get("tolerance"),
        "variants": out,
    }


# --- fixed costs: where a 1-image job's seconds go ----------------------------------------
def fixed_costs(task):
    """Run ``python -m pipeline``'s work in this process with timers on its phases: imports
    (TensorFlow, Beam, the rest), each load_model (launcher, worker), the engine's first
    attribute() (traces + first calls), Beam's run, the report. Wall seconds, not cProfile."""
    clock = time.perf_counter
    phases, started = {}, clock()
    t = clock()
    import tensorflow  # noqa: F401

    phases["import tensorflow"] = clock() - t
    t = clock()
    import apache_beam  # noqa: F401

    phases["import apache_beam"] = clock() - t
    t = clock()
    from attribution import integrated_gradients
    from pipeline import run as pipeline_run
    from transforms import attribute

    phases["import pipeline (ours + rest)"] = clock() - t
    import gc

    gc.freeze()  # as python -m pipeline does after its imports

    def timed(name, function):
        def wrapper(*args, **kwargs):
            t = clock()
            try:
                return function(*args, **kwargs)
            finally:
                phases.setdefault(name, []).append(clock() - t)

        return wrapper

    pipeline_run.load_model = timed("load_model (launcher)", pipeline_run.load_model)
    attribute.load_model = timed("load_model (worker)", attribute.load_model)
    first = {}
    original_attribute = integrated_gradients.IntegratedGradients.attribute

    def attribute_timed(self, *args, **kwargs):
        t = clock()
        try:
            return original_attribute(self, *args, **kwargs)
        finally:
            key = (
                "engine attribute, first call (traces)"
                if id(self) not in first
                else "engine attribute, later calls"
            )
            first.setdefault(id(self), True)
            phases.setdefault(key, []).append(clock() - t)

    integrated_gradients.IntegratedGradients.attribute = attribute_timed
    from pipeline import commit, report

    report.write_report = timed("report (draw + write)", report.write_report)
    commit.commit = timed("commit (publish parts, manifest, report)", commit.commit)
    import apache_beam as beam

    beam.Pipeline.run = timed("beam Pipeline.run (whole job graph)", beam.Pipeline.run)
    t = clock()
    pipeline_run.run(task["pipeline_argv"], save_main_session=False)
    phases["run() total"] = clock() - t
    out = {k: (float(sum(v)) if isinstance(v, list) else float(v)) for k, v in phases.items()}
    out["counts"] = {k: len(v) for k, v in phases.items() if isinstance(v, list)}
    out["in-process total"] = clock() - started
    return out


# --- job breakdown: where a many-image job's seconds go -----------------------------------
def _timer(phases: dict, name: str, function, generator: bool = False):
    """``function`` with its wall seconds added to ``phases[name]`` and its process CPU
    seconds to ``phases[name + ' (cpu)']``; a generator's are the seconds inside its own
    next() calls (Beam runs the fused steps downstream of a DoFn between them). Process CPU
    counts every thread: a step's own (TensorFlow's threads included) where the steps run one
    at a time, and also the compute thread's where they overlap it (AttributeFn computes the
    next batch while the bundle's thread runs the steps downstream)."""
    clock, cpu = time.perf_counter, time.process_time

    def add(t, c):
        phases[name] = phases.get(name, 0.0) + clock() - t
        phases[f"{name} (cpu)"] = phases.get(f"{name} (cpu)", 0.0) + cpu() - c

    @functools.wraps(function)  # Beam reads a DoFn's parameters from the signature
    def plain(*args, **kwargs):
        t, c = clock(), cpu()
        try:
            return function(*args, **kwargs)
        finally:
            add(t, c)

    @functools.wraps(function)
    def stepped(*args, **kwargs):
        iterator = function(*args, **kwargs)
        while True:
            t, c = clock(), cpu()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                add(t, c)
            yield item

    return stepped if generator else plain


def job_breakdown(task):
    """Run ``python -m pipeline`` in this process with timers (wall and process CPU seconds)
    on each step of the job: imports, model load, decode, engine, faithfulness curves, PNG
    encoding, statistics, Parquet, commit and report. What Beam's run spends outside the
    timed steps is its own per-bundle and per-element work. Timers, not cProfile (no profiler
    overhead). Runs whichever tree is first on sys.path (a 'before' tree too): a name a tree
    does not have is not timed."""
    phases: dict[str, float] = {}

    def imported(name, modules):
        t, c = time.perf_counter(), time.process_time()
        loaded = [__import__(m, fromlist=["_"]) for m in modules]
        phases[name] = time.perf_counter() - t
        phases[f"{name} (cpu)"] = time.process_time() - c
        return loaded

    started = time.perf_counter()
    imported("import tensorflow", ["tensorflow"])
    (beam,) = imported("import apache_beam", ["apache_beam"])
    commit, report, pipeline_run, attribute, read, summarize, write, strategies = imported(
        "import pipeline (ours + rest)",
        [
            "pipeline.commit",
            "pipeline.report",
            "pipeline.run",
            "transforms.attribute",
            "transforms.read",
            "transforms.summarize",
            "transforms.write",
            "transforms.strategies",
        ],
    )
    import gc

    gc.freeze()  # as python -m pipeline does after its imports
    masks = summarize.masks
    timed = {  # label -> the functions and methods whose seconds it adds up
        "load model (launcher)": [(pipeline_run, "load_model")],
        "read + decode": [(read.DecodeFn, "process")],
        "engine (IG)": [(attribute.AttributeFn, "_explain")],
        "faithfulness curves": [(attribute.AttributeFn, "_evidence")],
        "attribute step (total)": [
            (attribute.AttributeFn, "process"),
            (attribute.AttributeFn, "finish_bundle"),
        ],
        "waiting for the model": [(attribute.AttributeFn, "_wait")],
        "PNG encoding": [
            (masks, "mask_and_overlay_pngs"),
            (masks, "mask_png"),
            (masks, "overlay_png"),
        ],
        "statistics + grid": [(masks, "attribution_statistics"), (masks, "attribution_grid")],
        "publish files (masks, overlays)": [(summarize, "publish")],
        "summarize step (total)": [(summarize.SummarizeFn, "process")],
        "Parquet parts (encode + publish)": [
            (write.WritePartsFn, "process"),
            (write.WritePartsFn, "finish_bundle"),
        ],
        "strategies (fit, describe, fill)": [
            (strategies.st, "fit"),
            (strategies.StrategyRowFn, "process"),
            (strategies.FillStrategiesFn, "process"),
        ],
        "report (draw + write)": [(report, "write_report")],
        "commit (parts, manifest, report)": [(commit.CommitFn, "process")],
        "beam Pipeline.run": [(beam.Pipeline, "run")],
    }
    saved = [
        (owner, attr, getattr(owner, attr), name)
        for name, places in timed.items()
        for owner, attr in places
        if hasattr(owner, attr)  # a 'before' tree may not have it
    ]
    for owner, attr, original, name in saved:
        generator = inspect.isgeneratorfunction(original)
        setattr(owner, attr, _timer(phases, name, original, generator))
    try:
        _timer(phases, "run() total", pipeline_run.run)(
            task["pipeline_argv"], save_main_session=False
        )
    finally:
        for owner, attr, original, _ in saved:
            setattr(owner, attr, original)
    phases["in-process total"] = time.perf_counter() - started
    phases["in-process total (cpu)"] = time.process_time()
    return {"phases": phases}


# --- engine images/s on PNG files, as the pipeline decodes them ---------------------------
def _png_arrays(pattern: str) -> np.ndarray:
    import glob

    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0
            for p in sorted(glob.glob(pattern))
        ]
    )


def engine_rate(task):
    """The engine alone on the decoded PNGs: every image in one attribute() call (best
    packing), after a warm-up; images/s and gradient rows/s."""
    from attribution.integrated_gradients import Request

    model = _load(task)
    images = _png_arrays(task["pattern"])
    engine = _engine(model, task)
    engine.attribute([Request(-1, images[0], np.zeros_like(images[0]))])
    requests = [Request(i, x, np.zeros_like(x)) for i, x in enumerate(images)]
    calls = engine.model_calls
    started, cpu = time.perf_counter(), time.process_time()
    results = engine.attribute(requests)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    calls = engine.model_calls - calls
    errors = np.array([r.relative_completeness_error for r in results])
    out = {
        "images": len(images),
        "seconds": seconds,
        "images_per_s": len(images) / seconds,
        "cpu_seconds": cpu,  # every thread's CPU seconds: steadier than wall under load
        "rows": int(sum(r.gradient_evaluations for r in results)),
        "model_calls": calls,
        "errors": _stats(errors),
    }
    if task.get("image_batch_size"):  # as the job hands them over: refinement per batch
        size, calls = task["image_batch_size"], engine.model_calls
        started, cpu = time.perf_counter(), time.process_time()
        batched = [
            r
            for i in range(0, len(requests), size)
            for r in engine.attribute(requests[i : i + size])
        ]
        out["batched"] = {
            "image_batch_size": size,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
            "rows": int(sum(r.gradient_evaluations for r in batched)),
            "model_calls": engine.model_calls - calls,
            "max_difference": float(
                max(np.abs(a.attributions - b.attributions).max() for a, b in zip(results, batched))
            ),
        }
    if task.get("faithfulness"):  # the pipeline's default checks, as AttributeFn runs them
        from attribution import faithfulness

        items = [  # the key seeds the random order: any distinct string per image
            faithfulness.Item.of(r, x, np.zeros_like(x), str(i))
            for i, (r, x) in enumerate(zip(results, images))
        ]
        started, cpu = time.perf_counter(), time.process_time()
        evidence = faithfulness.evaluate(
            engine,
            items,
            kinds=faithfulness.parse_kinds(task["faithfulness"]),
            points=task.get("faithfulness_points", faithfulness.DEFAULT_POINTS),
        )
        checks = time.perf_counter() - started
        out.update(
            checks_seconds=checks,
            checks_cpu_seconds=time.process_time() - cpu,
            forward_rows=int(sum(e.forward_rows for e in evidence)),
            with_checks_images_per_s=len(images) / (seconds + checks),
        )
    return out


# --- precision: speed and completeness of each compute precision, interleaved -------------
def precision(task):
    from attribution.integrated_gradients import Request
    from attribution.models import load_model
    from benchmarks import models

    info = models.build(task["model"], task["cache_dir"])
    images = models.images_for(info, task["count"] + 1, seed=task.get("seed", 7))
    requests = [Request(i, x, np.zeros_like(x)) for i, x in enumerate(images[1:])]
    engines = {}
    for name in task["precisions"]:
        model = load_model(info.path, precision=name)
        engine = _engine(model, task, tolerance=None)
        engine.attribute(requests[:1])
        engines[name] = engine
    out = {name: {"times": []} for name in engines}
    for _ in range(task["rounds"]):
        for name, engine in engines.items():
            started = time.perf_counter()
            results = engine.attribute(requests)
            out[name]["times"].append(time.perf_counter() - started)
            out[name]["errors"] = _stats(np.array([r.relative_completeness_error for r in results]))
            out[name]["attributions"] = np.stack([r.attributions for r in results])
    reference = out[task["precisions"][0]]["attributions"]
    for d in out.values():
        a = d.pop("attributions")
        d["images_per_s"] = len(requests) / float(np.median(d["times"]))
        d["correlation_with_first"] = float(
            np.median([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, reference)])
        )
    return {
        "model": info.name,
        "images": len(requests),
        "method": task["method"],
        "steps": task["steps"],
        "batch_size": task["batch_size"],
        "precisions": out,
    }


# --- profile -------------------------------------------------------------------------------
# the functions whose cumulative seconds the pipeline's profile reports: bucket, a part of
# the file's path, function; the engine's profile reports the engine_* ones without the prefix
PROFILED_FUNCTIONS = {
    bucket: (file_part, function)
    for bucket, file_part, function in map(
        str.split,
        """
        load_model            models.py                load_model
        engine_attribute      integrated_gradients.py  attribute
        engine_tf_calls       integrated_gradients.py  _call
        engine_integrate      integrated_gradients.py  _integrate
        engine_finish         integrated_gradients.py  _finish
        decode_image          images.py                decode_image
        resize_with_pad       images.py                resize_with_pad
        mask_png              masks.py                 mask_png
        overlay_png           masks.py                 overlay_png
        png_encode            masks.py                 _encode_png
        statistics            masks.py                 attribution_statistics
        grid                  masks.py                 attribution_grid
        publish               files.py                 publish
        parquet_write_record  parquetio.py             write_record
        parquet_flush         parquetio.py             _flush_buffer
        parquet_close         parquetio.py             close
        manifest_build        manifest.py              build
        pipeline_p_run        pipeline.py              run
        """.strip().splitlines(),
    )
}
ENGINE_FUNCTIONS = {
    bucket.removeprefix("engine_"): where
    for bucket, where in PROFILED_FUNCTIONS.items()
    if bucket.startswith("engine_")
}


def _profile_summary(stats, buckets: dict, total: float) -> dict:
    """cumulative seconds of the first function matching each bucket's (file, name) parts."""
    out = {"total_s": total}
    for bucket, (file_part, name) in buckets.items():
        best = 0.0
        for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
            if function == name and file_part in filename:
                best = max(best, cumulative)
        out[bucket] = best
    return out


def _ncalls(stats, file_part: str, name: str) -> int:
    return sum(v[1] for k, v in stats.stats.items() if k[2] == name and file_part in k[0])


def profile(task):
    """cProfile the engine (attribute only) and the pipeline (run(), in this process)."""
    from attribution.integrated_gradients import Request, engine_for

    model, d = _load(task), _data(task)
    engine = engine_for(model, batch_size=task["batch_size"])
    requests = [Request(i, x, np.zeros_like(x)) for i, x in enumerate(d["pipe_images"])]
    engine.attribute([Request(-1, d["warmup"][0], np.zeros_like(d["warmup"][0]))])
    engine_stats, total = _profiled(lambda: engine.attribute(requests))
    engine_summary = _profile_summary(engine_stats, ENGINE_FUNCTIONS, total)
    engine_summary["python_outside_tf_calls_s"] = (
        engine_summary["attribute"] - engine_summary["tf_calls"]
    )
    engine_summary["images"] = len(requests)
    engine_summary["calls"] = _ncalls(engine_stats, *ENGINE_FUNCTIONS["tf_calls"])

    from pipeline import run as pipeline_run

    pipe_stats, total = _profiled(
        lambda: pipeline_run.run(task["pipeline_argv"], save_main_session=False)
    )
    pipe_summary = _profile_summary(pipe_stats, PROFILED_FUNCTIONS, total)
    pipe_summary["engine_calls"] = _ncalls(pipe_stats, *ENGINE_FUNCTIONS["tf_calls"])
    pipe_summary["attribute_calls"] = _ncalls(pipe_stats, *ENGINE_FUNCTIONS["attribute"])
    top = []
    pipe_stats.sort_stats("tottime")
    for (filename, line, function), (_, calls, tottime, cumulative, _) in list(
        pipe_stats.stats.items()
    ):
        top.append((tottime, f"{os.path.basename(filename)}:{line}({function})", calls, cumulative))
    top.sort(reverse=True)
    return {
        "engine": engine_summary,
        "pipeline": pipe_summary,
        "pipeline_top_tottime": [
            {"function": f, "tottime_s": t, "calls": c, "cumtime_s": cu} for t, f, c, cu in top[:15]
        ],
    }


TASKS = {
    "setup": setup,
    "prepare": prepare,
    "ladder": ladder,
    "ceiling": ceiling,
    "method": method,
    "profile": profile,
    "efficiency": efficiency,
    "fixed_costs": fixed_costs,
    "engine_rate": engine_rate,
    "job_breakdown": job_breakdown,
    "precision": precision,
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task = json.loads(argv[0])
    if task["task"] not in ("fixed_costs", "job_breakdown"):  # they time their own imports
        _quiet()
    started = time.perf_counter()
    result = TASKS[task["task"]](task)
    result["process_seconds"] = time.perf_counter() - started
    result["self_peak_rss_mb"] = _rss_mb()
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def _profiled(work):
    """(cProfile statistics of ``work()``, its wall time in seconds)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    work()
    profiler.disable()
    return pstats.Stats(profiler), time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
