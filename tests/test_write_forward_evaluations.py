"""The summaries' ``forward_evaluations`` column: the forward-only model rows each row used
(score_guided's scan, the faithfulness curves), equal to what the engine and
``attribution.faithfulness`` count when run on the same images outside the job."""

from __future__ import annotations

import glob

import numpy as np
import pyarrow.parquet as pq
from conftest import random_pngs
from job_argv import job_argv
from PIL import Image

from attribution import faithfulness, quadrature
from attribution.integrated_gradients import Request, engine_for
from attribution.models import load_model
from pipeline import run as job
from transforms.write import SUMMARY_SCHEMA

GUIDED = ["--method", quadrature.SCORE_GUIDED, "--steps", "5", "--tolerance", "0.05"]


def _rows(out):
    return {row["image_uri"].rsplit("/", 1)[-1]: row for row in pq.read_table(out).to_pylist()}


def _job(folder, out, model, *extra):
    argv = [*job_argv(f"{folder}/*.png", out, model), "--progress_interval", "0", *extra]
    assert job.main(argv) == 0
    return _rows(out / "summaries")


def test_the_column_sits_next_to_gradient_evaluations():
    names = SUMMARY_SCHEMA.names
    assert names.index("forward_evaluations") == names.index("gradient_evaluations") + 1


def _outside_the_job(model_path, folder, max_steps):
    """The engine's score_guided results on the folder's images, run outside the job."""
    engine = engine_for(
        load_model(model_path),
        {"method": quadrature.SCORE_GUIDED, "steps": 5, "tolerance": 0.05, "max_steps": max_steps},
    )
    paths = sorted(glob.glob(f"{folder}/*.png"))
    images = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0 for p in paths]
    results = engine.attribute([Request(i, x, np.zeros_like(x)) for i, x in enumerate(images)])
    return engine, paths, images, results


def _scan_bounds():
    """A scan's forward rows: the first round's inner knots, then at most SCAN_LEVELS rounds
    of bisections, which at the most reach every inner knot of the finest grid."""
    finest = quadrature.SCAN_INTERVALS * 2**quadrature.SCAN_LEVELS
    return len(quadrature.scan_alphas()), finest - 1


def test_it_equals_the_engines_scan_and_curve_rows(tiny_model, tmp_path):
    folder = random_pngs(tmp_path / "in", 3)
    rows = _job(folder, tmp_path / "out", tiny_model, *GUIDED, "--max_steps", "17")
    # the same math outside the job: the engine's scan, then the deletion/insertion curves
    engine, paths, images, results = _outside_the_job(tiny_model, folder, 17)
    items = [
        faithfulness.Item.of(r, x, np.zeros_like(x), str(i))
        for i, (r, x) in enumerate(zip(results, images))
    ]
    evidence = faithfulness.evaluate(engine, items)
    low, high = _scan_bounds()
    for path, result, found in zip(paths, results, evidence):
        row = rows[path.rsplit("/", 1)[-1]]
        assert low <= result.forward_evaluations <= high
        assert found.forward_rows > 0
        assert row["forward_evaluations"] == result.forward_evaluations + found.forward_rows
        assert row["gradient_evaluations"] == result.gradient_evaluations


def test_without_checks_it_is_the_scan_alone_and_zero_for_a_fixed_rule(tiny_model, tmp_path):
    folder = random_pngs(tmp_path / "in", 2)
    guided = _job(folder, tmp_path / "guided", tiny_model, *GUIDED, "--faithfulness", "none")
    plain = _job(folder, tmp_path / "plain", tiny_model, "--faithfulness", "none")
    _, paths, _, results = _outside_the_job(tiny_model, folder, 256)
    low, high = _scan_bounds()
    for path, result in zip(paths, results):
        assert low <= result.forward_evaluations <= high
        assert guided[path.rsplit("/", 1)[-1]]["forward_evaluations"] == result.forward_evaluations
    assert [row["forward_evaluations"] for row in plain.values()] == [0, 0]
