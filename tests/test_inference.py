"""The RunInference model handler inside TestPipeline: unkeyed, keyed, batching, metrics and
the dead letter; and the README's pipeline snippet, run as written."""

import os
import re

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    PredictionResult,
    RunInference,
)
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from attribution.integrated_gradients import IntegratedGradients, Request
from attribution.models import load_model
from transforms.inference import IntegratedGradientsModelHandler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"steps": 8, "tolerance": None, "method": "gausslegendre"}


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((16, 16, 3)).astype(np.float32) for _ in range(n)]


def oracle(model_path, batch):
    """The engine called directly, one image at a time."""
    model = load_model(model_path)
    engine = IntegratedGradients(model.fn, image_size=model.image_size, **SETTINGS)
    return [engine.attribute([Request(0, x, np.zeros_like(x))])[0] for x in batch]


def check_against(expected, key=lambda r: r):
    def check(results):
        assert len(results) == len(expected)
        for result in results:
            index, prediction = key(result)
            assert isinstance(prediction, PredictionResult)
            (attribution,) = prediction.inference
            want = expected[index]
            assert attribution.target == want.target
            np.testing.assert_allclose(
                attribution.attributions, want.attributions, rtol=1e-4, atol=1e-6
            )
            assert attribution.completeness_error == pytest.approx(
                want.completeness_error, rel=1e-3, abs=1e-7
            )
            assert attribution.completeness_error == pytest.approx(
                abs(
                    attribution.attribution_sum
                    - (attribution.target_score - attribution.baseline_score)
                ),
                abs=1e-6,
            )

    return check


def test_unkeyed_results_match_the_engine_and_batches_are_runinference_s(tiny_model):
    batch = images(5)
    expected = oracle(tiny_model, batch)
    handler = IntegratedGradientsModelHandler(
        tiny_model, min_batch_size=5, max_batch_size=5, **SETTINGS
    )
    assert handler.batch_elements_kwargs() == {"min_batch_size": 5, "max_batch_size": 5}
    p = TestPipeline()
    results = (
        p | beam.Create(list(enumerate(batch))) | beam.Map(lambda e: e[1]) | RunInference(handler)
    )
    find = lambda r: (next(i for i, x in enumerate(batch) if np.array_equal(x, r.example)), r)
    assert_that(results, check_against(expected, find))
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(
            MetricsFilter().with_namespace(handler.get_metrics_namespace())
        )["counters"]
    }
    assert counters["num_inferences"] == 5
    distributions = {
        d.key.metric.name: d.committed
        for d in result.metrics().query(
            MetricsFilter().with_namespace(handler.get_metrics_namespace())
        )["distributions"]
    }
    assert distributions["inference_batch_latency_micro_secs"].count == 1  # one batch of 5


def test_keyed_and_a_failing_image_goes_to_the_dead_letter(tiny_model):
    batch = images(3, seed=1)
    expected = oracle(tiny_model, batch)
    bad = np.zeros((16, 16, 2), np.float32)  # two channels: the engine refuses it
    handler = KeyedModelHandler(
        IntegratedGradientsModelHandler(tiny_model, max_batch_size=1, **SETTINGS)
    )
    with TestPipeline() as p:
        keyed = p | beam.Create([(f"img{i}", x) for i, x in enumerate(batch)] + [("bad", bad)])
        good, dead = keyed | RunInference(handler).with_exception_handling()
        assert_that(good, check_against(expected, lambda kv: (int(kv[0][3:]), kv[1])), label="Good")

        def check_dead(failures):
            assert len(failures) == 1
            ((key, image),) = failures[0][0]
            assert key == "bad" and image.shape == (16, 16, 2)
            assert "shape" in str(failures[0][1])

        assert_that(dead.failed_inferences, check_dead, label="Dead")


def test_bad_settings_are_refused_when_the_handler_is_made(tiny_model):
    with pytest.raises(ValueError, match="topk:K"):
        IntegratedGradientsModelHandler(tiny_model, target="top3")
    with pytest.raises(ValueError, match="baseline must be one of"):
        IntegratedGradientsModelHandler(tiny_model, baseline="grey")
    assert IntegratedGradientsModelHandler(
        tiny_model, share_model_across_processes=True
    ).share_model_across_processes()


def test_the_readme_snippet_runs_as_written(tiny_model, capsys):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    snippet = re.search(r"<!-- runinference -->\s*```python\n(.*?)```", readme, re.DOTALL).group(1)
    assert len(snippet.strip().splitlines()) <= 12
    code = snippet.replace('MODEL = "path/to/saved_model"', f"MODEL = {tiny_model!r}")
    assert code != snippet  # only the model path is replaced
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own code
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 * 2  # image index and relative completeness error per image


def test_a_model_shared_across_processes_gives_the_same_results(tiny_model):
    batch = images(2, seed=2)
    expected = oracle(tiny_model, batch)
    handler = IntegratedGradientsModelHandler(
        tiny_model, share_model_across_processes=True, max_batch_size=2, **SETTINGS
    )
    with TestPipeline() as p:
        keyed = p | beam.Create(list(enumerate(batch)))
        results = keyed | RunInference(KeyedModelHandler(handler))
        assert_that(results, check_against(expected, lambda kv: kv))
