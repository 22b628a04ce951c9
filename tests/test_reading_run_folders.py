"""Reading a run folder that someone tampered with: the report, the comparison and
the sanity check read no file because a row names it, finish on FIFOs and devices, and
refuse a malformed folder in one line (exit 2) leaving no temporary files behind."""

import base64
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from markupsafe import escape
from PIL import Image, PngImagePlugin
from run_folders import cli, images_of, make_run, one_error_line, summary_row

from pipeline import report, sanity
from pipeline.report import read as report_read
from transforms import files

SECRET = b"TOP-SECRET-c0ffee-do-not-leak"


def secret_png(path: Path) -> bytes:
    """A valid PNG carrying SECRET in a text chunk: what a leak would embed as a mask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("secret", SECRET.decode())
    Image.new("RGB", (16, 16), (0, 0, 255)).save(path, pnginfo=info)
    return path.read_bytes()


def assert_not_leaked(page: str, *secrets: bytes) -> None:
    assert SECRET.decode() not in page
    for data in secrets:
        assert base64.b64encode(data).decode() not in page


def said(text: str) -> str:
    """``text`` as the page shows it (escaped by the template engine)."""
    return str(escape(text))


# ---------------------------------------------------------------------------- the report


def test_the_report_reads_no_file_a_row_names(tmp_path):
    """Each shown row is one attack on what the report reads; none is read, each is said."""
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.txt").write_bytes(SECRET + b"\n")
    secret_mask = secret_png(private / "masks" / "secret.png")
    secret_overlay = secret_png(private / "overlays" / "secret.png")
    folder = tmp_path / "run"
    rows = [summary_row(folder, i, 0) for i in range(4)]  # 2 most + 2 least: all shown
    masks, overlays = folder / "masks", folder / "overlays"
    os.mkfifo(masks / "fifo.png")
    (overlays / "zero.png").symlink_to("/dev/zero")
    (overlays / "link.png").symlink_to(private / "overlays" / "secret.png")
    with open(masks / "huge.png", "wb") as f:  # sparse: over the cap without writing it
        f.truncate(files.MAX_ARTIFACT_BYTES + 1)
    (overlays / "text.png").write_bytes(SECRET)
    changed = Path(rows[3]["image_uri"])
    changed.write_bytes(secret_png(tmp_path / "other.png"))  # since the run: sha256 differs
    outside_pattern = str(private / "secret.txt")
    not_plain = f"{images_of(folder)}/../private/masks/secret.png"
    inside = str(folder / "masks" / "circle0.png")
    attacks = [
        {"image_uri": outside_pattern, "mask_uri": outside_pattern},
        {
            "image_uri": not_plain,
            "mask_uri": "/dev/zero",
            "overlay_uri": str(overlays / "zero.png"),
        },
        {
            "image_uri": inside,
            "mask_uri": str(masks / "fifo.png"),
            "overlay_uri": str(overlays / "link.png"),
        },
        {
            "mask_uri": str(masks / "huge.png"),
            "overlay_uri": str(private / "overlays" / "secret.png"),  # the name a run would use
        },
    ]
    rows = [{**row, **attack} for row, attack in zip(rows, attacks)]
    rows[0]["overlay_uri"] = str(overlays / "text.png")
    untouched = [summary_row(folder, i, 1) for i in range(2)]
    make_run(folder, rows=rows + untouched)

    result = cli("pipeline.report", folder, timeout=120)  # a FIFO opened to read would hang
    assert result.returncode == 0, result.stderr[-3000:]
    page = (folder / "report.html").read_text()
    assert_not_leaked(page, SECRET + b"\n", secret_mask, secret_overlay)
    for reason in (
        f"mask missing: {outside_pattern} is not a file in a masks/ folder of a run: not read",
        f"original missing: {outside_pattern} does not match the run's --input_pattern "
        f"{images_of(folder)}/*: not read",
        f"original missing: {not_plain} is not one of the run's inputs: not read",
        "mask missing: /dev/zero is not a file in a masks/ folder of a run: not read",
        f"overlay missing: {overlays / 'zero.png'} is a symbolic link: not read",
        f"original missing: {inside} is not one of the run's inputs: not read",
        f"mask missing: {masks / 'fifo.png'} is not a regular file: not read",
        f"overlay missing: {overlays / 'link.png'} is a symbolic link: not read",
        f"original missing: {changed} changed since the run (its sha256 differs): not shown",
        f"mask missing: {masks / 'huge.png'} has {files.MAX_ARTIFACT_BYTES + 1} bytes, "
        f"more than {files.MAX_ARTIFACT_BYTES}: not read",
        f"overlay missing: {overlays / 'secret.png'} does not exist",
        f"overlay missing: {overlays / 'text.png'} is not a PNG: not shown",
    ):
        assert said(reason) in page, reason
    # what is the run's own is still shown: the untouched rows' originals, masks, overlays
    assert page.count("data:image/jpeg;base64,") == len(untouched)  # no attacked original
    for row in untouched:
        for uri in (row["mask_uri"], row["overlay_uri"]):
            assert base64.b64encode(Path(uri).read_bytes()).decode() in page


def test_a_linked_artifact_folder_is_not_followed(tmp_path):
    private = tmp_path / "private"
    secret = secret_png(private / "masks" / "circle0.png")
    folder = tmp_path / "run"
    make_run(folder, rows=[summary_row(folder, 0, 0)])
    for name in (folder / "masks").iterdir():
        name.unlink()
    (folder / "masks").rmdir()
    (folder / "masks").symlink_to(private / "masks")  # the mask's own name, in a linked folder
    page = Path(report.write_report(str(folder))).read_text()
    assert_not_leaked(page, secret)
    assert said(f"{folder / 'masks'} is not a folder (a symbolic link?): not read") in page
    with pytest.raises(files.NotRead, match="not a folder"):
        files.read_artifact(str(folder), "masks", str(folder / "masks" / "circle0.png"))
    # the folder is found again where it is now: a moved run still shows its own masks
    (folder / "masks").unlink()
    make_run(folder, rows=[summary_row(folder, 0, 0)])
    moved = files.read_artifact(str(folder), "masks", "/old/place/masks/circle0.png")
    assert moved == (folder / "masks" / "circle0.png").read_bytes()


def _mutate_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _retype(folder: Path, column: str, values: pa.Array) -> None:
    for part in (folder / "summaries").glob("*.parquet"):
        table = pq.read_table(part)
        index = table.schema.get_field_index(column)
        pq.write_table(table.set_column(index, column, values[: table.num_rows]), part)


MALFORMED = {
    "counts is a string": (
        lambda f: _mutate_manifest(f, lambda m: m.update(counts="lots")),
        'manifest.json: `counts` must be an object, got "lots"',
    ),
    "a count is a string": (
        lambda f: _mutate_manifest(f, lambda m: m["counts"].update(failed="2")),
        'manifest.json: `counts.failed` must be a whole number >= 0, got "2"',
    ),
    "input size is text": (
        lambda f: _mutate_manifest(f, lambda m: m["model"].update(input_size="big")),
        "`model.input_size` must be a list of two whole numbers > 0",
    ),
    "tolerance is text": (
        lambda f: _mutate_manifest(f, lambda m: m["config"].update(tolerance="tight")),
        '`config.tolerance` must be a number, got "tight"',
    ),
    "target_score is text": (
        lambda f: _retype(f, "target_score", pa.array(["high"] * 4)),
        "column `target_score` is string, the contract says double",
    ),
    "target_class holds floats": (
        lambda f: _retype(f, "target_class", pa.array([0.5] * 4)),
        "column `target_class` is double, the contract says int32",
    ),
    "grid holds text": (
        lambda f: _retype(f, "grid", pa.array([["a"]] * 4)),
        "column `grid` is list<element: string>, the contract says list<item: float>",
    ),
}


@pytest.mark.parametrize("how", sorted(MALFORMED))
def test_a_malformed_folder_is_refused_before_anything_is_read(tmp_path, how):
    folder = make_run(
        tmp_path / "run", rows=[summary_row(tmp_path / "run", i, 0) for i in range(4)]
    )
    damage, message = MALFORMED[how]
    damage(folder)
    with pytest.raises(files.RunFolderError, match=r"^[^\n]*$") as raised:
        report.read_run(str(folder))
    assert message in str(raised.value) and "rerun the run" in str(raised.value)
    assert not (folder / "report.html").exists()


@pytest.mark.parametrize("how", ["counts is a string", "target_score is text"])
def test_the_report_command_says_a_malformed_folder_in_one_line(tmp_path, how):
    folder = make_run(
        tmp_path / "run", rows=[summary_row(tmp_path / "run", i, 0) for i in range(4)]
    )
    damage, message = MALFORMED[how]
    damage(folder)
    result = cli("pipeline.report", folder)
    assert result.returncode == 2
    assert message in one_error_line(result)
    assert not (folder / "report.html").exists()
    assert not [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]


def test_the_methods_page_refuses_a_folder_as_its_output(tmp_path):
    runs = [make_run(tmp_path / n, rows=[summary_row(tmp_path / n, 0, 0)]) for n in ("a", "b")]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("pipeline.report", *runs, "--output", tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"error: --output {tmp_path} is a folder: name the page's file, e.g. "
        f"{tmp_path / 'methods.html'}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_one_runs_report_refuses_an_output_it_would_ignore(tmp_path):
    """One DIR's report is always DIR/report.html: an --output there was silently ignored."""
    folder = make_run(tmp_path / "run", rows=[summary_row(tmp_path / "run", 0, 0)])
    elsewhere = tmp_path / "page.html"
    result = cli("pipeline.report", folder, "--output", elsewhere)
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"error: --output is for the side-by-side page of several DIRs; one run's report is "
        f"always {folder / 'report.html'}: drop --output"
    )
    assert not elsewhere.exists() and not (folder / "report.html").exists()
    written = cli("pipeline.report", folder)
    assert written.returncode == 0 and (folder / "report.html").is_file()


