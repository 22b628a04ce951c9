"""What a careless operator or an attacker puts in the input folder, the run folder or the
previous run: each test is a defect found by trying it on real files and processes, fixed,
and kept from coming back."""

import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from job_argv import job_argv
from PIL import Image
from test_run_folder import (
    FAST,
    REPO,
    SLOW,
    assert_clean_and_committed,
    images,
    kill_group,
    rows,
    run_cli,
    spawn,
    wait_for,
)
from test_run_folder_trust import copy_run, first_run, rewrite_rows  # noqa: F401 (fixture)

from pipeline import run as job


def test_file_names_that_are_not_utf8_or_hold_a_backslash_are_attributed(tiny_model, tmp_path):
    """A Latin-1 byte in a name crashed the job at listing (a uri is UTF-8 text in Parquet),
    and Beam's ``*`` stops at a backslash, so ``dir/*`` left ``back\\slash.png`` out of the
    run without a word. Both are POSIX file names: both are attributed, the first listed with
    its byte written ``\\xe9``."""
    folder = images(tmp_path / "in", 1)
    data = (folder / "img000.png").read_bytes()
    (folder / "back\\slash.png").write_bytes(data)
    with open(os.fsencode(folder) + b"/latin1-\xe9.png", "wb") as f:
        f.write(data)
    out = tmp_path / "out"
    done = run_cli(*job_argv(f"{folder}/*", out, tiny_model), *FAST, "--no_report")
    assert done.returncode == 0, done.stderr[-3000:]
    m = assert_clean_and_committed(out)
    assert (m["counts"]["matched"], m["counts"]["attributed"]) == (3, 3)
    found = {r["image_uri"]: r for r in rows(out)}
    assert set(found) == {
        f"{folder}/img000.png",
        f"{folder}/back\\slash.png",
        f"{folder}/latin1-\\xe9.png",
    }
    assert len({r["content_sha256"] for r in found.values()}) == 1  # the same bytes were read
    assert len({r["image_id"] for r in found.values()}) == 3


def test_two_files_that_would_list_as_one_uri_are_refused_not_merged(tmp_path):
    """``latin1-\\xe9.png`` spelled in UTF-8 and ``latin1-<byte 0xe9>.png`` both list as the
    first: one of them would have left the run without a row."""
    folder = images(tmp_path / "in", 1)
    data = (folder / "img000.png").read_bytes()
    (folder / "latin1-\\xe9.png").write_bytes(data)
    with open(os.fsencode(folder) + b"/latin1-\xe9.png", "wb") as f:
        f.write(data)
    with pytest.raises(job.options.UsageError, match="two files list as") as refused:
        job.match_inputs(f"{folder}/*")
    assert f"'{folder}/latin1-\\xe9.png'" in str(refused.value)  # as summaries would list it


