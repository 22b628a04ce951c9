"""Attribute batches of decoded images with the engine; the model is loaded once per process."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from attribution import methods
from attribution.baselines import seed_for
from attribution.integrated_gradients import IntegratedGradients, Targets
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
                           preprocess=settings.preprocess, precision=settings.precision)
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
        self.config = self.settings.method_config

    def _load(self):
        loads = []

        def load():
            loads.append(1)
            return _ProcessModel(self.settings)
        self.model = self.shared_handle.acquire(load, tag=self.settings.model_fingerprint)
        self.model_loads.inc(len(loads))  # 0 when another DoFn in this process loaded it
        if loads:
            mark_model_load(self.settings.output_dir)  # counted by the commit (manifest)

    def _explain(self, images, references):
        """One list of results per image, by the --attribution method (attribution/methods)."""
        return methods.explain(self.model.engine, [d.image for d in images],
                               [d.content_sha256 for d in images], self.targets, self.config,
                               references)

    def process(self, images, references=None):
        if self.model is None:
            self._load()
        try:
            groups = self._explain(images, references)
        except Exception:  # noqa: BLE001 - isolate the image that breaks the batch
            groups = []
            for image in images:
                try:
                    groups.append(self._explain([image], references)[0])
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
        side = {}
        if self.settings.attribution == "expected_gradients":
            side["references"] = beam.pvalue.AsSingleton(
                images | "SampleBaselines" >> SampleBaselines(self.settings))
        return (images
                # fixed-size batches: the engine packs rows best across many images, and
                # Beam's adaptive sizing started at 1 image (mean 8.7 of 16 in a benchmark)
                | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
                | "IntegratedGradients" >> beam.ParDo(AttributeFn(self.settings, shared.Shared()),
                                                      **side)
                .with_outputs(ERRORS, main="attributed"))


class SampleBaselines(beam.PTransform):
    """DecodedImage -> one float32 [K, H, W, 3] array: the --baseline_samples images with the
    smallest seeded hash of their content, a reproducible sample of the input set (the
    expected-gradients baselines, handed to every worker as a side input)."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings

    def expand(self, images):
        seed, count = self.settings.seed, self.settings.baseline_samples
        size = self.settings.image_size
        return (images
                | "Sample" >> beam.combiners.Top.Of(
                    count, key=lambda d: seed_for(f"baseline:{d.content_sha256}", seed),
                    reverse=True)
                | "Stack" >> beam.Map(lambda sample: np.stack(
                    [d.image for d in sample]) if sample else np.zeros((0, *size, 3),
                                                                     np.float32)))
