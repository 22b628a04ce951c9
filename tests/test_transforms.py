"""Each Beam step on small inputs with TestPipeline and assert_that; metrics read back."""

import io
import os
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from attribution.images import pad_geometry
from attribution.integrated_gradients import Attribution
from attribution.models import load_model
from pipeline.progress import ProgressReporter
from transforms.attribute import AttributeImages
from transforms.ids import image_id
from transforms.inputs import InputSpec, ReadInputs
from transforms.progress import CountsProgress, tally
from transforms.records import NAMESPACE, DecodedImage
from transforms.regions import load_regions, pattern_root
from transforms.settings import Settings
from transforms.summarize import Summarize


def counters(result):
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    return {c.key.metric.name: c.committed for c in query["counters"]}


def settings_for(model_path, out, **overrides):
    model = load_model(model_path)
    return Settings(
        model=model_path,
        output_dir=str(out),
        image_size=model.image_size,
        num_classes=model.num_classes,
        model_fingerprint=model.fingerprint,
        steps=4,
        tolerance=None,
        **overrides,
    )


def decoded(uri, seed, size=16):
    image = np.random.default_rng(seed).random((size, size, 3), dtype=np.float32)
    return DecodedImage(uri, image_id(uri), size, size, f"sha-{seed}", image)


def test_read_images_decodes_good_files_and_dead_letters_the_rest(tmp_path):
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    pipeline = TestPipeline()
    settings = Settings(
        model="unused",
        output_dir=str(tmp_path / "out"),
        image_size=(8, 8),
        num_classes=1,
        model_fingerprint="unused",
        max_pixels=10_000,
    )
    outputs = pipeline | ReadInputs(InputSpec(pattern=f"{tmp_path}/*"), settings)
    shapes = outputs.images | beam.Map(
        lambda d: (
            os.path.basename(d.uri),
            d.width,
            d.height,
            d.image.shape,
            float(d.image[4, 4, 0]),
        )
    )
    assert_that(shapes, equal_to([("red.png", 20, 10, (8, 8, 3), 1.0)]), label="Images")
    stages = outputs.errors | beam.Map(lambda e: (os.path.basename(e["image_uri"]), e["stage"]))
    assert_that(stages, equal_to([("broken.jpg", "decode")]), label="Errors")
    result = pipeline.run()
    result.wait_until_finish()
    assert counters(result)["matched"] == 2 and counters(result)["failed"] == 1


def test_attribute_images_loads_the_model_once_and_counts_its_work(tiny_model, tmp_path):
    settings = settings_for(tiny_model, tmp_path, target="topk:2")
    images = [decoded(f"mem://{i}.png", i) for i in range(5)]
    pipeline = TestPipeline()
    outputs = pipeline | beam.Create(images) | AttributeImages(settings)
    per_image = outputs.attributed | beam.Map(lambda e: (e[0].uri, [r.steps for r in e[1]]))
    assert_that(per_image, equal_to([(d.uri, [4, 4]) for d in images]), label="Attributed")
    assert_that(outputs.errors, equal_to([]), label="NoErrors")
    result = pipeline.run()
    result.wait_until_finish()
    c = counters(result)
    assert (c["model_loads"], c["attributed"], c["rows"]) == (1, 5, 10)
    assert c["gradient_evaluations"] == 5 * 2 * 4


def test_attribute_images_isolates_an_image_that_breaks_the_batch(tiny_model, tmp_path):
    settings = settings_for(tiny_model, tmp_path)
    good = [decoded(f"mem://{i}.png", i) for i in range(3)]
    bad = decoded("mem://wrong-size.png", 9, size=12)  # not the model's size
    pipeline = TestPipeline()
    outputs = pipeline | beam.Create([*good, bad]) | AttributeImages(settings)
    assert_that(
        outputs.attributed | beam.Map(lambda e: e[0].uri),
        equal_to([d.uri for d in good]),
        label="Good",
    )
    assert_that(
        outputs.errors | beam.Map(lambda e: (e["image_uri"], e["stage"])),
        equal_to([(bad.uri, "attribute")]),
        label="Bad",
    )
    pipeline.run().wait_until_finish()


