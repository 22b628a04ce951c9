"""Integrated Gradients as a Beam RunInference model handler, for pipelines of your own.

    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from transforms.inference import IntegratedGradientsModelHandler

    handler = IntegratedGradientsModelHandler("gs://bucket/classifier", steps=16,
                                              max_batch_size=16)
    results = images | RunInference(handler)               # float32 [H, W, 3] in [0, 1]
    keyed = keyed_images | RunInference(KeyedModelHandler(handler))  # (key, image)

Each ``PredictionResult`` has ``example`` (the image as given), ``inference`` (a list of
``attribution.integrated_gradients.Attribution``, one per target: ``attributions`` [H, W, 3],
``attribution_sum``, ``completeness_error``, ``relative_completeness_error``, ``converged``,
scores, ``steps``...) and ``model_id`` (the model uri). RunInference owns what is around the
model: ``BatchElements`` with this handler's ``min_batch_size`` / ``max_batch_size`` /
``max_batch_duration_secs``, one model per process (``Shared``), its metrics under the
``RunInference`` namespace (``num_inferences``, ``inference_batch_latency_micro_secs``,
``load_model_latency_milli_secs``...), and ``.with_exception_handling()``: a batch whose
attribution raises goes to ``failed_inferences`` as (batch, exception) instead of failing the
job. ``share_model_across_processes=True`` (or ``large_model=True`` / ``model_copies=N``)
loads one model per machine shared by all SDK processes: use it on GPU workers, where every
process loading its own copy would compete for the GPU's memory.

Our own job (transforms/attribute.py) keeps its DoFn: it loads the model lazily at the first
image that needs computing, so an unchanged incremental rerun (--reuse_from) never loads it,
and it isolates the one image that breaks a batch instead of dead-lettering the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from attribution.baselines import BASELINES, make_baseline
from attribution.config import DEFAULTS
from attribution.integrated_gradients import (
    SCORES,
    IntegratedGradients,
    Request,
    engine_for,
)
from attribution.quadrature import METHODS
from attribution.targets import Targets


class AttributionModel:
    """What the handler loads: the engine behind methods only, so that a model shared across
    processes (``share_model_across_processes``: reached through a proxy that forwards
    method calls, not attributes) works the same as one loaded in the process."""

    def __init__(self, engine: IntegratedGradients):
        self.engine = engine

    def input_shape(self) -> tuple[int, int, int]:
        return (*self.engine.image_size, self.engine.channels)

    def attribute(self, requests, targets):
        return self.engine.attribute(requests, targets)


class IntegratedGradientsModelHandler(ModelHandler[np.ndarray, list, AttributionModel]):
    """Images (float32 [H, W, 3] in [0, 1]; other sizes are resized with padding, and made
    gray for a 1-channel model, as the pipeline does) -> PredictionResult(image,
    [Attribution per target], model_uri).

    ``model_uri``: anything ``attribution.models.load_model`` loads (SavedModel folder,
    ``.keras`` file, TF Hub URL, gs:// SavedModel), with ``preprocess`` as --preprocess. IG
    settings are the command line's: ``target`` ('predicted', a class index or 'topk:K'),
    ``score``, ``method``, ``steps``, ``tolerance`` (None: no refinement), ``max_steps``,
    ``baseline``, ``seed``, ``batch_size`` (rows per model call, packed across the images of
    a RunInference batch). Batching, sharing and the other ModelHandler options are passed to
    Beam's ModelHandler.
    """

    def __init__(
        self,
        model_uri: str,
        *,
        image_size: tuple[int, int] | None = None,
        model_output: str = DEFAULTS.model_output,
        output_key: str | None = DEFAULTS.output_key,
        preprocess: str = DEFAULTS.preprocess,
        score: str = DEFAULTS.score,
        target: str | int = DEFAULTS.target,
        method: str = DEFAULTS.method,
        steps: int = DEFAULTS.steps,
        tolerance: float | None = DEFAULTS.tolerance,
        max_steps: int = DEFAULTS.max_steps,
        baseline: str = DEFAULTS.baseline,
        seed: int = DEFAULTS.seed,
        batch_size: int = DEFAULTS.batch_size,
        share_model_across_processes: bool = False,
        **model_handler_kwargs,
    ):
        super().__init__(**model_handler_kwargs)
        self.targets = Targets.parse(target)  # refuse bad settings when the graph is built
        for name, value, allowed in (
            ("score", score, SCORES),
            ("method", method, METHODS),
            ("baseline", baseline, BASELINES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if steps < 1 or batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
        self.model_uri = model_uri
        self.load_args = {
            "image_size": image_size,
            "model_output": model_output,
            "output_key": output_key,
            "preprocess": preprocess,
        }
        self.engine_args = {
            "score": score,
            "method": method,
            "steps": steps,
            "tolerance": tolerance,
            "max_steps": max_steps,
            "batch_size": batch_size,
        }
        self.baseline, self.seed = baseline, seed
        if share_model_across_processes:
            self._share_across_processes = True

    def load_model(self) -> AttributionModel:
        from attribution.models import load_model

        model = load_model(self.model_uri, **self.load_args)
        return AttributionModel(engine_for(model, self.engine_args))

    def _request(self, index: int, image, shape) -> Request:
        image = np.asarray(image, np.float32)
        if image.ndim == 3 and image.shape[-1] == 3 and image.shape != tuple(shape):
            from attribution.images import model_input  # RGB of another size or gray model

            image = model_input(image, shape[:2], shape[2])
        key = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
        return Request(index, image, make_baseline(self.baseline, image, key=key, seed=self.seed))

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: AttributionModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        shape = model.input_shape()
        requests = [self._request(i, image, shape) for i, image in enumerate(batch)]
        results = model.attribute(requests, self.targets)
        for i, image in enumerate(batch):
            yield PredictionResult(
                image, [r for r in results if r.key == i], model_id=self.model_uri
            )

    def validate_inference_args(self, inference_args: dict[str, Any] | None):
        if inference_args:
            raise ValueError(
                "IntegratedGradientsModelHandler takes no inference_args: pass "
                "the settings to its constructor"
            )

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(np.asarray(image).nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return "RunInference_IntegratedGradients"
