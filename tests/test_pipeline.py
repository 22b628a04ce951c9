"""End to end runs of the job: accounting, outputs, options, runners, retries."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from job_argv import DATAFLOW_DRY_RUN, job_argv
from PIL import Image

from pipeline import run as job
from transforms.write import ERROR_SCHEMA, SUMMARY_SCHEMA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT_SUMMARY_COLUMNS = [
    "image_uri",
    "image_id",
    "width",
    "height",
    "target_class",
    "target_label",
    "predicted_class",
    "predicted_score",
    "target_score",
    "baseline_score",
    "attribution_sum",
    "completeness_error",
    "relative_completeness_error",
    "steps",
    "gradient_evaluations",
    "method",
    "baseline",
    "mask_uri",
    "overlay_uri",
    "raw_uri",
]
CONTRACT_ERROR_COLUMNS = ["image_uri", "stage", "error_type", "message"]
FAST = ["--steps", "4", "--tolerance", "0.05", "--max_steps", "16", "--progress_interval", "0"]


def files_under(root):
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def read(out, folder):
    return pq.read_table(os.path.join(out, folder)).to_pylist()


def run_job(*argv):
    return job.main([str(a) for a in argv])


def test_mixed_folder_every_file_accounted_once_and_nothing_written_outside(
    tiny_model, mixed_folder, tmp_path
):
    folder, names, bad = mixed_folder
    out = tmp_path / "out"
    before = files_under(tmp_path)
    assert (
        run_job(
            *job_argv(f"{folder}/*", out, tiny_model),
            "--write_raw",
            *FAST,
        )
        == 0
    )
    summaries, errors = read(out, "summaries"), read(out, "errors")
    by_name = lambda rows: sorted(os.path.basename(r["image_uri"]) for r in rows)
    assert by_name(summaries) == sorted(names - bad)
    assert by_name(errors) == sorted(bad)
    stages = {os.path.basename(r["image_uri"]): (r["stage"], r["error_type"]) for r in errors}
    assert stages["bomb.png"] == ("decode", "DecompressionBomb")
    assert stages["zero bytes.png"] == ("decode", "EmptyFile")
    assert stages["truncated.jpg"][1] == "TruncatedImage"
    assert all(r["message"] for r in errors)

    written = files_under(tmp_path) - before
    assert all(p.startswith(str(out) + os.sep) for p in written), written
    assert not [p for p in written if ".tmp-" in p]
    for row in summaries:
        for key in ("mask_uri", "overlay_uri", "raw_uri"):
            path = row[key]
            assert os.path.dirname(os.path.dirname(path)) == str(out)
            assert os.path.basename(path).startswith(row["image_id"])
        assert Image.open(row["mask_uri"]).size == (16, 16)
        raw = np.load(row["raw_uri"])
        assert raw.shape == (16, 16, 3) and raw.dtype == np.float32
        assert np.isclose(raw.sum(), row["attribution_sum"], rtol=1e-4, atol=1e-7)
        assert row["relative_completeness_error"] <= 0.05 or not row["converged"]
    by_uri = {os.path.basename(r["image_uri"]): r for r in summaries}
    assert (by_uri["one pixel.png"]["width"], by_uri["one pixel.png"]["height"]) == (1, 1)
    assert (by_uri["rgb.png"]["width"], by_uri["rgb.png"]["height"]) == (32, 24)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["counts"]["matched"] == len(names)
    assert manifest["counts"]["attributed"] == len(names - bad)
    assert manifest["counts"]["failed"] == len(bad)
    assert manifest["counts"]["rows"] == len(summaries)
    assert manifest["metrics"]["model_loads"] == 1
    assert manifest["metrics"]["gradient_evaluations"] == sum(
        r["gradient_evaluations"] for r in summaries
    )
    assert manifest["model"]["input_size"] == [16, 16] and manifest["model"]["num_classes"] == 3
    for key in ("python", "tensorflow", "apache_beam", "numpy", "pyarrow"):
        assert manifest["versions"][key]
    assert manifest["config"]["steps"] == 4 and manifest["started_at"] <= manifest["finished_at"]
    assert "<html" in (out / "report.html").read_text()[:500].lower()


def test_parquet_schemas_hold_the_contract_columns(tiny_model, tmp_path):
    for name in CONTRACT_SUMMARY_COLUMNS:
        assert name in SUMMARY_SCHEMA.names
    assert ERROR_SCHEMA.names[:4] == CONTRACT_ERROR_COLUMNS
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(folder / "a.png")
    out = tmp_path / "out"
    assert (
        run_job("--input_pattern", f"{folder}/*", "--output_dir", out, "--model", tiny_model, *FAST)
        == 0
    )
    assert pq.read_schema(next((out / "summaries").glob("*.parquet"))).equals(SUMMARY_SCHEMA)
    assert pq.read_schema(next((out / "errors").glob("*.parquet"))).equals(ERROR_SCHEMA)
    row = read(out, "summaries")[0]
    assert row["raw_uri"] is None and row["regions"] is None
    assert len(row["grid"]) == 14 * 14 and np.isclose(sum(row["grid"]), 1, atol=1e-5)
    assert row["path_alphas"][0] == 0 and row["path_alphas"][-1] == 1


def test_image_ids_are_stable_across_runs(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a b.png", "a_b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    ids = []
    for run in ("one", "two"):
        assert (
            run_job(
                *job_argv(f"{folder}/*", tmp_path / run, tiny_model),
                *FAST,
            )
            == 0
        )
        ids.append({r["image_uri"]: r["image_id"] for r in read(tmp_path / run, "summaries")})
    assert ids[0] == ids[1] and len(set(ids[0].values())) == 3


def test_topk_regions_labels_and_failure_fraction(tiny_model, mixed_folder, tmp_path):
    folder, names, bad = mixed_folder
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nboat\n")
    regions = tmp_path / "regions.csv"
    regions.write_text(
        f"image,region,x0,y0,x1,y1\nrgb.png,left,0,0,16,24\n{folder}/rgb.png,right,16,0,32,24\n"
    )
    out = tmp_path / "out"
    code = run_job(
        *job_argv(f"{folder}/*", out, tiny_model),
        "--target",
        "topk:2",
        "--labels",
        labels,
        "--regions",
        regions,
        "--max_failure_fraction",
        "0.1",
        *FAST,
    )
    assert code == 1  # 5 of 16 failed: written in full, then a non-zero exit
    summaries = read(out, "summaries")
    assert len(summaries) == 2 * len(names - bad)
    assert {r["target_label"] for r in summaries} <= {"cat", "dog", "boat"}
    rgb = [r for r in summaries if r["image_uri"].endswith("/rgb.png")]
    assert sorted(r["target_rank"] for r in rgb) == [0, 1]
    for r in rgb:
        masses = {x["name"]: x["mass_fraction"] for x in r["regions"]}
        assert set(masses) == {"left", "right"}
        assert np.isclose(masses["left"] + masses["right"], 1.0, atol=1e-6)
        assert sum(x["pointing_hit"] for x in r["regions"]) == 1
    assert json.loads((out / "manifest.json").read_text())["complete"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--method", "simpson"], "invalid choice"),
        (["--steps", "-3"], "--steps must be >= 1"),
        (["--target", "top3"], "--target must be"),
        (["--max_failure_fraction", "2"], "--max_failure_fraction"),
        (["--image_size", "224"], "--image_size must be H,W"),
    ],
)
def test_bad_options_are_refused_before_any_work(tiny_model, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    try:  # argparse itself exits 2 on a bad choice; our validation returns 2
        code = run_job(
            "--input_pattern", f"{tmp_path}/*", "--output_dir", out, "--model", tiny_model, *argv
        )
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_output_dir_and_empty_pattern(tiny_model, tmp_path, capsys):
    assert run_job("--input_pattern", f"{tmp_path}/*.png", "--model", tiny_model) == 2
    assert "--output_dir is required" in capsys.readouterr().err
    assert (
        run_job(
            *job_argv(f"{tmp_path}/nothing/*.png", tmp_path / "out", tiny_model),
        )
        == 2
    )
    assert "matches no file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_model_that_cannot_load_stops_before_reading(mixed_folder, tmp_path, capsys):
    folder, _, _ = mixed_folder
    out = tmp_path / "out"
    assert (
        run_job(
            *job_argv(f"{folder}/*", out, tmp_path / "no-such-model"),
        )
        == 3
    )
    err = capsys.readouterr().err
    assert "no-such-model" in err and "nothing was read" in err
    assert not out.exists()


def test_config_file_with_flags_overriding_it(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "a.png")
    config = tmp_path / "profile.yaml"
    config.write_text(
        f"input_pattern: {folder}/*\nmodel: {tiny_model}\nmethod: riemann_trapezoid\n"
        "steps: 9\ntolerance: 0\nprogress_interval: 0\nwrite_raw: true\n"
    )
    out = tmp_path / "out"
    assert run_job("--config", config, "--output_dir", out, "--steps", "5") == 0
    row = read(out, "summaries")[0]
    assert (row["method"], row["steps"], row["gradient_evaluations"]) == ("riemann_trapezoid", 5, 5)
    assert row["raw_uri"]


def test_cli_help_lists_options_with_defaults():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    for text in (
        "--input_pattern",
        "--model_output",
        "--tolerance",
        "--max_failure_fraction",
        "--labels",
        "default: gausslegendre",
        "--regions",
    ):
        assert text in result.stdout


def cli_job(*argv, cwd=REPO) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGV`` in a process of its own, started in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_entry_point_runs_the_job(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (9, 7), (120, 30, 200)).save(folder / "x.png")
    out = tmp_path / "out"
    result = cli_job(
        *job_argv(f"{folder}/*.png", str(out), tiny_model), *FAST, "--progress_interval", "0.5"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "attributed 1 of 1 images" in result.stdout
    assert "progress: 1/1 images (100%)" in result.stderr
    assert (out / "manifest.json").exists()


def test_relative_paths_are_recorded_resolved_so_the_report_shows_the_originals(
    tiny_model, tmp_path
):
    """The README's example passes relative paths. The manifest's config records the
    pattern the run matched (absolute): the report shows an original only if that pattern
    matches its uri, so with the pattern as typed it showed every original as missing."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (9, 7), (120, 30 * i, 200)).save(folder / f"x{i}.png")
    result = cli_job(
        *job_argv("in/*.png", "out", tiny_model),
        *FAST,
        *("--faithfulness", "none", "--strategies", "none"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert (config["input_pattern"], config["output_dir"]) == (f"{folder}/*.png", str(out))
    page = (out / "report.html").read_text()
    assert "original missing" not in page and "does not match the run" not in page
    assert 'alt="original"' in page  # drawn, not said missing


def test_multi_process_direct_runner_gives_the_same_outputs(tiny_model, mixed_folder, tmp_path):
    folder, names, bad = mixed_folder
    outs = {}
    for mode, extra in (
        ("single", []),
        ("multi", ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]),
    ):
        out = tmp_path / mode
        assert (
            run_job(
                *job_argv(f"{folder}/*", out, tiny_model),
                *FAST,
                *extra,
            )
            == 0
        )
        outs[mode] = out
    key = lambda r: r["image_uri"]
    single = sorted(read(outs["single"], "summaries"), key=key)
    multi = sorted(read(outs["multi"], "summaries"), key=key)
    assert [r["image_uri"] for r in single] == [r["image_uri"] for r in multi]
    for a, b in zip(single, multi):
        assert a["target_class"] == b["target_class"]
        assert np.isclose(a["attribution_sum"], b["attribution_sum"], rtol=1e-4, atol=1e-7)
    manifest = json.loads((outs["multi"] / "manifest.json").read_text())
    assert manifest["complete"] and 1 <= manifest["metrics"]["model_loads"] <= 2


def test_dataflow_dry_run_builds_the_job_graph_offline(tiny_model, mixed_folder):
    folder, _, _ = mixed_folder
    result = job.run(
        [
            *job_argv(f"{folder}/*", "gs://no-such-bucket/ig/out", tiny_model),
            *DATAFLOW_DRY_RUN,
        ]
    )
    assert result.manifest is None and result.report is None
    proto = result.beam_result.job.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    for label in (
        "ReadImages",
        "Attribute",
        "Summarize",
        "WriteSummaries",
        "WriteErrors",
        "Attribute/IntegratedGradients",
        "ReadImages/Decode",
        "Commit",
    ):
        assert label in names, sorted(names)[:50]
    assert "Progress" not in names
    options = result.beam_result.job.options.get_all_options()
    assert options["setup_file"].endswith("setup.py") and os.path.exists(options["setup_file"])


def test_a_failed_dry_run_does_not_tell_to_resume_a_folder_it_never_took(
    tiny_model, mixed_folder, monkeypatch, capsys
):
    folder, _, _ = mixed_folder

    def fails(job_):
        raise RuntimeError("the runner refused the graph")

    monkeypatch.setattr(job, "_run_job", fails)
    argv = [*job_argv(f"{folder}/*", "gs://no-such-bucket/ig/out", tiny_model), *DATAFLOW_DRY_RUN]
    assert job.main(argv) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the runner refused the graph" in line and "a dry run writes nothing" in line
    assert "--resume" not in line


def test_a_step_that_fails_once_is_retried_without_duplicates_or_leftovers(
    tiny_model, mixed_folder, tmp_path, monkeypatch
):
    """As tensorflow/transform's retry tests: the bundle runner retries a failed bundle."""
    from transforms import summarize

    folder, names, bad = mixed_folder
    real_publish, calls = summarize.publish, []

    def flaky_publish(path, data):
        calls.append(path)
        if len(calls) == 3:  # die between writing a temporary file and renaming it
            temporary = os.path.join(os.path.dirname(path), ".tmp-dead-" + os.path.basename(path))
            with open(temporary, "wb") as f:
                f.write(data[:10])
            raise OSError("simulated storage failure")
        real_publish(path, data)

    monkeypatch.setattr(summarize, "publish", flaky_publish)
    out = tmp_path / "out"
    assert (
        run_job(
            *job_argv(f"{folder}/*", out, tiny_model),
            "--runner",
            "BundleBasedDirectRunner",
            *FAST,
        )
        == 0
    )
    summaries = read(out, "summaries")
    uris = [r["image_uri"] for r in summaries]
    assert len(uris) == len(set(uris)) == len(names - bad)
    assert len(read(out, "errors")) == len(bad)
    assert not [p for p in files_under(out) if ".tmp" in os.path.basename(p)]
    assert len(calls) > 2 * len(names - bad)  # the failed bundle really ran twice
    for row in summaries:
        Image.open(row["mask_uri"]).load()
