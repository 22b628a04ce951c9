"""Batched Integrated Gradients (Sundararajan et al., 2017) with completeness on every result.

The model is reached only through one callable, ``fn(images [N, H, W, 3]) -> scores [N, C]``,
so the math is testable with analytic functions. Work is cut into (image, alpha, target)
rows that are packed across images into model calls of at most ``batch_size`` rows: many
small jobs share a call, one large job streams through many calls while its gradient integral
is accumulated, so memory does not grow with the number of steps. The traced functions take
any number of rows (their batch dimension is unknown) and the target is a tensor, so they
never retrace after warm-up and a short call computes only its own rows; under XLA
(``jit_compile``), which compiles each shape anew, calls are padded to one fixed size instead.
Identical baselines (the black one of every image) are scored once per request.
``--method score_guided`` first scans each image's path with forward rows (``quadrature``'s
scan points, then bisections where the curves move; all classes at once, shared by the
image's targets) and places each job's gradient points by its target's score curve
(``quadrature.Density``).
A request's images and baselines go to the device once; each call gathers its rows there and
adds its weighted gradients to per-job float64 integrals there, so per call the host only
sends two small arrays (each row's request, target, job, alpha and weight) and reads back the
row scores. The completeness check (``checked``) and the refinement loop
(``IntegratedGradients.refine_until_complete``) are every method's (attribution/methods/);
``engine_for`` builds the engine around a loaded model from settings.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from attribution import quadrature
from attribution.config import DEFAULTS, MODEL_OUTPUTS, SCORES
from attribution.targets import Targets


@dataclass
class Request:
    """One image to explain. ``image`` and ``baseline`` are float32 [H, W, 3]."""

    key: Any
    image: np.ndarray
    baseline: np.ndarray


@dataclass
class Attribution:
    """IG for one (image, target), with its completeness check and the path's score curve."""

    key: Any
    target: int
    predicted_class: int
    predicted_score: float
    target_score: float  # F(x)
    baseline_score: float  # F(baseline)
    baseline_predicts_target: bool  # the baseline's own top class is the target: IG is weak here
    attributions: np.ndarray  # float32 [H, W, 3]
    attribution_sum: float
    completeness_error: float
    relative_completeness_error: float
    converged: bool
    method: str
    steps: int  # points of the final rule
    gradient_evaluations: int  # gradient rows spent on this result, refinements included
    path_alphas: np.ndarray = field(repr=False)  # float32, sorted, 0 and 1 included
    path_scores: np.ndarray = field(repr=False)  # F(baseline + alpha (x - baseline))
    # forward rows of score_guided's scan of this image's path (shared by its targets)
    forward_evaluations: int = 0


@dataclass
class _Job:
    request: int
    target: int
    rule: quadrature.Rule
    integral: np.ndarray  # float64 [H, W, 3]: sum of weights * gradients so far
    evaluations: int = 0
    path: dict = field(default_factory=dict)  # alpha -> score
    density: quadrature.Density | None = None  # score_guided: where the points go
    forward: int = 0  # forward rows of the scan


