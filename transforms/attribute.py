"""Attribute batches of decoded images with the engine; the model is loaded once per process."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from attribution.baselines import make_baseline
from attribution.integrated_gradients import IntegratedGradients, Request, Targets
from attribution.models import load_model
from transforms.progress import CountsProgress
from transforms.records import ERRORS, NAMESPACE, error_row
from transforms.settings import Settings
from transforms.staging import mark_model_load


class _ProcessModel:
    """What each worker process holds once: the loaded model and the engine around it."""

    def __init__(self, settings: Settings):
        model = load_model(settings.model, image_size=settings.image_size,
                           model_output=settings.model_output, output_key=settings.output_key,
                           preprocess=settings.preprocess)
        if model.fingerprint != settings.model_fingerprint:
            raise RuntimeError(f"the model at {settings.model} changed since the job started "
                               f"(fingerprint {model.fingerprint[:12]}, expected "
                               f"{settings.model_fingerprint[:12]}): rerun the job")
        self.engine = IntegratedGradients(
            model.fn, image_size=model.image_size, model_output=model.output,
            score=settings.score, method=settings.method, steps=settings.steps,
            tolerance=settings.tolerance, max_steps=settings.max_steps,
            batch_size=settings.batch_size, jit_compile=settings.jit_compile,
            channels=model.channels)


class AttributeFn(CountsProgress, beam.DoFn):
    """[DecodedImage] -> (DecodedImage, [Attribution]) per image; failures to ERRORS.

    Not RunInference (transforms/inference.py is the ModelHandler for other pipelines): this
    DoFn loads the model lazily at the first batch, so an unchanged --reuse_from rerun loads
    no model (RunInference loads it in setup), and it isolates the image that breaks a batch
    where RunInference dead-letters the whole batch."""

    def __init__(self, settings: Settings, shared_handle: shared.Shared):
        self.settings = settings
        self.shared_handle = shared_handle
        self.progress_folder = settings.progress_folder
        self.model_loads = Metrics.counter(NAMESPACE, "model_loads")
        self.attributed = Metrics.counter(NAMESPACE, "attributed")
        self.rows = Metrics.counter(NAMESPACE, "rows")
        self.failed = Metrics.counter(NAMESPACE, "failed")
        self.evaluations = Metrics.counter(NAMESPACE, "gradient_evaluations")
        self.unconverged = Metrics.counter(NAMESPACE, "unconverged_rows")

    def setup(self):
        self.model = None  # loaded at the first batch: a worker with nothing to compute never loads
        self.targets = Targets.parse(self.settings.target)

    def _load(self):
        loads = []

        def load():
            loads.append(1)
            return _ProcessModel(self.settings)
        self.model = self.shared_handle.acquire(load, tag=self.settings.model_fingerprint)
        self.model_loads.inc(len(loads))  # 0 when another DoFn in this process loaded it
        if loads:
            mark_model_load(self.settings.output_dir)  # counted by the commit (manifest)

    def _requests(self, images):
        return [Request(i, d.image, make_baseline(self.settings.baseline, d.image,
                                                  key=d.content_sha256, seed=self.settings.seed))
                for i, d in enumerate(images)]

    def process(self, images):
        if self.model is None:
            self._load()
        try:
            results = self.model.engine.attribute(self._requests(images), self.targets)
            groups = [[r for r in results if r.key == i] for i in range(len(images))]
        except Exception:  # noqa: BLE001 - isolate the image that breaks the batch
            groups = []
            for image in images:
                try:
                    groups.append(self.model.engine.attribute(self._requests([image]),
                                                              self.targets))
                except Exception as e:  # noqa: BLE001
                    groups.append(e)
        self.progress(len(images))
        for image, group in zip(images, groups):
            if isinstance(group, Exception):
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(ERRORS, error_row(image.uri, "attribute", group))
                continue
            self.attributed.inc()
            self.rows.inc(len(group))
            self.evaluations.inc(sum(r.gradient_evaluations for r in group))
            self.unconverged.inc(sum(not r.converged for r in group))
            yield image, group


class AttributeImages(beam.PTransform):
    """DecodedImage -> ((DecodedImage, [Attribution]), errors), batched before the model."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings

    def expand(self, images):
        size = self.settings.image_batch_size
        return (images
                # fixed-size batches: the engine packs rows best across many images, and
                # Beam's adaptive sizing started at 1 image (mean 8.7 of 16 in a benchmark)
                | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
                | "IntegratedGradients" >> beam.ParDo(AttributeFn(self.settings, shared.Shared()))
                .with_outputs(ERRORS, main="attributed"))