@pytest.mark.parametrize("column", [*report_read.COLUMNS, "content_sha256", "regions"])
def test_a_column_of_nulls_is_reported_or_refused_never_a_crash(tmp_path, column):
    """Whatever a typed column holds (here: nothing), the report is written or refused."""
    folder = tmp_path / "run"
    rows = [{**summary_row(folder, i, c), column: None} for c in range(2) for i in range(3)]
    make_run(folder, rows=rows)
    try:
        page = Path(report.write_report(str(folder))).read_text()
    except files.RunFolderError as e:
        assert "\n" not in str(e)
    else:
        assert "<h2>Examples</h2>" in page or 'id="examples"' in page


def test_one_rule_for_manifest_types():
    good = {
        "counts": {"matched": 3, "not_in_run": 0},
        "model": {"input_size": [16, 16], "fingerprint": "ab"},
        "config": {"tolerance": 0, "steps": 8, "input_pattern": "x/*", "id_key": None},
        "complete": True,
    }
    files.check_manifest("m.json", good)  # null and unknown keys are fine
    for key, bad, wanted in (
        ("complete", "yes", "true or false"),
        ("counts", [1], "an object"),
        ("counts.matched", True, "a whole number >= 0"),  # a bool is no count
        ("counts.matched", -1, "a whole number >= 0"),
        ("model.input_size", [16], "a list of two whole numbers > 0"),
        ("model.input_size", [16, 0], "a list of two whole numbers > 0"),
        ("config.tolerance", float("nan"), "a number"),
        ("config.input_pattern", ["a", "b"], "a string"),
    ):
        manifest = json.loads(json.dumps(good))
        parent, _, name = key.rpartition(".")
        (manifest.setdefault(parent, {}) if parent else manifest)[name] = bad
        with pytest.raises(files.RunFolderError, match=f"`{re.escape(key)}` must be {wanted}"):
            files.check_manifest("m.json", manifest)