class IntegratedGradients:
    """Integrated Gradients for any differentiable image classifier.

    fn: float32 [N, H, W, 3] -> [N, C] scores as ``model_output`` says ('logits' or
    'probabilities'). score: what is attributed: 'probability' (softmax of logits, as the TF
    tutorial; a probability model is never softmaxed twice) or 'logit'.
    method/steps: the quadrature rule. Results whose relative completeness error exceeds
    ``tolerance`` are refined (reusing points where the rule nests) while the refined rule has
    at most ``max_steps`` points; ``tolerance=None`` disables refinement. ``atol`` is an
    absolute completeness error that always counts as converged (float32 noise floor).
    batch_size: most rows per model call. On an out-of-memory error the call size is halved
    and the work retried. jit_compile: XLA for the traced functions (a GPU option: it was
    measured much slower on CPU). channels: the model's input channels (3 RGB, 1 grayscale);
    images and baselines are [H, W, channels].
    """

    def __init__(
        self,
        fn: Callable[[tf.Tensor], tf.Tensor],
        *,
        image_size: tuple[int, int],
        model_output: str = DEFAULTS.model_output,
        score: str = DEFAULTS.score,
        method: str = DEFAULTS.method,
        steps: int = DEFAULTS.steps,
        tolerance: float | None = DEFAULTS.tolerance,
        max_steps: int = DEFAULTS.max_steps,
        batch_size: int = DEFAULTS.batch_size,
        atol: float = 1e-6,
        jit_compile: bool = DEFAULTS.jit_compile,
        channels: int = 3,
    ):
        if model_output not in MODEL_OUTPUTS:
            raise ValueError(f"model_output must be one of {MODEL_OUTPUTS}, got {model_output!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if score == "logit" and model_output == "probabilities":
            raise ValueError(
                "score 'logit' needs a model that outputs logits; with model_output "
                "'probabilities' use score 'probability'"
            )
        quadrature.rule(method, steps)  # validates method and steps
        if tolerance is not None and not tolerance > 0:
            raise ValueError(f"tolerance must be > 0 (None: no refinement), got {tolerance!r}")
        if tolerance is not None and max_steps < steps:
            raise ValueError(f"max_steps ({max_steps}) must be >= steps ({steps})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.fn = fn
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = int(channels)
        self.softmax = score == "probability" and model_output == "logits"
        self.method, self.steps = method, int(steps)
        self.tolerance, self.max_steps, self.atol = tolerance, int(max_steps), float(atol)
        self.jit_compile = bool(jit_compile)
        self.trace_count = 0
        self.model_calls = 0
        # the jobs' gradient integrals of the current round, on the device (float64)
        shape = [*self.image_size, self.channels]
        self._integrals = tf.Variable(
            tf.zeros([0, *shape], tf.float64), shape=[None, *shape], trainable=False
        )
        self._rule = quadrature.rule(self.method, self.steps)  # score_guided: before its map
        self.guided = self.method == quadrature.SCORE_GUIDED
        self._refinements: dict[tuple, quadrature.Refinement] = {}  # by rule: computed once
        self._lock = threading.Lock()  # one attribute() at a time: the integrals are shared
        self._build(int(batch_size))

    # -- traced functions ---------------------------------------------------------------
    def _build(self, batch_size: int) -> None:
        self.batch_size = batch_size
        if not self.jit_compile and hasattr(self, "_functions"):
            return  # the functions take any number of rows: nothing to rebuild
        rows = batch_size if self.jit_compile else None  # XLA: one fixed, padded shape
        h, w = self.image_size
        images = tf.TensorSpec([rows, h, w, self.channels], tf.float32)
        pool = tf.TensorSpec([None, h, w, self.channels], tf.float32)  # a request's images
        ints = tf.TensorSpec([rows], tf.int32)
        self._functions = {
            name: tf.function(
                impl, input_signature=spec, jit_compile=self.jit_compile, autograph=False
            )
            for name, impl, spec in (
                ("forward", self._forward_impl, [images]),
                # score_guided's scan: (request, alpha) per row, every class's score
                (
                    "scan",
                    self._scan_impl,
                    [pool, pool, ints, tf.TensorSpec([rows], tf.float32)],
                ),
                ("points", self._points_impl, [images, ints]),
                # (request, target, job) and (alpha, weight) per row: two arguments, not five
                (
                    "gradients",
                    self._gradients_impl,
                    [
                        pool,
                        pool,
                        tf.TensorSpec([rows, 3], tf.int32),
                        tf.TensorSpec([rows, 2], tf.float32),
                    ],
                ),
            )
        }
        # each is traced at its first use, then called as its concrete function (the same
        # graph, without tf.function's per-call argument matching)
        self._concrete = {}

    def _scores(self, images: tf.Tensor) -> tf.Tensor:
        out = tf.cast(self.fn(images), tf.float32)
        return tf.nn.softmax(out, axis=-1) if self.softmax else out

    def _forward_impl(self, images):
        self.trace_count += 1
        return self._scores(images)

    def _scan_impl(self, baselines, differences, rows, alphas):
        self.trace_count += 1
        points = tf.gather(baselines, rows) + alphas[:, None, None, None] * tf.gather(
            differences, rows
        )
        return self._scores(points)

    def _target_gradients(self, points: tf.Tensor, targets: tf.Tensor):
        """(target scores [B], their gradients [B, H, W, 3]) at ``points``, in a traced call."""
        with tf.GradientTape() as tape:
            tape.watch(points)
            scores = tf.gather(self._scores(points), targets, axis=1, batch_dims=1)
        return scores, tape.gradient(scores, points)

    def _points_impl(self, points, targets):
        self.trace_count += 1
        return self._target_gradients(points, targets)

    def _gradients_impl(self, baselines, differences, ints, floats):
        """One packed call: row r is request ``rows[r]`` at ``alphas[r]``; its gradient times
        ``weights[r]`` is added to the integral of job ``jobs[r]`` (XLA's padding rows weigh 0).
        The rows' points are gathered (baseline + alpha (image - baseline), the difference sent
        once per request) and the weighted sums accumulated here, on the device: per call the
        host sends two small arrays and gets the row scores back."""
        self.trace_count += 1
        rows, targets, jobs = ints[:, 0], ints[:, 1], ints[:, 2]
        alphas, weights = floats[:, 0], floats[:, 1]
        b = tf.gather(baselines, rows)
        points = b + alphas[:, None, None, None] * tf.gather(differences, rows)
        scores, grads = self._target_gradients(points, targets)
        weighted = tf.cast(grads * weights[:, None, None, None], tf.float64)
        self._integrals.scatter_nd_add(jobs[:, None], weighted)
        return scores

    def _call(self, name, *arrays):
        """Run one call; on out-of-memory halve the call size and re-raise to retry."""
        try:
            self.model_calls += 1
            function = self._concrete.get(name)
            if function is None:
                function = self._concrete[name] = self._functions[name].get_concrete_function()
            return [t.numpy() for t in tf.nest.flatten(function(*arrays))]
        except tf.errors.ResourceExhaustedError:
            if self.batch_size == 1:
                raise
            self._build(self.batch_size // 2)
            raise _Retry from None

    # -- public API ---------------------------------------------------------------------
    def scores(self, images: np.ndarray) -> np.ndarray:
        """Scores (after the score transform) for float32 [N, H, W, 3], in packed calls."""
        images = np.asarray(images, np.float32)
        with self._lock:
            return self._scores_unlocked(images)

    def _scores_unlocked(self, images: np.ndarray) -> np.ndarray:
        out, start = [], 0
        while start < len(images):
            chunk = images[start : start + self.batch_size]
            try:
                (result,) = self._call("forward", self._fit(chunk))
            except _Retry:
                continue
            out.append(result[: len(chunk)])
            start += len(chunk)
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def gradients(
        self, inputs: np.ndarray, targets: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Target scores [N] and input gradients [N, H, W, 3] at explicit points.

        For the methods whose path is not a straight line (attribution/methods/). Rows are
        packed into calls of one traced function (traced at its first use), so
        nothing retraces.
        """
        inputs = np.asarray(inputs, np.float32)
        targets = np.asarray(targets, np.int32)
        if inputs.shape[1:] != (*self.image_size, self.channels) or len(targets) != len(inputs):
            raise ValueError(
                f"gradients needs [N, {self.image_size[0]}, {self.image_size[1]}, "
                f"{self.channels}] points and N targets, got {inputs.shape} and "
                f"{targets.shape}"
            )
        scores, grads, start = [], [], 0
        while start < len(inputs):
            chunk = self._fit(inputs[start : start + self.batch_size])
            count = min(self.batch_size, len(inputs) - start)
            try:
                score, grad = self._call("points", chunk, self._fit(targets[start : start + count]))
            except _Retry:
                continue
            scores.append(score[:count])
            grads.append(grad[:count])
            start += count
        if not scores:
            return np.zeros(0, np.float32), np.zeros(
                (0, *self.image_size, self.channels), np.float32
            )
        return np.concatenate(scores), np.concatenate(grads)

    def attribute(
        self, requests: Sequence[Request], targets: Targets | str = "predicted"
    ) -> list[Attribution]:
        """IG for every request and each of its targets, in request order then target rank."""
        if isinstance(targets, str):
            targets = Targets.parse(targets)
        if not requests:
            return []
        with self._lock:
            return self._attribute(requests, targets)

    def _attribute(self, requests: Sequence[Request], targets: Targets) -> list[Attribution]:
        images = np.stack([self._checked(r.image, "image") for r in requests])
        baselines = np.stack([self._checked(r.baseline, "baseline") for r in requests])
        n = len(requests)
        distinct, of_request = _distinct(baselines)  # one black baseline, not n
        both = self._scores_unlocked(np.concatenate([images, baselines[distinct]]))
        image_scores, baseline_scores = both[:n], both[n:][of_request]

        pool = tf.constant(baselines), tf.constant(images - baselines)  # gathered per call
        chosen = [targets.select(image_scores[i]) for i in range(n)]
        paths = self._scan_paths(pool, chosen, image_scores, baseline_scores) if self.guided else []
        jobs = []
        for i in range(n):
            for target in chosen[i]:
                job = _Job(i, target, self._rule, np.zeros(images.shape[1:], np.float64))
                alphas, weights = job.rule.alphas, job.rule.weights
                if self.guided:
                    knots, scanned = paths[i]
                    curve = [
                        baseline_scores[i, target],
                        *scanned[:, target],
                        image_scores[i, target],
                    ]
                    job.density = quadrature.Density.from_scores([0.0, *knots, 1.0], curve)
                    job.forward = len(knots)
                    job.path.update(zip(knots.tolist(), scanned[:, target].tolist()))
                    alphas, weights = job.density.place(alphas, weights)
                jobs.append((job, alphas, weights))
        finished = self.refine_until_complete(
            jobs,
            lambda rows: self._integrate(rows, *pool),
            lambda job: self._finish(
                job, requests, images, baselines, image_scores, baseline_scores
            ),
            _placed,
        )
        order = [(job.request, _rank(image_scores[job.request], job.target)) for job, _, _ in jobs]
        return [result for _, result in sorted(zip(order, finished), key=lambda r: r[0])]

    def refine_until_complete(
        self,
        first: Sequence[tuple[Any, np.ndarray, np.ndarray]],
        evaluate: Callable[[list], None],
        finish: Callable[[Any], Attribution],
        place: Callable[[Any, np.ndarray, np.ndarray], tuple] | None = None,
    ) -> list[Attribution]:
        """The refinement loop of IG and every path method, at this engine's tolerance and
        max_steps: the final result of each job of ``first``, in its order.

        ``first``: (job, alphas, weights) of the first round, a job having ``rule`` (its
        ``quadrature.Rule``) and ``integral`` (the weighted gradient sum so far).
        ``evaluate(round)`` adds a round's rows to the jobs' integrals; ``finish(job)`` is the
        job's result with its completeness check (``checked``). A result that is not
        converged is refined (its integral rescaled, only the new points evaluated) while the
        refined rule has at most ``max_steps`` points; ``place(job, alphas, weights)`` maps a
        round's points (score_guided's density).
        """
        results: dict[int, Attribution] = {}
        pending = list(first)
        while pending:
            evaluate(pending)
            next_round = []
            for job, _, _ in pending:
                result = results[id(job)] = finish(job)
                if result.converged or self.tolerance is None:
                    continue
                refinement = self._refine(job.rule)
                if refinement.rule.steps > self.max_steps:
                    continue
                job.integral = job.integral * refinement.scale
                job.rule = refinement.rule
                alphas, weights = refinement.alphas, refinement.weights
                if place is not None:
                    alphas, weights = place(job, alphas, weights)
                next_round.append((job, alphas, weights))
            pending = next_round
        return [results[id(job)] for job, _, _ in first]

    # -- internals ----------------------------------------------------------------------
    def _refine(self, rule: quadrature.Rule) -> quadrature.Refinement:
        key = (rule.method, rule.steps)
        if key not in self._refinements:
            self._refinements[key] = quadrature.refine(rule)
        return self._refinements[key]

    def _fit(self, array: np.ndarray) -> np.ndarray:
        """A call's rows as the traced functions take them: padded to the call size under XLA
        (padding rows weigh 0), as they are otherwise."""
        return _pad(array, self.batch_size) if self.jit_compile else array

    def _checked(self, array: np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(array, np.float32)
        if array.shape != (*self.image_size, self.channels):
            raise ValueError(
                f"{what} has shape {array.shape}, the model needs "
                f"{(*self.image_size, self.channels)}: resize it first"
            )
        return array

    def _scan_paths(self, pool, chosen, image_scores, baseline_scores) -> list:
        """score_guided's scan of each image's path: (inner knots, every class's score there
        [K, C]) per image, knots rising. First ``quadrature.scan_alphas()``, then up to
        ``quadrature.SCAN_LEVELS`` rounds bisecting the intervals where the curves of the
        image's ``chosen`` targets move (``quadrature.scan_bisections``); each round's rows
        of all images packed into the same calls. An image's knots depend on its own scores
        only."""
        n = len(chosen)
        first = quadrature.scan_alphas()
        knots = [first] * n
        scanned = np.split(
            self._scan(*pool, np.repeat(np.arange(n), len(first)), np.tile(first, n)), n
        )
        for _ in range(quadrature.SCAN_LEVELS):
            new = []
            for i, targets in enumerate(chosen):
                t = list(targets)
                curves = np.concatenate(
                    [
                        baseline_scores[i, t][:, None],
                        scanned[i][:, t].T,
                        image_scores[i, t][:, None],
                    ],
                    axis=1,
                )
                new.append(quadrature.scan_bisections([0.0, *knots[i], 1.0], curves))
            sizes = [len(a) for a in new]
            if not sum(sizes):
                break
            got = self._scan(*pool, np.repeat(np.arange(n), sizes), np.concatenate(new))
            for i, more in enumerate(np.split(got, np.cumsum(sizes)[:-1])):
                merged = np.concatenate([knots[i], new[i]])
                order = np.argsort(merged, kind="stable")
                knots[i], scanned[i] = merged[order], np.concatenate([scanned[i], more])[order]
        return list(zip(knots, scanned))

    def _scan(self, baselines, differences, rows: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """Every class's score at ``alphas`` on the paths of requests ``rows``,
        [len(rows), C], forward rows packed into calls of at most ``batch_size``."""
        rows = np.asarray(rows, np.int32)
        points = np.asarray(alphas, np.float32)
        out, start = [], 0
        while start < len(rows):
            chunk = slice(start, start + self.batch_size)
            try:
                (result,) = self._call(
                    "scan", baselines, differences, self._fit(rows[chunk]), self._fit(points[chunk])
                )
            except _Retry:
                continue
            out.append(result[: len(rows[chunk])])
            start += len(rows[chunk])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def _integrate(self, jobs, baselines: tf.Tensor, differences: tf.Tensor) -> None:
        """Evaluate every pending row, packed into calls of at most ``batch_size`` rows, into
        the jobs' integrals."""
        counts = [len(alphas) for _, alphas, _ in jobs]
        job_of_row = np.repeat(np.arange(len(jobs), dtype=np.int32), counts)
        rows = np.array([job.request for job, _, _ in jobs], np.int32)[job_of_row]
        targets = np.array([job.target for job, _, _ in jobs], np.int32)[job_of_row]
        alphas = np.concatenate([alphas for _, alphas, _ in jobs]).astype(np.float32)
        weights = np.concatenate([weights for _, _, weights in jobs]).astype(np.float32)
        ints = np.stack([rows, targets, job_of_row], axis=1)
        floats = np.stack([alphas, weights], axis=1)
        scores = np.empty(len(alphas), np.float32)
        self._integrals.assign(tf.zeros([len(jobs), *self.image_size, self.channels], tf.float64))
        start = 0
        while start < len(alphas):
            chunk = slice(start, start + self.batch_size)
            try:
                (result,) = self._call(
                    "gradients",
                    baselines,
                    differences,
                    self._fit(ints[chunk]),
                    self._fit(floats[chunk]),
                )
            except _Retry:
                continue
            n = len(alphas[chunk])
            scores[start : start + n] = result[:n]
            start += n
        integrals = self._integrals.numpy()
        bounds = np.cumsum([0, *counts])
        for j, (job, _, _) in enumerate(jobs):
            lo, hi = bounds[j], bounds[j + 1]
            job.integral += integrals[j]
            job.evaluations += hi - lo
            job.path.update(zip(np.float64(alphas[lo:hi]).tolist(), scores[lo:hi].tolist()))

    def _finish(self, job, requests, images, baselines, image_scores, baseline_scores):
        i, t = job.request, job.target
        path = dict(job.path)
        path.setdefault(0.0, float(baseline_scores[i, t]))
        path.setdefault(1.0, float(image_scores[i, t]))
        alphas = sorted(path)
        return checked(
            key=requests[i].key,
            target=t,
            image_scores=image_scores[i],
            start_score=float(baseline_scores[i, t]),
            start_predicts_target=int(np.argmax(baseline_scores[i])) == t,
            attributions=(images[i] - baselines[i]).astype(np.float64) * job.integral,
            atol=self.atol,
            tolerance=self.tolerance,
            method=self.method,
            steps=job.rule.steps,
            evaluations=job.evaluations,
            forward_evaluations=job.forward,
            path_alphas=alphas,
            path_scores=[path[a] for a in alphas],
        )


# the engine's settings, as AttributionConfig and the job's Settings name them
ENGINE_SETTINGS = (
    "score",
    "method",
    "steps",
    "tolerance",
    "max_steps",
    "batch_size",
    "jit_compile",
)


def engine_for(model, settings=None, engine_class=None, **overrides) -> IntegratedGradients:
    """The engine around a loaded model (``attribution.models.load_model``): the model gives
    the function, input size, output kind and channels; ``settings`` the rule and call size,
    an object with every name of ENGINE_SETTINGS (the job's Settings: tolerance None when
    refinement is off) or a mapping with some of them (the others keep the engine's
    defaults); ``overrides`` win. ``engine_class`` builds another implementation (a benchmark's A/B of the engine).
    The job, the RunInference handler and the benchmarks build their engine here."""
    if settings is None or isinstance(settings, Mapping):
        settings = settings or {}
        values = {name: settings[name] for name in ENGINE_SETTINGS if name in settings}
    else:
        values = {name: getattr(settings, name) for name in ENGINE_SETTINGS}
    return (engine_class or IntegratedGradients)(
        model.fn,
        image_size=model.image_size,
        model_output=model.output,
        channels=model.channels,
        **{**values, **overrides},
    )


# -- completeness: one check for IG and every method ------------------------------------
def relative_error(error: float, fx: float, fb: float) -> float:
    """|sum - (F(x) - F(start))| relative to |F(x) - F(start)| (0/0 is 0, e/0 is inf)."""
    delta = abs(fx - fb)
    return error / delta if delta > 0 else (0.0 if error == 0 else float("inf"))


def converged(error: float, relative: float, *, atol: float, tolerance: float | None) -> bool:
    """Completeness holds: within ``atol`` absolutely, or within ``tolerance`` relatively."""
    return bool(error <= atol or (tolerance is not None and relative <= tolerance))


def checked(
    *,
    key,
    target: int,
    image_scores: np.ndarray,
    start_score: float,
    start_predicts_target: bool,
    attributions: np.ndarray,
    atol: float,
    tolerance: float | None,
    method: str | None,
    steps: int | None,
    evaluations: int,
    path_alphas,
    path_scores,
    forward_evaluations: int = 0,
) -> Attribution:
    """An ``Attribution`` of any path (the engine's straight lines and every method's), with
    its completeness check against F(image) - F(path start)."""
    attributions = np.asarray(attributions, np.float64)
    total = float(attributions.sum())
    fx = float(image_scores[target])
    error = abs(total - (fx - start_score))
    relative = relative_error(error, fx, start_score)
    predicted = int(np.argmax(image_scores))
    return Attribution(
        key=key,
        target=target,
        predicted_class=predicted,
        predicted_score=float(image_scores[predicted]),
        target_score=fx,
        baseline_score=float(start_score),
        baseline_predicts_target=bool(start_predicts_target),
        attributions=attributions.astype(np.float32),
        attribution_sum=total,
        completeness_error=error,
        relative_completeness_error=relative,
        converged=converged(error, relative, atol=atol, tolerance=tolerance),
        method=method,
        steps=steps,
        gradient_evaluations=evaluations,
        forward_evaluations=forward_evaluations,
        path_alphas=np.asarray(path_alphas, np.float32),
        path_scores=np.asarray(path_scores, np.float32),
    )


def _placed(job: _Job, alphas: np.ndarray, weights: np.ndarray) -> tuple:
    """A refinement's points on score_guided's map (nested when the base rule nests)."""
    return job.density.place(alphas, weights) if job.density is not None else (alphas, weights)


class _Retry(Exception):
    """The call size was halved after an out-of-memory error: redo the same rows."""


def _distinct(arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the first of each distinct array, each array's index into those)."""
    first: dict[bytes, int] = {}
    of = np.array([first.setdefault(a.tobytes(), len(first)) for a in arrays], np.int64)
    return np.unique(of, return_index=True)[1], of


def _rank(scores: np.ndarray, target: int) -> int:
    return int(np.flatnonzero(np.argsort(-scores, kind="stable") == target)[0])


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    if len(array) == size:
        return array
    pad = np.zeros((size - len(array), *array.shape[1:]), array.dtype)
    return np.concatenate([array, pad])