def test_attribute_images_over_many_batches_outputs_each_image_once(tiny_model, tmp_path):
    """The model computes one batch while the previous one goes downstream: over batches of 2,
    with a bad image in the third, every image comes out once, as a row or an error."""
    settings = settings_for(tiny_model, tmp_path, image_batch_size=2)
    good = [decoded(f"mem://{i}.png", i) for i in range(6)]
    bad = decoded("mem://wrong-size.png", 9, size=12)
    pipeline = TestPipeline()
    outputs = pipeline | beam.Create([*good[:4], bad, *good[4:]]) | AttributeImages(settings)
    assert_that(
        outputs.attributed | beam.Map(lambda e: e[0].uri),
        equal_to([d.uri for d in good]),
        label="Good",
    )
    assert_that(outputs.errors | beam.Map(lambda e: e["image_uri"]), equal_to([bad.uri]))
    result = pipeline.run()
    result.wait_until_finish()
    c = counters(result)
    assert (c["model_loads"], c["attributed"], c["rows"], c["failed"]) == (1, 6, 6, 1)


def test_attribute_fn_hands_a_batch_downstream_while_the_next_one_computes(tiny_model, tmp_path):
    """process(batch 2) yields batch 1's outputs; finish_bundle yields the last batch's, in
    the window and at the timestamp of its input."""
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.shared import Shared
    from apache_beam.utils.timestamp import Timestamp
    from apache_beam.utils.windowed_value import WindowedValue

    from transforms.attribute import AttributeFn

    fn = AttributeFn(settings_for(tiny_model, tmp_path), Shared())
    fn.setup()
    first, second = [decoded("mem://a.png", 1)], [decoded("mem://b.png", 2)]
    window, stamp = GlobalWindow(), Timestamp(5)
    try:
        assert list(fn.process(first, window, stamp)) == []
        out = list(fn.process(second, window, Timestamp(6)))
        assert [(o.value[0].uri, o.timestamp, o.windows) for o in out] == [
            ("mem://a.png", stamp, [window])
        ]
        last = list(fn.finish_bundle())
        assert all(isinstance(o, WindowedValue) for o in last)
        assert [(o.value[0].uri, o.timestamp) for o in last] == [("mem://b.png", Timestamp(6))]
        assert list(fn.finish_bundle()) == []  # nothing is held after the bundle
    finally:
        fn.teardown()


def _attribution(target, attributions):
    return Attribution(
        key=0,
        target=target,
        predicted_class=target,
        predicted_score=0.9,
        target_score=0.9,
        baseline_score=0.1,
        baseline_predicts_target=False,
        attributions=attributions,
        attribution_sum=float(attributions.sum()),
        completeness_error=0.0,
        relative_completeness_error=0.0,
        converged=True,
        method="gausslegendre",
        steps=4,
        gradient_evaluations=4,
        path_alphas=np.array([0, 1], np.float32),
        path_scores=np.array([0.1, 0.9], np.float32),
    )


