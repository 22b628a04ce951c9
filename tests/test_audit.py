"""Scheduled audits: incremental runs (--reuse_from), run ids, the Flex Template metadata."""

import hashlib
import json
import os
import re
import shutil

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from job_argv import job_argv
from PIL import Image

from attribution import masks
from attribution.images import pad_geometry
from pipeline import options
from pipeline import run as job
from transforms.records import ImageRef
from transforms.reuse import LOCATION_COLUMNS, SplitFn, reused_row
from transforms.settings import Settings
from transforms.write import SUMMARY_SCHEMA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--steps", "4", "--tolerance", "0.05", "--max_steps", "16", "--progress_interval", "0"]
# Contract options (../shared/DESIGN.md) a template must expose.
CONTRACT_OPTIONS = {
    "input_pattern",
    "output_dir",
    "model",
    "model_output",
    "score",
    "labels",
    "image_size",
    "target",
    "method",
    "steps",
    "tolerance",
    "max_steps",
    "baseline",
    "batch_size",
    "write_raw",
    "max_failure_fraction",
    "config",
}
# help_parser() options that are no template parameter: progress lines exist on DirectRunner
# only, and a Flex Template always runs on Dataflow.
NOT_TEMPLATE_PARAMETERS = {"progress_interval", "help", "randomize"}  # randomize: sanity's


def run_job(*argv):
    return job.main([str(a) for a in argv])


def read(out, folder="summaries"):
    return pq.read_table(os.path.join(out, folder)).to_pylist()


