"""The job end to end with every --attribution, on real photos and a tiny model."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from job_argv import job_argv
from PIL import Image
from skimage import data

from attribution.methods import ATTRIBUTIONS
from attribution.methods.config import PIXEL_MAPS
from pipeline import run as job
from transforms.write import SUMMARY_SCHEMA

FAST = [
    "--steps",
    "4",
    "--tolerance",
    "0.05",
    "--max_steps",
    "16",
    "--progress_interval",
    "0",
    "--no_report",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).resize((48, 40)).save(folder / f"{name}.png")
    return folder


def rows(out):
    return pq.read_table(os.path.join(out, "summaries")).to_pylist()


# the pixel-map methods (no path, no completeness): tests/test_pixel_methods.py
@pytest.mark.parametrize("attribution", [a for a in ATTRIBUTIONS if a not in PIXEL_MAPS])
def test_every_method_runs_end_to_end_and_reports_itself(attribution, tiny_model, photos, tmp_path):
    out = tmp_path / "out"
    extra = {
        "smoothgrad": ["--noise_samples", "2"],
        "guided_ig": ["--steps", "8"],
        "expected_gradients": ["--baseline_samples", "3"],
    }.get(attribution, [])
    code = job.main(
        [
            *job_argv(str(photos / "*.png"), str(out), tiny_model),
            "--attribution",
            attribution,
            "--target",
            "topk:2",
            *FAST,
            *extra,
        ]
    )
    assert code == 0
    table = pq.read_table(out / "summaries")
    assert table.schema.names == SUMMARY_SCHEMA.names
    got = rows(out)
    assert len(got) == 8 and {r["attribution"] for r in got} == {attribution}
    assert not os.listdir(out / "errors") or not pq.read_table(out / "errors").num_rows
    for row in got:
        assert np.isfinite(row["attribution_sum"]) and row["gradient_evaluations"] > 0
        assert os.path.getsize(row["mask_uri"]) > 0 and os.path.getsize(row["overlay_uri"]) > 0
        if attribution == "xrai":
            ranks = row["xrai_region_ranks"]
            assert ranks and abs(sum(r["segment_area_fraction"] for r in ranks) - 1) < 1e-6
            gains = [r["gain"] for r in ranks]
            assert gains[:-1] == sorted(gains[:-1], reverse=True)
        else:
            assert row["xrai_region_ranks"] is None
    if attribution == "guided_ig":
        assert {r["steps"] for r in got} == {8}
    if attribution in ("ig", "blur_ig", "smoothgrad", "xrai"):
        assert max(r["relative_completeness_error"] for r in got) < 0.05
    if attribution == "blur_ig":
        assert {r["baseline"] for r in got} == {"blur:20"}


def test_expected_gradients_side_input_is_a_seeded_sample_and_method_selects_the_rule(
    tiny_model, photos, tmp_path
):
    common = [
        "--input_pattern",
        str(photos / "*.png"),
        "--model",
        tiny_model,
        "--attribution",
        "expected_gradients",
        "--baseline_samples",
        "2",
        *FAST,
    ]
    for name in ("a", "b"):
        assert job.main([*common, "--output_dir", str(tmp_path / name)]) == 0
    a, b = (sorted(rows(tmp_path / n), key=lambda r: r["image_id"]) for n in "ab")
    assert [r["attribution_sum"] for r in a] == [r["attribution_sum"] for r in b]
    assert {r["method"] for r in a} == {"random_alpha"} and {r["steps"] for r in a} == {1}
    assert (
        job.main([*common, "--output_dir", str(tmp_path / "q"), "--method", "riemann_trapezoid"])
        == 0
    )
    q = rows(tmp_path / "q")
    assert {r["method"] for r in q} == {"riemann_trapezoid"}
    # the quadrature rule per (image, reference) pair: completeness holds pair by pair
    assert max(r["relative_completeness_error"] for r in q) < 0.05


def test_averaged_baselines_and_visualization_options(tiny_model, photos, tmp_path):
    out = tmp_path / "out"
    code = job.main(
        [
            *job_argv(str(photos / "*.png"), str(out), tiny_model),
            "--baseline",
            "black,white",
            *FAST,
            "--mask_polarity",
            "both",
            "--clip_low",
            "5",
            "--clip_high",
            "95",
            "--colormap",
            "viridis",
            "--overlay",
            "grayscale",
            "--mask_type",
            "outlines",
        ]
    )
    assert code == 0
    got = rows(out)
    assert {r["baseline"] for r in got} == {"black,white"}
    assert all(r["gradient_evaluations"] >= 8 for r in got)  # two IGs of >= 4 points
    plain = tmp_path / "plain"
    assert (
        job.main(
            [
                *job_argv(str(photos / "*.png"), str(plain), tiny_model),
                *FAST,
            ]
        )
        == 0
    )
    styled = {r["image_id"]: r for r in got}
    for row in rows(plain):
        other = styled[row["image_id"]]
        assert row["settings_hash"] != other["settings_hash"]
        assert (
            np.asarray(Image.open(row["mask_uri"])) != np.asarray(Image.open(other["mask_uri"]))
        ).any()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--baseline", "black,purple"], "--baseline must be a comma list"),
        (["--baseline", "black,black"], "twice"),
        (["--attribution", "smoothgrad", "--noise_sigma", "0"], "--noise_sigma must be > 0"),
        (["--noise_samples", "0"], "--noise_samples must be from 1 to 1024"),
        (["--noise_samples", "100000"], "--noise_samples must be from 1 to 1024"),
        (["--baseline_samples", "100000"], "--baseline_samples must be from 1 to 1024"),
        (["--guided_fraction", "1.5"], "--guided_fraction must be in (0, 1]"),
        (["--xrai_top_fraction", "0"], "--xrai_top_fraction must be in (0, 1]"),
        (["--clip_low", "99.5"], "--clip_low and --clip_high"),
        (["--colormap", "nope"], "not a matplotlib colormap"),
    ],
)
def test_bad_method_options_are_refused_before_any_work(
    argv, message, tiny_model, photos, tmp_path, capsys
):
    out = tmp_path / "out"
    code = job.main(
        [
            *job_argv(str(photos / "*.png"), str(out), tiny_model),
            *argv,
        ]
    )
    assert code == 2 and message in capsys.readouterr().err and not out.exists()