def test_an_argument_that_is_not_utf8_is_refused_before_any_work(tiny_model, tmp_path, capsys):
    """An --output_dir with a Latin-1 byte took the folder, then failed with a traceback in
    Beam's options and said to rerun with --resume, which failed the same way."""
    folder = images(tmp_path / "in", 1)
    out = os.fsdecode(os.fsencode(tmp_path) + b"/o\xe9ut")
    assert job.main([*job_argv(f"{folder}/*", out, tiny_model), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: '{tmp_path}/o\\xe9ut' is not UTF-8 text: name the path in UTF-8 "
        f"(rename it, or use a link whose name is)"
    ), err
    assert not os.path.lexists(out)


def test_a_previous_mask_hard_linked_to_a_file_outside_is_not_copied(
    tiny_model,
    first_run,  # noqa: F811 (the fixture)
    tmp_path,
):
    """A hard link is a regular file, not a symbolic link: masks/<name> hard linked to a
    secret outside the run folder (and an overlay replaced by text) were copied into the new
    run, which said complete. Only a PNG (.npy for raw) is copied; those images are computed
    again."""
    folder, previous = copy_run(first_run, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:the secret\n")
    masks, overlays = (sorted(os.listdir(previous / kind)) for kind in ("masks", "overlays"))
    os.remove(previous / "masks" / masks[0])
    os.link(secret, previous / "masks" / masks[0])
    (previous / "overlays" / overlays[1]).write_bytes(b"not an overlay\n")
    out = tmp_path / "out"
    done = run_cli(
        *job_argv(f"{folder}/*", out, tiny_model), *FAST, "--no_report", "--reuse_from", previous
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m = assert_clean_and_committed(out)
    assert (m["counts"]["reused"], m["counts"]["computed"]) == (2, 2)
    for kind in ("masks", "overlays"):
        for path in (out / kind).iterdir():
            assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), path
    assert secret.read_bytes() == b"root:x:0:0:the secret\n"


def test_record_ids_that_are_empty_or_name_another_records_position_keep_rows_unique(
    tiny_model, tmp_path
):
    """A record without an id is named by its position ``<shard>#<index>``, and so are the
    errors rows of repeated ids and corrupt frames. An id that *was* such a position (a
    forged or careless dataset) made two rows of one uri (in summaries and in errors), and
    an empty id a row the commit did not count: both runs ended incomplete, exit 1, however
    often rerun. Now an empty id is no id, and an id naming another record's position is an
    errors row (``PositionId``) at the record's own position."""
    from test_tfrecord import example, write

    (tmp_path / "in").mkdir()
    pixels = [
        (np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8) for i in range(5)
    ]
    pngs = [_png(p) for p in pixels]
    s, t = str(tmp_path / "in" / "s.tfrecord"), str(tmp_path / "in" / "t.tfrecord")
    write(
        s,
        [
            example(image__encoded=pngs[0], image__id=b""),
            example(image__encoded=pngs[1], image__id=f"{s}#3".encode()),
            example(image__encoded=pngs[2], image__id=f"{t}#1".encode()),
            example(image__encoded=pngs[3]),
        ],
    )
    write(t, [example(image__encoded=pngs[4], image__id=f"{t}#0".encode())] * 2)
    with open(t, "r+b") as f:  # the second record cut short: a CorruptRecord at t#1
        f.truncate(os.path.getsize(t) - 20)
    out = tmp_path / "out"
    done = run_cli(
        *job_argv(f"{tmp_path}/in/*.tfrecord", out, tiny_model),
        "--id_key",
        "image/id",
        *FAST,
        "--no_report",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m = assert_clean_and_committed(out)
    assert sorted(r["image_uri"] for r in rows(out)) == [f"{s}#0", f"{s}#3", f"{t}#0"]
    errors = {r["image_uri"]: r["error_type"] for r in rows(out, "errors")}
    assert errors == {f"{s}#1": "PositionId", f"{s}#2": "PositionId", f"{t}#1": "CorruptRecord"}
    counts = m["counts"]
    assert (counts["matched"], counts["attributed"], counts["failed"]) == (6, 3, 3)
    assert counts["in_both"] == 0 and counts["missing"] == 0


def _png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("through", ["a_link_to_the_inputs", "a_pattern_of_one_level"])
def test_the_output_folder_is_never_an_input_however_the_pattern_reaches_it(
    tiny_model, tmp_path, through
):
    """The output folder was left out of the inputs by comparing path strings: a pattern
    reaching it through a link (``link/**``, link -> the folder holding it) read the first
    run's masks, parts and manifest as inputs on the rerun (25 failed rows of 36), and
    ``data/*`` listed the output folder itself as a failed input."""
    data = images(tmp_path / "data", 3)
    os.symlink(data, tmp_path / "link")
    pattern = f"{tmp_path}/link/**" if through == "a_link_to_the_inputs" else f"{data}/*"
    out = data / "out"
    argv = [*job_argv(pattern, out, tiny_model), *FAST, "--no_report"]
    assert job.main(argv) == 0
    assert job.main(argv + ["--overwrite"]) == 0  # its masks and Parquet are there now
    m = assert_clean_and_committed(out)
    assert (m["counts"]["matched"], m["counts"]["failed"]) == (3, 0), m["counts"]
    assert sorted(os.path.basename(r["image_uri"]) for r in rows(out)) == [
        "img000.png",
        "img001.png",
        "img002.png",
    ]


def test_previous_rows_with_null_cells_are_not_reused_and_do_not_crash_the_job(
    tiny_model,
    first_run,  # noqa: F811 (the fixture)
    tmp_path,
):
    """A previous part rewritten with its digest (a forger, or a tool that nulls a cell):
    an extra copy of a row whose target_rank is null, and a row whose width is null. The
    split sorted and multiplied them: TypeError, exit 1, and every --resume failed again.
    Now such rows are not reused: the extra copy is dropped, the other image computed."""
    folder, previous = copy_run(first_run, tmp_path)
    changed = {}

    def forge(table):
        table.append({**table[0], "target_rank": None})
        table[1]["width"] = None
        changed["uri"] = table[1]["image_uri"]

    rewrite_rows(previous, forge)
    out = tmp_path / "out"
    done = run_cli(
        *job_argv(f"{folder}/*", out, tiny_model), *FAST, "--no_report", "--reuse_from", previous
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m = assert_clean_and_committed(out)
    assert (m["counts"]["reused"], m["counts"]["computed"], m["counts"]["rows"]) == (3, 1, 4)
    recomputed = next(r for r in rows(out) if r["image_uri"] == changed["uri"])
    assert recomputed["width"] == 12


def test_an_output_dir_linking_to_the_input_folder_is_refused_naming_why(
    tiny_model, tmp_path, capsys
):
    """--output_dir a link to the folder the pattern lists: every input is inside the run
    folder. It was run (masks and parts written among the images, read back as inputs by
    the next run); then refused as a pattern that "matches no file"."""
    data = images(tmp_path / "data", 2)
    os.symlink(data, tmp_path / "out")
    before = sorted(os.listdir(data))
    assert job.main([*job_argv(f"{data}/*", tmp_path / "out", tiny_model), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: --input_pattern {data}/*: every file it matches is in --output_dir "
        f"{tmp_path}/out (a run never reads its own folder): write the run to another folder"
    ), err
    assert sorted(os.listdir(data)) == before


def _as_a_user(argv: list[str]) -> list[str]:
    """``argv`` run without root's power to write anywhere (its capabilities dropped), so a
    folder's permissions hold as for any user; as it is when not root."""
    if os.geteuid() != 0:
        return argv
    if not shutil.which("setpriv"):
        pytest.skip("root without setpriv: permissions cannot be made to hold")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--", *argv]


def test_an_overwrite_that_cannot_delete_a_folder_is_refused_before_deleting_anything(
    tiny_model, tmp_path
):
    """masks/ of the earlier run is not writable for this user: --overwrite deleted the
    parts, then stopped with a PermissionError traceback (exit 1), the folder half deleted
    and its manifest naming parts that were gone. Now the plan checks it can delete every
    path first: exit 2, one line, nothing deleted."""
    folder = images(tmp_path / "in", 1)
    out = tmp_path / "out"
    argv = [*job_argv(f"{folder}/*", out, tiny_model), *FAST, "--no_report"]
    assert job.main(argv) == 0
    (out / "masks").chmod(0o555)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    try:
        done = subprocess.run(
            _as_a_user([sys.executable, "-m", "pipeline", *argv, "--overwrite"]),
            env={**os.environ, "PYTHONPATH": REPO},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        after = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    finally:
        (out / "masks").chmod(0o755)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line == (
        f"error: --overwrite: cannot delete {out}/masks ({out}/masks is not writable for this "
        f"user): nothing was deleted; fix the permission or choose another --output_dir"
    ), line
    assert after == before


def test_a_fifo_or_a_device_matched_as_a_tfrecord_shard_is_an_error_row_not_a_hang(
    tiny_model, tmp_path
):
    """Image files were opened only if regular, TFRecord shards were not: a FIFO named
    x.tfrecord blocked the job forever (a link to /dev/zero would have been read without
    end had its zeros been frames). Each is one errors row now, the good shard attributed."""
    from test_tfrecord import example, write

    (tmp_path / "in").mkdir()
    pixels = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    write(tmp_path / "in" / "good.tfrecord", [example(image__encoded=_png(pixels))])
    os.mkfifo(tmp_path / "in" / "fifo.tfrecord")
    os.symlink("/dev/zero", tmp_path / "in" / "zero.tfrecord")
    out = tmp_path / "out"
    done = run_cli(
        *job_argv(f"{tmp_path}/in/*.tfrecord", out, tiny_model), *FAST, "--no_report", timeout=90
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_clean_and_committed(out)
    assert [r["image_uri"] for r in rows(out)] == [f"{tmp_path}/in/good.tfrecord#0"]
    errors = {r["image_uri"]: r["message"] for r in rows(out, "errors")}
    assert sorted(errors) == [f"{tmp_path}/in/fifo.tfrecord#0", f"{tmp_path}/in/zero.tfrecord#0"]
    assert "not a regular file (a FIFO)" in errors[f"{tmp_path}/in/fifo.tfrecord#0"]
    assert "(a character device)" in errors[f"{tmp_path}/in/zero.tfrecord#0"]


def test_resume_refuses_an_input_list_edited_to_name_files_outside_the_pattern(
    tiny_model, tmp_path, capsys
):
    """--resume read the interrupted attempt's list (a file in the run folder) as it was: a
    line added naming a private image outside --input_pattern was attributed, its overlay
    (the picture itself) written into the run folder. Now the resume is refused before the
    lock is taken, nothing moved."""
    folder = images(tmp_path / "in", 4)
    secret = images(tmp_path / "private", 1) / "img000.png"
    out = tmp_path / "out"
    argv = [*job_argv(f"{folder}/*", out, tiny_model), *SLOW]
    proc = spawn(*argv)
    assert wait_for(lambda: (out / ".staging" / "inputs.parquet").exists(), proc)
    kill_group(proc)
    listed = pq.read_table(out / ".staging" / "inputs.parquet")
    uris = listed.column("uri").to_pylist() + [str(secret)]
    forged = pa.table({"uri": uris}).replace_schema_metadata(listed.schema.metadata)
    pq.write_table(forged, out / ".staging" / "inputs.parquet")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert job.main([str(a) for a in argv] + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume: ") and f"lists '{secret}'" in err, err
    assert "\n" not in err and "pass --overwrite" in err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert job.main([str(a) for a in argv] + ["--overwrite"]) == 0
    assert str(secret) not in {r["image_uri"] for r in rows(out)}


@pytest.mark.parametrize("reader", ["reuse_from", "report"])
def test_a_fifo_named_like_a_part_is_refused_by_its_readers_never_waited_on(
    tiny_model, tmp_path, reader
):
    """A FIFO named summaries/x.parquet in a folder being read (a run without manifest given
    to --reuse_from, as a template run leaves; any run given to pipeline.report) blocked the
    reader forever on open. Parts and manifests are opened as regular files only now."""
    folder = images(tmp_path / "in", 1)
    previous = tmp_path / "previous"
    assert job.main([*job_argv(f"{folder}/*", previous, tiny_model), *FAST, "--no_report"]) == 0
    os.mkfifo(previous / "summaries" / "zz.parquet")
    if reader == "reuse_from":
        os.remove(previous / "manifest.json")
        argv = ["pipeline", *job_argv(f"{folder}/*", tmp_path / "out", tiny_model)]
        argv += [*FAST, "--reuse_from", str(previous)]
    else:
        argv = ["pipeline.report", str(previous)]
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in done.stderr
    assert f"{previous}/summaries/zz.parquet cannot be read as Parquet" in line
    assert "is not a regular file" in line, line


def test_a_frame_claiming_a_huge_length_is_a_corrupt_record_read_in_bounded_memory(tmp_path):
    """A TFRecord frame's length has its own checksum, so a forged shard can claim any
    length: 2**40 bytes made the reader allocate it (MemoryError, the job failed), and 256
    MB allocated 256 MB for a 100-byte shard. Now a claim over MAX_RECORD_BYTES is refused
    unread, and a smaller one costs no more memory than the shard holds."""
    import struct
    import tracemalloc

    from transforms.tfrecord import CorruptRecord, _masked_crc32c, read_frames

    def shard(length):
        head = struct.pack("<Q", length)
        path = tmp_path / f"{length}.tfrecord"
        path.write_bytes(head + struct.pack("<I", _masked_crc32c(head)) + b"x" * 100)
        return path

    with open(shard(2**40), "rb") as f, pytest.raises(CorruptRecord, match="more than"):
        next(read_frames(f))
    tracemalloc.start()
    try:
        with open(shard(2**28), "rb") as f, pytest.raises(CorruptRecord, match="truncated"):
            next(read_frames(f))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak  # far below the 256 MB claimed


TAKE = """
import sys, time
from pipeline import folder
from pipeline.launch import UsageError
out, start, run_id = sys.argv[1], float(sys.argv[2]), sys.argv[3]
while time.time() < start:
    pass
try:
    folder.take(out, run_id=run_id, overwrite=False, resume=True, lock_timeout=86400)
    print("took")
except UsageError as e:
    print("refused" if "in use" in str(e) else f"refused otherwise: {e}")
"""


def test_two_resumes_of_one_stale_folder_at_once_take_it_once(tmp_path):
    """Four processes --resume one folder whose lock is stale, at the same moment: each
    judged the lock stale, then deleted whatever lock was there (another taker's fresh one
    too) and created its own, so two or three took the folder, and others died deleting a
    lock already gone (BeamIOError traceback). The stale lock is now deleted only if it is
    still the one judged (one step among takers) and a lock is never seen half written:
    exactly one takes it, the others are refused as in use."""
    out = tmp_path / "out"
    for trial in range(3):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        lock = {"run_id": "old", "host": os.uname().nodename, "pid": dead.pid}
        lock.update(started_at="2026-01-01T00:00:00+00:00", token="x")
        (out / ".lock").write_text(json.dumps(lock))
        start = time.time() + 5  # after every process has imported
        takers = [
            subprocess.Popen(
                [sys.executable, "-c", TAKE, str(out), str(start), f"run{i}"],
                env={**os.environ, "PYTHONPATH": REPO},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        said = [p.communicate(timeout=120) for p in takers]
        outcomes = sorted(stdout.strip() for stdout, _ in said)
        assert outcomes == ["refused", "refused", "refused", "took"], (trial, said)
        winner = json.loads((out / ".lock").read_text())["run_id"]
        assert winner.startswith("run")
        assert [n for n in os.listdir(out) if n.startswith(".lock")] == [".lock"]