def manifest(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def image(seed, size=(20, 24)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def audits(tiny_model, tmp_path_factory):
    """Run 1; then a day later (one image added, one changed, one renamed, one deleted) run 2
    reusing run 1; run 3 reusing run 2 with nothing changed; run 4 with another --steps."""
    root = tmp_path_factory.mktemp("audit")
    folder = root / "images"
    folder.mkdir()
    for i, name in enumerate(
        ["keep1.png", "keep2.png", "changed.png", "renamed.png", "deleted.png"]
    ):
        image(i).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    labels = root / "labels.txt"
    labels.write_text("cat\ndog\nboat\n")
    common = [
        "--input_pattern",
        f"{folder}/*",
        "--model",
        tiny_model,
        "--labels",
        labels,
        "--write_raw",
        *FAST,
    ]
    runs = {name: root / name for name in ("day1", "day2", "day3", "steps")}
    assert run_job(*common, "--output_dir", runs["day1"], "--run_id", "day-1") == 0
    image(10).save(folder / "added.png")
    image(11).save(folder / "changed.png")
    os.rename(folder / "renamed.png", folder / "renamed again.png")
    os.remove(folder / "deleted.png")
    assert run_job(*common, "--output_dir", runs["day2"], "--reuse_from", runs["day1"]) == 0
    regions = root / "regions.csv"
    regions.write_text(
        "image,region,x0,y0,x1,y1\nkeep1.png,left,0,0,12,20\nkeep1.png,right,12,0,24,20\n"
    )
    assert (
        run_job(
            *common,
            "--output_dir",
            runs["day3"],
            "--reuse_from",
            runs["day2"],
            "--regions",
            regions,
        )
        == 0
    )
    common[common.index("--steps") + 1] = "5"
    assert run_job(*common, "--output_dir", runs["steps"], "--reuse_from", runs["day2"]) == 0
    return folder, runs


def test_incremental_run_reuses_identical_images_and_computes_the_rest(audits):
    folder, runs = audits
    m = manifest(runs["day2"])
    assert m["complete"] is True
    counts = m["counts"]
    # keep1, keep2 and the renamed file reused; the changed and the added one computed; the
    # broken file is tried again (errors are never reused) and fails again.
    assert (counts["matched"], counts["reused"], counts["computed"], counts["failed"]) == (
        6,
        3,
        2,
        1,
    )
    assert m["metrics"]["model_loads"] == 1
    assert m["reuse_from"] == str(runs["day1"])
    assert m["previous_finished_at"] == manifest(runs["day1"])["finished_at"]
    assert m["previous_run_id"] == "day-1" and m["run_id"] != "day-1"
    names = lambda rows: sorted(os.path.basename(r["image_uri"]) for r in rows)
    assert names(read(runs["day2"])) == [
        "added.png",
        "changed.png",
        "keep1.png",
        "keep2.png",
        "renamed again.png",
    ]
    assert names(read(runs["day2"], "errors")) == ["broken.jpg"]
    assert not any(".tmp-" in name for _, _, files in os.walk(runs["day2"]) for name in files)


def test_reused_rows_are_identical_and_their_files_are_copied_under_the_new_ids(audits):
    folder, runs = audits
    before = {r["content_sha256"]: r for r in read(runs["day1"])}
    after = {os.path.basename(r["image_uri"]): r for r in read(runs["day2"])}
    for name, old_name in (
        ("keep1.png", "keep1.png"),
        ("keep2.png", "keep2.png"),
        ("renamed again.png", "renamed.png"),
    ):
        new = after[name]
        old = before[new["content_sha256"]]
        assert os.path.basename(old["image_uri"]) == old_name
        for column in SUMMARY_SCHEMA.names:
            if column not in LOCATION_COLUMNS:
                assert new[column] == old[column], (name, column)
        assert new["image_uri"] == str(folder / name)
        for column, sub in (("mask_uri", "masks"), ("overlay_uri", "overlays"), ("raw_uri", "raw")):
            assert os.path.dirname(new[column]) == str(runs["day2"] / sub)
            assert os.path.basename(new[column]).startswith(new["image_id"])
            with open(new[column], "rb") as f, open(old[column], "rb") as g:
                assert f.read() == g.read()
    assert (
        after["renamed again.png"]["image_id"]
        != before[after["renamed again.png"]["content_sha256"]]["image_id"]
    )
    changed = after["changed.png"]
    assert changed["content_sha256"] not in before  # attributed afresh from the new bytes
    assert changed["target_label"] in {"cat", "dog", "boat"}


def test_a_rerun_with_nothing_changed_computes_nothing_and_never_loads_the_model(audits):
    folder, runs = audits
    m = manifest(runs["day3"])
    assert m["complete"] is True
    assert (m["counts"]["reused"], m["counts"]["computed"], m["counts"]["failed"]) == (5, 0, 1)
    assert m["metrics"]["model_loads"] == 0
    assert m["metrics"].get("gradient_evaluations", 0) == 0
    # --regions given on the rerun: region masses recomputed from the previous raw files.
    row = next(r for r in read(runs["day3"]) if r["image_uri"].endswith("/keep1.png"))
    raw = np.load(row["raw_uri"])
    geometry = pad_geometry((row["height"], row["width"]), raw.shape[:2])
    expected = masks.region_masses(
        raw,
        [
            ("left", geometry.box_to_model((0, 0, 12, 20))),
            ("right", geometry.box_to_model((12, 0, 24, 20))),
        ],
    )
    assert [{k: r[k] for k in e} for r, e in zip(row["regions"], expected)] == expected
    # ablation needs the model, which never loaded, and day 2 had no boxes to carry forward
    assert all(r["ablation_score"] is None for r in row["regions"])
    assert all(
        r["regions"] is None
        for r in read(runs["day3"])
        if not r["image_uri"].endswith("/keep1.png")
    )


def test_rows_written_before_forward_evaluations_existed_are_reused(audits, tmp_path):
    """Last night's folder, written before summaries had the forward_evaluations column, lends
    its rows to tonight's run (the count is not known for them: null), as rows from before the
    strategy column do; they are not silently computed again."""
    folder, runs = audits
    older = tmp_path / "older"
    shutil.copytree(runs["day3"], older)
    m = manifest(older)
    for name in m["files"]["summaries"]:
        path = older / "summaries" / name
        pq.write_table(pq.read_table(path).drop_columns(["forward_evaluations"]), path)
        data = path.read_bytes()
        m["files"]["summaries"][name] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    (older / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "out"
    assert (
        run_job(
            *job_argv(f"{folder}/*", out, m["config"]["model"]),
            "--labels",
            m["config"]["labels"],
            "--write_raw",
            *FAST,
            "--reuse_from",
            older,
        )
        == 0
    )
    counts = manifest(out)["counts"]
    assert (counts["reused"], counts["computed"], counts["failed"]) == (5, 0, 1)
    assert [r["forward_evaluations"] for r in read(out)] == [None] * 5


def test_a_changed_setting_recomputes_everything(audits):
    _, runs = audits
    m = manifest(runs["steps"])
    assert (m["counts"]["reused"], m["counts"]["computed"]) == (0, 5)
    assert m["settings_hash"] != manifest(runs["day2"])["settings_hash"]
    assert {r["steps"] for r in read(runs["steps"])} == {5}


def test_reusing_a_run_of_other_settings_or_another_model_is_said_once(audits, caplog):
    """The launcher warns before the job when --reuse_from's run can lend no row."""
    _, runs = audits
    previous, steps = manifest(runs["day2"]), manifest(runs["steps"])
    fingerprint = previous["model"]["fingerprint"]
    cases = {
        "same": (fingerprint, previous["settings_hash"]),
        "other settings": (fingerprint, steps["settings_hash"]),
        "another model": ("0" * 64, previous["settings_hash"]),
    }
    said = {}
    for name, (model, settings_hash) in cases.items():
        caplog.clear()
        with caplog.at_level("WARNING"):
            job._warn_if_not_reusable(str(runs["day2"]), previous, model, settings_hash)
        said[name] = [r.getMessage() for r in caplog.records]
    assert said["same"] == []
    for name in ("other settings", "another model"):
        assert len(said[name]) == 1
        assert said[name][0].startswith(f"--reuse_from {runs['day2']} was made with another")


def test_reuse_usage_errors(tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    image(0).save(folder / "a.png")
    base = ["--input_pattern", f"{folder}/*", "--model", tiny_model, *FAST]
    assert (
        run_job(*base, "--output_dir", tmp_path / "out", "--reuse_from", tmp_path / "nothing") == 2
    )
    assert "manifest.json" in capsys.readouterr().err
    assert run_job(*base, "--output_dir", tmp_path / "out", "--reuse_from", tmp_path / "out") == 2
    assert "not --output_dir itself" in capsys.readouterr().err
    (tmp_path / "link").symlink_to(tmp_path / "out")  # the same folder under another name
    assert run_job(*base, "--output_dir", tmp_path / "out", "--reuse_from", tmp_path / "link") == 2
    assert "not --output_dir itself" in capsys.readouterr().err
    assert run_job(*base, "--output_dir", tmp_path / "out", "--run_id", "a/b") == 2
    assert "--run_id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _row(uri, rank, target, **extra):
    row = {name: None for name in SUMMARY_SCHEMA.names}
    row.update(
        image_uri=uri,
        image_id="old-id",
        content_sha256="sha",
        target_rank=rank,
        target_class=target,
        predicted_class=1,
        width=8,
        height=8,
        mask_uri=f"/old/masks/{rank}.png",
        overlay_uri=f"/old/overlays/{rank}.png",
        raw_uri=f"/old/raw/{rank}.npy",
        # arithmetic that holds: reuse re-checks it
        target_score=0.9,
        baseline_score=0.1,
        attribution_sum=0.8,
        completeness_error=0.0,
        relative_completeness_error=0.0,
        converged=True,
        **extra,
    )
    return row


def test_split_prefers_the_same_uri_needs_complete_rows_and_raw_when_asked():
    settings = Settings(
        model="m",
        output_dir="/new",
        image_size=(8, 8),
        num_classes=3,
        model_fingerprint="f",
        target="topk:2",
        write_raw=True,
        labels=("a", "b", "c"),
    )
    previous = [
        _row("/img/x.png", 0, 1),
        _row("/img/x.png", 1, 2),
        _row("/img/a.png", 0, 1),
        _row("/img/b.png", 1, 2),
    ]  # b.png lost its first row: incomplete
    refs = [ImageRef("/img/x.png", "x-id", "sha"), ImageRef("/img/new.png", "new-id", "sha")]
    out = list(SplitFn(settings).process(("sha", {"previous": previous, "current": refs})))
    chosen = {ref.uri: [r["image_uri"] for r in rows] for ref, rows in out}
    assert chosen == {"/img/x.png": ["/img/x.png"] * 2, "/img/new.png": ["/img/a.png"]}
    previous[2]["raw_uri"] = None  # a.png has no raw file, this run writes raw: compute it
    out = list(SplitFn(settings).process(("sha", {"previous": previous, "current": refs})))
    computed = [o.value.uri for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    assert computed == ["/img/new.png"] and len(out) == 2

    new, copies = reused_row(previous[1], refs[1], settings)
    assert new["image_uri"] == "/img/new.png" and new["image_id"] == "new-id"
    assert new["mask_uri"] == "/new/masks/new-id--class2.png"  # second target's file name
    assert new["target_label"] == "c" and new["predicted_label"] == "b"
    assert copies == {
        "/new/masks/new-id--class2.png": "/old/masks/1.png",
        "/new/overlays/new-id--class2.png": "/old/overlays/1.png",
        "/new/raw/new-id--class2.npy": "/old/raw/1.npy",
    }


def test_previous_files_gone_means_compute_again(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image(0).save(folder / "a.png")
    image(1).save(folder / "b.png")
    base = ["--input_pattern", f"{folder}/*", "--model", tiny_model, *FAST]
    assert run_job(*base, "--output_dir", tmp_path / "one") == 0
    gone = next(r for r in read(tmp_path / "one") if r["image_uri"].endswith("/a.png"))
    os.remove(gone["overlay_uri"])
    assert run_job(*base, "--output_dir", tmp_path / "two", "--reuse_from", tmp_path / "one") == 0
    m = manifest(tmp_path / "two")
    assert (m["counts"]["reused"], m["counts"]["computed"]) == (1, 1) and m["complete"]
    assert m["metrics"]["reuse_files_missing"] == 1
    assert all(os.path.exists(r["overlay_uri"]) for r in read(tmp_path / "two"))


def test_boolean_options_accept_template_style_values(tiny_model, tmp_path):
    ours, beam_options = options.parse(
        [
            *job_argv("x/*", str(tmp_path), tiny_model),
            "--write_raw=true",
            "--jit_compile=false",
        ]
    )
    assert ours.write_raw is True and ours.jit_compile is False
    assert beam_options.get_all_options()["write_raw"] is True


def test_dataflow_job_labels_are_beams_and_a_labels_file_is_ours(tiny_model, tmp_path):
    """Airflow's Beam operator always adds --labels=airflow-version=vX (a Dataflow job label);
    it must not be taken for the class labels file."""
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nboat\n")
    ours, beam_options = options.parse(
        [
            *job_argv("x/*", str(tmp_path), tiny_model),
            "--labels=airflow-version=v2-10-5",
            "--labels",
            str(labels),
            "--labels",
            "team=vision",
        ]
    )
    assert ours.labels == str(labels)
    assert beam_options.get_all_options()["labels"] == ["airflow-version=v2-10-5", "team=vision"]


# ---------------------------------------------------------------------------- Flex Template


def _metadata():
    with open(os.path.join(REPO, "templates", "flex", "metadata.json")) as f:
        return json.load(f)


def test_flex_template_metadata_matches_the_options():
    metadata = _metadata()
    assert metadata["name"] and metadata["description"]
    parameters = {p["name"]: p for p in metadata["parameters"]}
    assert len(parameters) == len(metadata["parameters"]), "a parameter is listed twice"
    actions = {a.dest: a for a in options.help_parser()._actions}
    expected = set(actions) - NOT_TEMPLATE_PARAMETERS
    assert CONTRACT_OPTIONS <= set(parameters)
    assert set(parameters) == expected, (
        f"missing: {sorted(expected - set(parameters))}, "
        f"unknown: {sorted(set(parameters) - expected)}"
    )
    required = {"input_pattern", "output_dir", "model"}
    for name, p in parameters.items():
        assert p["label"] and p["helpText"], name
        assert p.get("isOptional", False) is (name not in required), name
        action = actions[name]
        for regex in p.get("regexes", []):
            compiled = re.compile(regex)
            if action.choices:  # a choice regex takes exactly the choices
                for choice in action.choices:
                    assert compiled.fullmatch(str(choice)), (name, choice)
                assert not compiled.fullmatch("no_such_choice"), name
            elif action.default not in (None, False):
                assert compiled.fullmatch(str(action.default)), (name, action.default)
    for name in ("write_raw", "jit_compile"):
        assert not re.compile(parameters[name]["regexes"][0]).fullmatch("yes")


def test_flex_template_dockerfile_launches_this_package():
    with open(os.path.join(REPO, "templates", "flex", "Dockerfile")) as f:
        text = f.read()
    assert "FROM gcr.io/dataflow-templates-base/python311-template-launcher-base" in text
    py_file = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=\"?([^\s\"]+)", text).group(1)
    setup_file = re.search(r"FLEX_TEMPLATE_PYTHON_SETUP_FILE=\"?([^\s\"]+)", text).group(1)
    workdir = re.search(r"^WORKDIR\s+(\S+)", text, re.M).group(1)
    for path in (py_file, setup_file):
        assert path.startswith(workdir + "/")
        assert os.path.exists(os.path.join(REPO, os.path.relpath(path, workdir))), path
    for folder in ("attribution", "transforms", "pipeline", "configs"):
        assert re.search(rf"^COPY\s+{folder}\s", text, re.M), folder