# ---------------------------------------------------------------------------- TFRecord


def test_a_tfrecord_original_is_the_records_image_not_the_file_its_id_names(tiny_model, tmp_path):
    """The record's id is a path to a local image: the report's original is decoded from the
    record itself (red), never from that file (blue)."""
    import tensorflow as tf

    from pipeline import run as job

    decoy = tmp_path / "private" / "decoy.png"
    decoy.parent.mkdir()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(decoy)
    red = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(red)
    shard = tmp_path / "records" / "data.tfrecord"
    shard.parent.mkdir()
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[red.read_bytes()])),
        "image/id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(decoy).encode()])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    with tf.io.TFRecordWriter(str(shard)) as writer:
        writer.write(example.SerializeToString())
    out = tmp_path / "out"
    argv = ["--input_pattern", str(shard), "--output_dir", str(out), "--model", tiny_model]
    argv += ["--id_key", "image/id", "--steps", "4", "--tolerance", "0", "--no_report"]
    assert job.main([*argv, "--faithfulness", "none", "--progress_interval", "0"]) == 0
    (row,) = pq.read_table(out / "summaries").to_pylist()
    assert row["image_uri"] == str(decoy)

    page = Path(report.write_report(str(out))).read_text()
    (original,) = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    import io

    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(original))).convert("RGB"), float)
    red_share = pixels[..., 0].mean() / (pixels.mean(axis=(0, 1)).sum() + 1e-9)
    assert red_share > 0.9, pixels.mean(axis=(0, 1))  # the record's red, not the decoy's blue
    # a record that is no longer in the run's shards is said missing, not looked up by path
    with tf.io.TFRecordWriter(str(shard)) as writer:
        writer.write(example.SerializeToString().replace(b"image/id", b"image/xx"))
    page = Path(report.write_report(str(out))).read_text()
    assert "data:image/jpeg" not in page
    assert said(f"original missing: no record {decoy} with the row's image") in page