def test_summarize_writes_files_rows_and_region_masses_through_the_padding(tmp_path):
    # a 32x16 (w x h) original padded into 16x16: content rows 4..11, columns 0..15
    settings = Settings(
        model="m",
        output_dir=str(tmp_path),
        image_size=(16, 16),
        num_classes=3,
        model_fingerprint="f" * 64,
        labels=("a", "b", "c"),
        write_raw=True,
    )
    geometry = pad_geometry((16, 32), (16, 16))
    assert geometry.content_box == (0, 4, 16, 12)
    attributions = np.zeros((16, 16, 3), np.float32)
    attributions[4:12, 0:8, 0] = 1.0  # left half of the original: 64 units
    attributions[4:12, 8:16, 0] = 3.0  # right half: 192 units
    image = DecodedImage(
        "/data/wide.png", "wide-1", 32, 16, "sha", np.zeros((16, 16, 3), np.float32)
    )
    boxes = [("left", (0, 0, 16, 16)), ("right", (16, 0, 32, 16)), ("left quarter", (0, 0, 8, 16))]

    def check(rows):
        (row,) = rows
        masses = {r["name"]: (r["mass_fraction"], r["pointing_hit"]) for r in row["regions"]}
        assert masses["left"][0] == pytest.approx(0.25)
        assert masses["right"][0] == pytest.approx(0.75)
        assert masses["left quarter"][0] == pytest.approx(0.125)
        assert masses["right"][1] and not masses["left"][1]
        assert row["target_label"] == "b" and row["settings_hash"] == settings.settings_hash
        assert Image.open(row["mask_uri"]).size == (16, 16)
        assert np.load(row["raw_uri"]).sum() == pytest.approx(256.0)

    pipeline = TestPipeline()
    # regions arrive as a keyed PCollection (transforms/regions.py), joined by uri
    regions = pipeline | "Regions" >> beam.Create(
        [("/data/wide.png", (i, name, box)) for i, (name, box) in enumerate(boxes)]
        + [("/data/other.png", (9, "unmatched", (0, 0, 1, 1)))]
    )
    outputs = (
        pipeline
        | beam.Create([(image, [_attribution(1, attributions)])])
        | Summarize(settings, regions)
    )
    assert_that(outputs.rows, check)
    pipeline.run().wait_until_finish()
    assert (tmp_path / "masks" / "wide-1.png").exists()


def test_summarize_dead_letters_an_attribution_it_cannot_draw(tmp_path):
    settings = Settings(
        model="m", output_dir=str(tmp_path), image_size=(4, 4), num_classes=2, model_fingerprint="f"
    )
    image = DecodedImage("/x.png", "x-1", 4, 4, "sha", np.zeros((4, 4, 3), np.float32))
    broken = np.full((4, 4, 3), np.nan, np.float32)
    pipeline = TestPipeline()
    outputs = pipeline | beam.Create([(image, [_attribution(0, broken)])]) | Summarize(settings)
    assert_that(outputs.rows, equal_to([]), label="NoRows")
    assert_that(
        outputs.errors | beam.Map(lambda e: (e["image_uri"], e["stage"])),
        equal_to([("/x.png", "write")]),
        label="Errors",
    )
    pipeline.run().wait_until_finish()
    assert not os.path.exists(tmp_path / "masks")


@pytest.mark.parametrize(
    "uri",
    [
        "/a/b/photo.jpg",
        "gs://bucket/x y/ünï 名前.png",
        "/a/../../etc/passwd",
        "/a/.hidden",
        "/a/b/..",
        "C:\\evil\\..\\x.png",
        "/a/" + "x" * 300 + ".png",
        "/a/....",
    ],
)
def test_image_ids_are_single_safe_file_names(uri):
    value = image_id(uri)
    assert value == image_id(uri)
    assert set(value) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert not value.startswith("-") and len(value) <= 61


def test_image_ids_are_unique_for_different_uris():
    uris = ["/a/x.png", "/b/x.png", "/a/x.jpg", "/a/x png", "/a/x_png"]
    assert len({image_id(u) for u in uris}) == len(uris)


