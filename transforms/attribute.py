"""Attribute batches of decoded images with the engine; the model is loaded once per process."""

from __future__ import annotations

import gc
import queue
import threading
from concurrent.futures import Future

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from attribution import faithfulness, methods, randomization
from attribution.baselines import make_baseline, seed_for
from attribution.images import pad_geometry
from attribution.integrated_gradients import engine_for
from attribution.methods.cam import Cam
from attribution.methods.config import CAMS
from attribution.models import load_model
from attribution.targets import Targets
from transforms.files import mark_model_load
from transforms.progress import CountsProgress
from transforms.records import ERRORS, NAMESPACE, error_row
from transforms.regions import join_boxes, region_key
from transforms.settings import Settings


class _ProcessModel:
    """What each worker process holds once: the loaded model and the engine around it."""

    def __init__(self, settings: Settings):
        model = load_model(
            settings.model,
            image_size=settings.image_size,
            model_output=settings.model_output,
            output_key=settings.output_key,
            preprocess=settings.preprocess,
            precision=settings.precision,
            reuse=not settings.randomize,
        )  # randomized in place: a private copy
        if model.fingerprint != settings.model_fingerprint:
            raise RuntimeError(
                f"the model at {settings.model} changed since the job started "
                f"(fingerprint {model.fingerprint[:12]}, expected "
                f"{settings.model_fingerprint[:12]}): rerun the job"
            )
        if settings.randomize:  # pipeline.sanity: every worker draws the same weights
            randomization.randomize(model.variables, settings.randomize, settings.seed)
        self.engine = engine_for(model, settings)
        self.cam = None
        if settings.attribution in CAMS:  # the --layer resolved when the job started
            self.cam = Cam(
                model.features(settings.layer),
                self.engine,
                plus_plus=settings.attribution == "gradcam_plus_plus",
            )


class ComputeThread:
    """One daemon thread that runs the submitted calls in turn. A daemon, unlike a
    ThreadPoolExecutor's thread, does not hold the process at exit: an interrupted job stops
    within the model call it is in, not after the batches it had queued."""

    def __init__(self, name: str):
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self.calls.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        self.calls.put(None)

    def _run(self) -> None:
        while (call := self.calls.get()) is not None:
            future, fn, args = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the bundle's thread
                    future.set_exception(e)