# ---------------------------------------------------------------------------- compare


def _raw(folder: Path, name: str, seed: int) -> str:
    path = folder / "raw" / f"{name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(seed).random((16, 16, 3)).astype(np.float32))
    return str(path)


def _pair(tmp_path: Path, change_b) -> tuple[Path, Path]:
    """Runs A and B of the same four images, raw attributions kept; ``change_b(i, row)``
    edits B's rows."""
    made = []
    for name in ("a", "b"):
        folder = tmp_path / name
        rows = []
        for i in range(4):
            row = summary_row(folder, i, 0)
            row["raw_uri"] = _raw(folder, row["image_id"], i)
            if name == "b":
                row = {**row, "predicted_class": 1, "predicted_label": "square"}
                change_b(i, row)
            rows.append(row)
        made.append(make_run(folder, rows=rows))
    return made[0], made[1]


def test_compare_reads_raw_files_and_overlays_only_inside_the_runs(tmp_path):
    private = tmp_path / "private"
    secret_overlay = secret_png(private / "overlays" / "circle0.png")
    outside_raw = _raw(private, "circle1", 99)

    def attack(i, row):
        row.update(
            [
                {"overlay_uri": str(private / "overlays" / "circle0.png"), "raw_uri": "/dev/zero"},
                {"raw_uri": outside_raw, "overlay_uri": str(private / "secret.txt")},
                {"raw_uri": str(tmp_path / "b" / "raw" / "fifo.npy")},
                {},
            ][i]
        )

    run_a, run_b = _pair(tmp_path, attack)
    os.mkfifo(run_b / "raw" / "fifo.npy")
    (run_b / "overlays" / "circle0.png").unlink()  # B's own overlay of row 0 is gone
    (run_b / "raw" / "circle1.npy").unlink()  # and its raw file of row 1
    out = tmp_path / "drift"
    result = cli("pipeline.compare", run_a, run_b, "--output_dir", out, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    drift = {r["uri_a"].rsplit("/", 1)[1]: r for r in pq.read_table(out / "drift").to_pylist()}
    assert [drift[f"circle{i}.png"]["iou_source"] for i in range(4)] == [
        "grid",  # /dev/zero is not read
        "grid",  # a raw file outside B is not read, although it exists
        "grid",  # a FIFO inside B is not opened
        "raw",
    ]
    page = (out / "drift.html").read_text()
    assert_not_leaked(page, secret_overlay)
    assert said(f"B missing: {run_b / 'overlays' / 'circle0.png'} does not exist") in page
    assert said(f"{private / 'secret.txt'} is not a file in a overlays/ folder") in page


def test_compare_refuses_a_malformed_folder_in_one_line_and_leaves_nothing(tmp_path):
    run_a, run_b = _pair(tmp_path, lambda i, row: None)
    _retype(run_b, "target_score", pa.array(["high"] * 4))
    out = tmp_path / "drift"
    result = cli("pipeline.compare", run_a, run_b, "--output_dir", out)
    assert result.returncode == 2
    assert "column `target_score` is string" in one_error_line(result)
    assert not out.exists()
    result = cli("pipeline.compare", run_a, run_a, "--output_dir", "/proc/x")
    assert result.returncode == 2
    assert one_error_line(result) == (
        "error: --output_dir /proc/x: cannot create it (No such file or directory): choose "
        "another folder"
    )


def test_a_failing_comparison_job_is_one_line_and_leaves_no_beam_temp(tmp_path):
    """A value the drift table cannot hold (a class id past int32) fails inside the Beam job:
    one line, and neither the sinks' beam-temp-* folders nor a part are left."""
    run_a, run_b = _pair(tmp_path, lambda i, row: None)
    _retype(run_b, "predicted_class", pa.array([2**40] * 4, pa.int64()))
    out = tmp_path / "drift"
    out.mkdir()
    (out / "drift_summary.json").write_text("{}")  # an earlier comparison's: not kept
    (out / "notes.txt").write_text("mine")  # the user's: kept
    result = cli("pipeline.compare", run_a, run_b, "--output_dir", out)
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("error: the comparison job failed (ArrowInvalid: ")
    assert line.endswith(f"nothing was written to {out}")
    assert sorted(p.name for p in out.rglob("*")) == ["notes.txt"]


# ---------------------------------------------------------------------------- sanity


def _sanity_argv(model, pattern, out, *extra) -> list[str]:
    argv = ["--model", model, "--input_pattern", pattern, "--output_dir", out, "--sample", "2"]
    return [*map(str, argv), "--steps", "4", "--tolerance", "0", *extra]


def _sanity(model, pattern, out, *extra):
    return cli("pipeline.sanity", *_sanity_argv(model, pattern, out, *extra))


def test_sanity_rerun_with_another_pattern_is_refused_or_replaces_the_first(tiny_model, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, color in ((first, (255, 0, 0)), (second, (0, 255, 0))):
        folder.mkdir()
        for i in range(2):
            pixels = np.full((16, 16, 3), color, np.uint8)
            pixels[i, i] = 0
            Image.fromarray(pixels).save(folder / f"{folder.name}{i}.png")
    out = tmp_path / "sanity"  # what a check of the first pattern left (its sample mixed in)
    (out / "sample").mkdir(parents=True)
    (out / "sample" / "first0-0123456789ab.png").write_bytes((first / "first0.png").read_bytes())
    (out / "stages" / "original" / "masks").mkdir(parents=True)
    (out / "stages" / "original" / "masks" / "first0.png").write_bytes(b"old")
    old = [{"image": str(first / "first0.png"), "stage": "top_100", "rank_correlation": 0.9}]
    pq.write_table(pa.Table.from_pylist(old, schema=sanity.SANITY_SCHEMA), out / "sanity.parquet")
    (out / "sanity.html").write_text("the first check")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    refused = _sanity(tiny_model, f"{second}/*.png", out)
    assert refused.returncode == 2
    assert one_error_line(refused) == (
        f"error: --output_dir {out} holds an earlier sanity check's outputs (sample, "
        f"stages, sanity.parquet, sanity.html): pass --overwrite to replace them, or choose "
        f"another folder"
    )
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched

    assert sanity.main(_sanity_argv(tiny_model, f"{second}/*.png", out, "--overwrite")) in (0, 1)
    images = set(pq.read_table(out / "sanity.parquet").column("image").to_pylist())
    assert images == {str(second / f"second{i}.png") for i in range(2)}
    assert all(n.startswith("second") for n in os.listdir(out / "sample"))
    assert not (out / "stages" / "original" / "masks" / "first0.png").exists()
    assert str(first) not in (out / "sanity.html").read_text()
    assert not (out / ".lock").exists()


def test_sanity_output_dir_that_cannot_be_made_is_one_line(tiny_model, tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    result = _sanity(tiny_model, f"{tmp_path}/*.png", "/proc/x")
    assert result.returncode == 2
    assert one_error_line(result).startswith("error: --output_dir /proc/x: cannot create")


def test_sanity_refuses_a_pipeline_run_folder_even_with_overwrite(tiny_model, tmp_path):
    run = make_run(tmp_path / "run", rows=[summary_row(tmp_path / "run", 0, 0)])
    before = sorted(str(p) for p in run.rglob("*"))
    result = _sanity(tiny_model, f"{images_of(run)}/*.png", run, "--overwrite")
    assert result.returncode == 2
    assert "holds a pipeline run's outputs (summaries, errors, masks, overlays, manifest.json)" in (
        one_error_line(result)
    )
    assert sorted(str(p) for p in run.rglob("*")) == before


def test_artifact_names_are_plain_names_in_their_own_folder(tmp_path):
    for uri in (None, "", "masks/..", "/x/masks/", "/x/overlays/a.png", "a.png", "/x/masks/a\0b"):
        with pytest.raises(files.NotRead):
            files.artifact_path(str(tmp_path), "masks", uri)
    with pytest.raises(files.NotRead, match="artifact folders"):
        files.artifact_path(str(tmp_path), "summaries", "/x/summaries/a.parquet")
    assert files.artifact_path(f"{tmp_path}/", "raw", "gs://b/run/raw/a.npy") == (
        f"{tmp_path}/raw/a.npy"
    )