def test_regions_from_csv_and_parquet_with_relative_and_full_paths(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text(
        "image,region,x0,y0,x1,y1\nsub/a.png,object,1,2,3,4\n"
        "gs://b/c.png,cue,0,0,5,5\nsub/a.png,cue,5,5,6,6\n"
    )
    regions = load_regions(str(csv), "/data/imgs/**/*.png")
    assert regions["/data/imgs/sub/a.png"] == [("object", (1, 2, 3, 4)), ("cue", (5, 5, 6, 6))]
    assert regions["gs://b/c.png"] == [("cue", (0, 0, 5, 5))]
    table = pa.table(
        {"image": ["a.png"], "region": ["x"], "x0": [0], "y0": [0], "x1": [1], "y1": [1]}
    )
    pq.write_table(table, tmp_path / "r.parquet")
    assert load_regions(str(tmp_path / "r.parquet"), "gs://b/imgs/*.png") == {
        "gs://b/imgs/a.png": [("x", (0, 0, 1, 1))]
    }
    assert pattern_root("gs://b/imgs/*.png") == "gs://b/imgs"


@pytest.mark.parametrize(
    "text,message",
    [
        ("image,region,x0\na,b,1\n", "missing columns"),
        ("image,region,x0,y0,x1,y1\na,b,5,0,1,1\n", "x1 < x0"),
    ],
)
def test_bad_region_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_regions(str(path), "/x/*")


def test_progress_tallies_across_workers_and_prints_rate_and_eta(tmp_path):
    for count in (3, 4):
        counting = CountsProgress()
        counting.progress_folder = str(tmp_path)
        for _ in range(count):
            counting.progress()
        counting.finish_bundle()
    CountsProgress().progress()  # no folder: counts nothing, writes nothing
    assert tally(str(tmp_path)) == 7
    stream = io.StringIO()
    line = ProgressReporter(str(tmp_path), matched=10, interval=1, stream=stream).line()
    assert line.startswith("progress: 7/10 images (70%)") and "images/s" in line
    assert "ETA" in line


def test_a_new_bundle_does_not_emit_a_failed_bundles_batch(tiny_model, tmp_path):
    """A bundle that failed after queueing a batch leaves it pending; Beam may retry on the
    same DoFn instance, and that bundle must emit only its own images."""
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.shared import Shared
    from apache_beam.utils.timestamp import Timestamp

    from transforms.attribute import AttributeFn

    fn = AttributeFn(settings_for(tiny_model, tmp_path), Shared())
    fn.setup()
    try:
        fn.start_bundle()
        assert (
            list(fn.process([decoded("mem://failed.png", 1)], GlobalWindow(), Timestamp(0))) == []
        )
        fn.start_bundle()  # the failed bundle never reached finish_bundle
        retried = fn.process([decoded("mem://retried.png", 2)], GlobalWindow(), Timestamp(0))
        assert list(retried) == []  # not the failed bundle's image
        assert [o.value[0].uri for o in fn.finish_bundle()] == ["mem://retried.png"]
    finally:
        fn.teardown()


def test_the_compute_thread_does_not_hold_the_process_at_exit(tmp_path):
    """An interrupted job exits within the model call it is in: a process whose compute
    thread is busy for a minute, with a second call queued, ends as soon as its main thread
    does (a ThreadPoolExecutor's thread would hold it until both calls ran)."""
    import subprocess
    import sys

    script = (
        "import time; from transforms.attribute import ComputeThread; "
        "c = ComputeThread('t'); c.submit(time.sleep, 60); c.submit(time.sleep, 60); "
        "time.sleep(0.5); print('main thread done', flush=True)"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": repo},
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0 and "main thread done" in done.stdout, done.stderr[-2000:]
    assert time.monotonic() - started < 55  # not the 120 s of the two queued calls


def test_the_compute_thread_hands_results_and_errors_back_in_order():
    from transforms.attribute import ComputeThread

    compute = ComputeThread("t")
    ok = compute.submit(lambda a, b: a + b, 2, 3)
    bad = compute.submit(lambda: 1 / 0)
    after = compute.submit(str.upper, "next")
    assert ok.result(timeout=30) == 5
    with pytest.raises(ZeroDivisionError):
        bad.result(timeout=30)
    assert after.result(timeout=30) == "NEXT"  # a failed call does not stop the thread
    compute.shutdown()
    compute.thread.join(timeout=30)
    assert not compute.thread.is_alive()