class AttributeFn(CountsProgress, beam.DoFn):
    """[DecodedImage] or (DecodedImage, boxes) after the regions join -> (DecodedImage,
    [Attribution], [faithfulness.Evidence]) per image, with its boxes when joined; failures to
    ERRORS. The evidence (deletion/insertion curves against the first --baseline, region
    ablation) is computed with forward rows packed across the batch into the engine's
    fixed-size calls.

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
        self.forward_rows = Metrics.counter(NAMESPACE, "faithfulness_forward_rows")

    def setup(self):
        self.model = None  # loaded at the first batch: a worker with nothing to compute never loads
        self.targets = Targets.parse(self.settings.target)
        self.config = self.settings.method_config
        # One thread computes the batches in turn: while it runs the model on a batch, this
        # thread hands the previous batch's images downstream (masks, overlays, statistics,
        # Parquet rows, Beam's per-element work), which the model's calls would otherwise wait
        # for. TensorFlow releases the GIL while it computes.
        self.compute = ComputeThread("attribute")
        self.pending = None  # (future, window, timestamp) of the batch being computed
        self._forward = 0  # forward rows, counted on the compute thread, emitted by _emit

    def start_bundle(self):
        self.pending = None  # a failed bundle's queued batch is not this bundle's

    def teardown(self):
        self.compute.shutdown()

    def _load(self) -> int:
        """Acquire the process's model; the number of loads it took (0 when another DoFn in
        this process had loaded it)."""
        loads = []

        def load():
            loads.append(1)
            return _ProcessModel(self.settings)

        self.model = self.shared_handle.acquire(load, tag=self.settings.model_fingerprint)
        gc.freeze()  # the model and TensorFlow's objects live as long as the worker: not
        # walked again by every full collection (0.2 s each in a worker holding TensorFlow)
        if loads:
            mark_model_load(self.settings.output_dir)  # counted by the commit (manifest)
        return len(loads)

    def _explain(self, images, references):
        """One list of results per image, by the --attribution method (attribution/methods)."""
        return methods.explain(
            self.model.engine,
            [d.image for d in images],
            [d.content_sha256 for d in images],
            self.targets,
            self.config,
            references,
            cam=self.model.cam,
        )

    def _evidence(self, images, groups, boxes_list):
        """Deletion/insertion curves, MuFidelity and region ablation for every row."""
        s = self.settings
        items = []
        baselines = [
            make_baseline(
                self.config.baselines[0], image.image, key=image.content_sha256, seed=s.seed
            )
            for image in images
        ]
        # A row's baseline_score is F(that baseline) only for plain IG from one baseline; the
        # other methods report a mean or another start, so deletion's 100% point is scored.
        rescore = not (self.config.attribution == "ig" and len(self.config.baselines) == 1)
        baseline_scores = (
            self.model.engine.scores(np.stack(baselines))
            if rescore and s.faithfulness and images
            else None
        )
        for i, (image, group, boxes) in enumerate(zip(images, groups, boxes_list)):
            baseline = baselines[i]
            geometry = pad_geometry((image.height, image.width), image.image.shape[:2])
            model_boxes = [(name, geometry.box_to_model(box)) for name, box in boxes or []]
            for result in group:
                item = faithfulness.Item.of(
                    result, image.image, baseline, image.content_sha256, model_boxes
                )
                if baseline_scores is not None:
                    item.baseline_score = float(baseline_scores[i, result.target])
                items.append(item)
        if not (s.faithfulness or any(item.boxes for item in items)):
            return [[None] * len(group) for group in groups]
        evidence = iter(
            faithfulness.evaluate(
                self.model.engine,
                items,
                kinds=s.faithfulness,
                points=s.faithfulness_points,
                seed=s.seed,
                blur_baseline=False,
                fill=s.deletion_fill,
                subsets=s.mufidelity_subsets,
                fraction=s.mufidelity_fraction,
                grid=s.mufidelity_grid,
            )
        )
        out = [[next(evidence) for _ in group] for group in groups]
        self._forward += sum(e.forward_rows for group in out for e in group)
        return out

    def _attribute(self, images, boxes_list, references):
        groups = self._explain(images, references)
        return list(zip(groups, self._evidence(images, groups, boxes_list)))

    def _batch(self, elements, references):
        """(model loads or None, forward rows, [(image, boxes, joined, (results, evidence) or
        the exception that failed it)]); runs on the compute thread (no Beam metrics here:
        _emit counts them on the bundle's thread)."""
        loads = self._load() if self.model is None else None
        forward = self._forward
        joined = [isinstance(e, tuple) for e in elements]  # (image, boxes) after the join
        images = [e[0] if j else e for e, j in zip(elements, joined)]
        boxes_list = [e[1] if j else None for e, j in zip(elements, joined)]
        try:
            groups = self._attribute(images, boxes_list, references)
        except Exception:  # noqa: BLE001 - isolate the image that breaks the batch
            groups = []
            for image, boxes in zip(images, boxes_list):
                try:
                    groups.extend(self._attribute([image], [boxes], references))
                except Exception as e:  # noqa: BLE001
                    groups.append(e)
        return loads, self._forward - forward, list(zip(images, boxes_list, joined, groups))

    def _emit(self, done):
        """The outputs of one computed batch (the bundle's thread: metrics count here)."""
        loads, forward_rows, batch = done
        if loads is not None:  # this batch loaded the model: 0 when another DoFn had
            self.model_loads.inc(loads)
        if forward_rows:
            self.forward_rows.inc(forward_rows)
        self.progress(len(batch))
        for image, boxes, was_joined, result in batch:
            if isinstance(result, Exception):
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(ERRORS, error_row(image.uri, "attribute", result))
                continue
            group, evidence = result
            self.attributed.inc()
            self.rows.inc(len(group))
            self.evaluations.inc(sum(r.gradient_evaluations for r in group))
            # converged is None for the methods without completeness (gradcam, occlusion, rise)
            self.unconverged.inc(sum(r.converged is False for r in group))
            yield ((image, group, evidence), boxes) if was_joined else (image, group, evidence)

    def process(
        self,
        elements,
        window=beam.DoFn.WindowParam,
        timestamp=beam.DoFn.TimestampParam,
        references=None,  # after Beam's parameters: Beam fills them by their place
    ):
        # this batch is queued behind the one being computed; that one's outputs go downstream
        # while this one computes: at most two batches are held
        queued = (self.compute.submit(self._batch, elements, references), window, timestamp)
        previous, self.pending = self.pending, queued
        if previous is not None:
            yield from self._windowed(previous)

    def finish_bundle(self):
        pending, self.pending = self.pending, None
        if pending is not None:
            yield from self._windowed(pending)
        super().finish_bundle()

    def _wait(self, future):
        """The batch's outputs once the compute thread has them (the bundle's thread idles
        here while the model works: benchmarks.worker times it)."""
        return future.result()

    def _windowed(self, pending):
        """A computed batch's outputs in the window and at the timestamp of its input."""
        future, window, timestamp = pending
        for out in self._emit(self._wait(future)):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(
                    out.tag, WindowedValue(out.value, timestamp, [window])
                )
            else:
                yield WindowedValue(out, timestamp, [window])


class AttributeImages(beam.PTransform):
    """DecodedImage -> ((DecodedImage, [Attribution], [Evidence]), errors), batched before
    the model. ``regions`` (a PCollection of (region key, (index, name, box)), as Summarize
    takes it): joined with the images before the model, so each box can be ablated (one
    forward row each); the elements then carry their boxes on to Summarize."""

    def __init__(self, settings: Settings, regions=None, shared_handle=None):
        super().__init__()
        self.settings, self.regions = settings, regions
        self.shared_handle = shared_handle or shared.Shared()  # shared with later model steps

    def expand(self, images):
        size = self.settings.image_batch_size
        side = {}
        if self.settings.attribution == "expected_gradients":
            side["references"] = beam.pvalue.AsSingleton(
                images | "SampleBaselines" >> SampleBaselines(self.settings)
            )
        if self.regions is not None:
            keyed = images | "KeyByUri" >> beam.Map(lambda image: (region_key(image.uri), image))
            images = join_boxes(keyed, self.regions)
        return (
            images
            # fixed-size batches: the engine packs rows best across many images, and
            # Beam's adaptive sizing started at 1 image (mean 8.7 of 16 in a benchmark)
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "IntegratedGradients"
            >> beam.ParDo(AttributeFn(self.settings, self.shared_handle), **side).with_outputs(
                ERRORS, main="attributed"
            )
        )


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
        return (
            images
            | "Sample"
            >> beam.combiners.Top.Of(
                count, key=lambda d: seed_for(f"baseline:{d.content_sha256}", seed), reverse=True
            )
            | "Stack"
            >> beam.Map(
                lambda sample: (
                    np.stack([d.image for d in sample])
                    if sample
                    else np.zeros((0, *size, 3), np.float32)
                )
            )
        )
