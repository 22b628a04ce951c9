"""TFRecord input: records written with tf.io.TFRecordWriter from real photos, read back
streamed, and run end to end through `python -m pipeline`."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from job_argv import DATAFLOW_DRY_RUN, job_argv
from PIL import Image
from skimage import data as photos

from pipeline import run as job
from transforms.tfrecord import (
    CorruptRecord,
    Record,
    RecordKeys,
    parse_record,
    read_frames,
    read_shard,
)

FAST = ["--steps", "4", "--tolerance", "0", "--progress_interval", "0", "--no_report"]


def encoded(pixels, fmt):
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((40, 30)).save(buffer, fmt)
    return buffer.getvalue()


def example(**features):
    def feature(value):
        values = value if isinstance(value, list) else [value]
        if isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if isinstance(values[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    return tf.train.Example(
        features=tf.train.Features(
            feature={k.replace("__", "/"): feature(v) for k, v in features.items()}
        )
    ).SerializeToString()


def write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """shard A: a JPEG with two boxes, a PNG, a record without the image key, a grayscale
    JPEG; shard B: truncated inside its third record."""
    folder = tmp_path_factory.mktemp("records")
    jpeg, png = encoded(photos.astronaut(), "JPEG"), encoded(photos.coffee(), "PNG")
    gray = encoded(photos.camera(), "JPEG")
    a = write(
        folder / "a.tfrecord-00000-of-00002",
        [
            example(
                image__encoded=jpeg,
                image__class__label=1,
                image__id=b"astronaut",
                image__object__bbox__xmin=[0.0, 0.5],
                image__object__bbox__ymin=[0.0, 0.0],
                image__object__bbox__xmax=[0.5, 1.0],
                image__object__bbox__ymax=[1.0, 1.0],
                image__object__class__text=[b"left", b"right"],
            ),
            example(image__encoded=png, image__class__label=2, image__id=b"coffee"),
            example(image__class__label=0, image__id=b"no image"),
            example(image__encoded=gray, image__class__label=0, image__id=b"camera"),
        ],
    )
    b = write(
        folder / "b.tfrecord-00001-of-00002",
        [
            example(image__encoded=encoded(photos.chelsea(), "PNG"), image__class__label=1),
            example(image__encoded=encoded(photos.rocket(), "JPEG"), image__class__label=2),
            example(image__encoded=encoded(photos.astronaut()[::-1], "PNG"), image__class__label=0),
        ],
    )
    data = Path(b).read_bytes()
    Path(b).write_bytes(data[: len(data) - 100])  # cut inside the last record
    return folder, a, b, {"jpeg": jpeg, "png": png}


def test_frames_round_trip_and_a_truncated_shard_ends_with_an_error(shards):
    _, a, b, raw = shards
    with open(a, "rb") as f:
        frames = list(read_frames(f))
    assert len(frames) == 4
    assert (
        tf.train.Example.FromString(frames[0]).features.feature["image/encoded"].bytes_list.value[0]
        == raw["jpeg"]
    )
    records = list(read_shard(b, RecordKeys()))
    assert [i for i, _ in records] == [0, 1, 2]
    assert all(isinstance(r, Record) for _, r in records[:2])
    assert isinstance(records[2][1], CorruptRecord) and "truncated" in str(records[2][1])
    assert records[0][1].uri == f"{b}#0"


def test_a_flipped_byte_is_a_corrupt_record_not_a_wrong_image(tmp_path, shards):
    _, a, _, _ = shards
    data = bytearray(Path(a).read_bytes())
    data[200] ^= 0xFF  # inside the first record's data
    path = tmp_path / "flipped.tfrecord"
    path.write_bytes(bytes(data))
    records = list(read_shard(str(path), RecordKeys()))
    assert len(records) == 1 and isinstance(records[0][1], CorruptRecord)
    assert "checksum" in str(records[0][1])


def test_parse_keys_labels_and_boxes(shards):
    _, a, _, raw = shards
    with open(a, "rb") as f:
        first = next(read_frames(f))
    keys = RecordKeys(
        id_key="image/id",
        label_key="image/class/label",
        regions_from_record=True,
        labels=("cat", "dog", "boat"),
    )
    record = parse_record(first, "default", keys)
    assert record.uri == "astronaut" and record.data == raw["jpeg"]
    assert (record.true_class, record.true_label) == (1, "dog")
    assert record.boxes == [("left", (0.0, 0.0, 0.5, 1.0)), ("right", (0.5, 0.0, 1.0, 1.0))]
    plain = parse_record(first, "default", RecordKeys())
    assert plain.uri == "default" and plain.true_class is None and plain.boxes is None


def read(out, folder):
    return pq.read_table(os.path.join(out, folder)).to_pylist()


def test_pipeline_over_shards_accounts_every_record(tiny_model, shards, tmp_path):
    folder, a, b, _ = shards
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nboat\n")
    out = tmp_path / "out"
    # the pattern ends in .tfrecord*: TFRecord input is chosen without --input_format
    assert (
        job.main(
            [
                *job_argv(f"{folder}/*.tfrecord*", str(out), tiny_model),
                "--label_key",
                "image/class/label",
                "--labels",
                str(labels),
                "--regions_from_record",
                *FAST,
            ]
        )
        == 0
    )
    summaries = {r["image_uri"]: r for r in read(out, "summaries")}
    errors = {r["image_uri"]: r for r in read(out, "errors")}
    assert set(summaries) == {f"{a}#0", f"{a}#1", f"{a}#3", f"{b}#0", f"{b}#1"}
    assert set(errors) == {f"{a}#2", f"{b}#2"}
    assert errors[f"{a}#2"]["error_type"] == "MissingImageKey"
    assert errors[f"{b}#2"]["error_type"] == "CorruptRecord"
    assert "truncated" in errors[f"{b}#2"]["message"]
    first = summaries[f"{a}#0"]
    assert (first["width"], first["height"]) == (40, 30)
    assert (first["true_class"], first["true_label"]) == (1, "dog")
    assert summaries[f"{b}#1"]["true_label"] == "boat"
    masses = {r["name"]: r["mass_fraction"] for r in first["regions"]}
    assert set(masses) == {"left", "right"}
    assert np.isclose(sum(masses.values()), 1.0, atol=1e-6)
    assert summaries[f"{a}#1"]["regions"] is None
    assert os.path.exists(first["mask_uri"]) and os.path.exists(first["overlay_uri"])
    assert len({r["image_id"] for r in summaries.values()}) == 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["matched"] == 7
    assert manifest["counts"]["failed"] == 2


def test_id_key_names_the_rows(tiny_model, shards, tmp_path):
    _, a, _, _ = shards
    out = tmp_path / "out"
    assert (
        job.main(
            [
                "--input_pattern",
                a,
                "--input_format",
                "tfrecord",
                "--output_dir",
                str(out),
                "--model",
                tiny_model,
                "--id_key",
                "image/id",
                "--artifacts",
                "none",
                *FAST,
            ]
        )
        == 0
    )
    summaries = read(out, "summaries")
    assert sorted(r["image_uri"] for r in summaries) == ["astronaut", "camera", "coffee"]
    assert all(r["mask_uri"] is None and r["overlay_uri"] is None for r in summaries)
    assert not os.path.exists(out / "masks") and not os.path.exists(out / "overlays")
    assert [r["image_uri"] for r in read(out, "errors")] == ["no image"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--id_key", "image/id"], "--id_key is for TFRecord input"),
        (["--regions_from_record"], "--regions_from_record is for TFRecord input"),
        (["--artifacts", "masks,gifs"], "--artifacts: unknown ['gifs']"),
    ],
)
def test_tfrecord_options_are_refused_before_work(tiny_model, tmp_path, capsys, argv, message):
    code = job.main(
        [
            *job_argv(f"{tmp_path}/*.png", str(tmp_path / "out"), tiny_model),
            *argv,
        ]
    )
    assert code == 2 and message in capsys.readouterr().err


def test_reuse_from_works_by_content_hash_for_records(tiny_model, shards, tmp_path):
    folder, a, b, raw = shards
    common = [
        "--input_pattern",
        f"{folder}/*.tfrecord*",
        "--model",
        tiny_model,
        "--label_key",
        "image/class/label",
        "--regions_from_record",
        "--write_raw",
        *FAST,
    ]
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    assert job.main([*common, "--output_dir", str(first)]) == 0
    assert job.main([*common, "--output_dir", str(second), "--reuse_from", str(first)]) == 0
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["matched"] == 7
    assert (manifest["counts"]["reused"], manifest["counts"]["computed"]) == (5, 0)
    assert manifest["metrics"]["model_loads"] == 0
    key = lambda r: r["image_uri"]
    before, after = (
        sorted(read(first, "summaries"), key=key),
        sorted(read(second, "summaries"), key=key),
    )
    for x, y in zip(before, after):  # same rows, regions recomputed from the raw files
        assert {k: v for k, v in x.items() if not k.endswith("_uri")} == {
            k: v for k, v in y.items() if not k.endswith("_uri")
        }
    assert sorted(map(key, read(second, "errors"))) == [f"{a}#2", f"{b}#2"]

    # a new shard with one known image (renamed) and one new image: only the new one computed
    (tmp_path / "extra").mkdir()
    extra = write(
        tmp_path / "extra" / "c.tfrecord",
        [
            example(image__encoded=raw["png"], image__class__label=2),
            example(image__encoded=encoded(photos.coffee()[:, ::-1], "PNG")),
        ],
    )
    assert (
        job.main(
            [
                *common[:1],
                f"{os.path.dirname(extra)}/*.tfrecord",
                *common[2:],
                "--output_dir",
                str(third),
                "--reuse_from",
                str(second),
            ]
        )
        == 0
    )
    manifest = json.loads((third / "manifest.json").read_text())
    assert (manifest["counts"]["reused"], manifest["counts"]["computed"]) == (1, 1)
    rows = {r["image_uri"]: r for r in read(third, "summaries")}
    assert rows[f"{extra}#0"]["true_label"] == "2" and rows[f"{extra}#1"]["true_class"] is None


def test_dataflow_dry_run_reads_shards_one_per_element(tiny_model, shards):
    folder, _, _, _ = shards
    result = job.run(
        [
            *job_argv(f"{folder}/*.tfrecord*", "gs://no-such-bucket/ig/out", tiny_model),
            "--regions_from_record",
            *DATAFLOW_DRY_RUN,
        ]
    )
    proto = result.beam_result.job.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    for label in (
        "ReadImages/Reshuffle",
        "ReadImages/ReadShards",
        "ReadImages/GroupById",  # one record per id (DuplicateId)
        "Attribute/JoinRegions",  # before the model (ablation)
        "Attribute/IntegratedGradients",
    ):
        assert label in names, label


def test_the_report_shows_predicted_against_true_class(tiny_model, shards, tmp_path):
    from pipeline.report.confusion import confusion_section
    from pipeline.report.read import read_run

    folder, _, _, _ = shards
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nboat\n")
    out = tmp_path / "out"
    argv = [
        *job_argv(f"{folder}/*.tfrecord*", str(out), tiny_model),
        "--label_key",
        "image/class/label",
        "--labels",
        str(labels),
        *FAST,
    ]
    assert job.main([a for a in argv if a != "--no_report"]) == 0
    rows = read(out, "summaries")
    wrong = [r for r in rows if r["true_label"] != r["predicted_label"]]
    data = confusion_section(read_run(str(out)))
    assert data["images"] == len(rows) == 5 and data["mistakes_count"] == len(wrong)
    assert sum(n for _, n, _ in data["rows"]) == 5
    counted = {
        (true, predicted): cell["n"]
        for true, _, cells in data["rows"]
        for predicted, cell in zip(data["columns"], cells)
        if cell
    }
    for r in rows:
        assert counted[(r["true_label"], r["predicted_label"])] >= 1
    assert sorted(m[0] for m in data["mistakes"]) == sorted(r["image_uri"] for r in wrong)
    scores = [m[3] for m in data["mistakes"]]
    assert scores == sorted(scores, reverse=True)
    page = (out / "report.html").read_text()
    assert 'id="confusion"' in page and "Predicted vs true class" in page
    # a run without true classes says so instead of an empty table
    plain = tmp_path / "plain"
    assert job.main([*argv[:3], str(plain), *argv[4:6], *FAST]) == 0
    assert confusion_section(read_run(str(plain))) == {"images": 0}


@pytest.mark.parametrize("given", [True, False], ids=["format_given", "format_detected"])
def test_a_repeated_record_id_is_one_row_and_the_later_ones_are_duplicate_id_errors(
    tiny_model, tmp_path, given
):
    """ids a, b, same, same, same: the first `same` (by shard, record index) is attributed,
    the other two are DuplicateId errors naming it, whether the format was given or
    detected; the manifest's counts agree with the rows."""
    import hashlib
    import subprocess
    import sys

    pictures = [photos.astronaut(), photos.coffee(), photos.chelsea(), photos.rocket()]
    images = [encoded(p, "PNG") for p in pictures] + [encoded(photos.camera(), "PNG")]
    ids = [b"a", b"b", b"same", b"same", b"same"]
    (tmp_path / "in").mkdir()
    shard = write(
        tmp_path / "in" / "dup.tfrecord",
        [example(image__encoded=data, image__id=i) for data, i in zip(images, ids)],
    )
    out = tmp_path / "out"
    argv = [*job_argv(shard, out, tiny_model), "--id_key", "image/id", *FAST]
    if given:
        argv += ["--input_format", "tfrecord"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summaries, errors = read(out, "summaries"), read(out, "errors")
    assert sorted(r["image_uri"] for r in summaries) == ["a", "b", "same"]
    same = next(r for r in summaries if r["image_uri"] == "same")
    assert same["content_sha256"] == hashlib.sha256(images[2]).hexdigest()  # the first one
    assert len({r["image_id"] for r in summaries}) == 3
    masks = [r["mask_uri"] for r in summaries]
    assert len(set(masks)) == 3 and all(os.path.isfile(m) for m in masks)
    assert sorted(os.listdir(out / "masks")) == sorted(os.path.basename(m) for m in masks)
    assert sorted(r["image_uri"] for r in errors) == [f"{shard}#3", f"{shard}#4"]
    for row in errors:
        assert row["error_type"] == "DuplicateId"
        assert "'same'" in row["message"] and f"record 2 of {shard}" in row["message"]
    m = json.loads((out / "manifest.json").read_text())
    counts = m["counts"]
    assert m["complete"] is True
    assert (counts["matched"], counts["attributed"], counts["failed"], counts["rows"]) == (
        5,
        3,
        2,
        3,
    )
    assert counts["error_rows"] == 2 and counts["missing"] == 0 and counts["in_both"] == 0
