"""The run folder's records are true: the manifest's digests are checked before a
folder is reused or resumed, every reused row's arithmetic is re-checked, no file a row names
is copied from outside its run folder, and --resume finishes the same run or refuses. Each
attack runs on real processes and real files."""

import hashlib
import json
import math
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from job_argv import job_argv
from test_run_folder import (
    FAST,
    SLOW,
    WORKERS,
    assert_clean_and_committed,
    group_pids,
    images,
    kill_group,
    manifest,
    rows,
    run_cli,
    spawn,
    wait_for,
)

from transforms.write import SUMMARY_SCHEMA


def one_line_error(done):
    """The last stderr line of a refused run: one `error: ...` line, no traceback."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def digests(root):
    """{path: sha256} of every file under ``root``: what must not change."""
    return {
        os.path.join(d, f): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
        for d, _, fs in os.walk(root)
        for f in fs
    }


@pytest.fixture(scope="module")
def first_run(tiny_model, tmp_path_factory):
    """A finished run of 4 images (masks and overlays), made once, copied by each test."""
    root = tmp_path_factory.mktemp("trust")
    folder = images(root / "in", 4)
    out = root / "first"
    done = run_cli(*job_argv(f"{folder}/*", out, tiny_model), *FAST, "--no_report")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, out


def copy_run(first_run, tmp_path):
    folder, out = first_run
    copy = tmp_path / "previous"
    shutil.copytree(out, copy)
    return folder, copy


def rewrite_rows(run, change, *, update_manifest=True, plain_names=False):
    """Rewrite the summaries of ``run`` with ``change(rows)`` applied, as a forger with write
    access would: every uri column still names ``run``'s own files unless changed, and the
    manifest's digests are rewritten too (``update_manifest``) or left as they were."""
    (part,) = [p for p in os.listdir(run / "summaries")]
    path = run / "summaries" / part
    table = pq.read_table(path).to_pylist()
    change(table)
    pq.write_table(pa.Table.from_pylist(table, schema=SUMMARY_SCHEMA), path)
    m = manifest(run)
    if plain_names:
        m["files"] = {folder: sorted(names) for folder, names in m["files"].items()}
    elif update_manifest:
        data = path.read_bytes()
        m["files"]["summaries"][part] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    (run / "manifest.json").write_text(json.dumps(m))
    return path


def test_the_manifest_lists_each_part_with_its_size_and_sha256(first_run):
    _, out = first_run
    m = assert_clean_and_committed(out)
    for folder in ("summaries", "errors"):
        assert m["files"][folder]  # an entry per part, also for an empty errors folder
        for name, entry in m["files"][folder].items():
            data = (out / folder / name).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert m["counts"]["not_in_run"] == 0 and m["counts"]["reverified_failed"] == 0


@pytest.mark.parametrize("how", ["reuse_from", "resume"])
def test_a_part_changed_after_its_run_is_refused_naming_the_file(
    tiny_model, first_run, tmp_path, how
):
    folder, previous = copy_run(first_run, tmp_path)
    (part,) = os.listdir(previous / "summaries")
    path = previous / "summaries" / part
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit: still a file of the same size
    path.write_bytes(bytes(data))
    before = digests(previous)
    if how == "reuse_from":
        out = tmp_path / "out"
        argv = [*job_argv(f"{folder}/*", out, tiny_model), *FAST, "--reuse_from", previous]
    else:
        out = previous
        argv = [*job_argv(f"{folder}/*", out, tiny_model), *FAST, "--resume"]
    done = run_cli(*argv)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line_error(done)
    assert f"--{how}" in line and str(path) in line and "sha256" in line, line
    assert digests(previous) == before  # nothing moved, nothing deleted
    if how == "reuse_from":
        assert not out.exists() or not (out / "manifest.json").exists()


def test_an_edited_row_with_its_digest_rewritten_is_recomputed_and_counted(
    tiny_model, first_run, tmp_path
):
    folder, previous = copy_run(first_run, tmp_path)
    edited = {}

    def forge(table):
        row = table[0]
        edited["uri"] = row["image_uri"]
        row.update(attribution_sum=123.0, relative_completeness_error=0.0, converged=True)

    rewrite_rows(previous, forge)
    out = tmp_path / "out"
    done = run_cli(
        *job_argv(f"{folder}/*", out, tiny_model), *FAST, "--no_report", "--reuse_from", previous
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m = assert_clean_and_committed(out)
    counts = m["counts"]
    assert counts["reverified_failed"] == 1
    assert (counts["reused"], counts["computed"]) == (3, 1)
    assert "fails its re-check" in done.stderr
    row = next(r for r in rows(out) if r["image_uri"] == edited["uri"])
    assert row["attribution_sum"] != 123.0
    # the recomputed row's arithmetic holds: its stored error is its own sum's
    found = abs(row["attribution_sum"] - (row["target_score"] - row["baseline_score"]))
    assert math.isclose(found, row["completeness_error"], rel_tol=1e-9, abs_tol=1e-12)
    original = next(r for r in rows(first_run[1]) if r["image_uri"] == edited["uri"])
    assert math.isclose(row["attribution_sum"], original["attribution_sum"], rel_tol=1e-5)


def test_a_manifest_of_plain_names_is_accepted_said_and_its_rows_re_checked(
    tiny_model, first_run, tmp_path
):
    folder, previous = copy_run(first_run, tmp_path)

    def forge(table):
        # within the bound an average over baselines allows, not what one path gives
        table[1]["completeness_error"] += 0.5

    rewrite_rows(previous, forge, plain_names=True)
    out = tmp_path / "out"
    done = run_cli(
        *job_argv(f"{folder}/*", out, tiny_model), *FAST, "--no_report", "--reuse_from", previous
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "not verifiable" in line]
    assert len(said) == 1 and str(previous) in said[0]
    m = assert_clean_and_committed(out)
    assert m["counts"]["reverified_failed"] == 1 and m["counts"]["reused"] == 3


def test_rows_naming_files_outside_their_run_folder_never_copy_them(
    tiny_model, first_run, tmp_path
):
    """Four forged rows of one previous run: a secret file outside, a file outside with a
    mask's own name, /etc/passwd, and a mask replaced by a link to the secret. Only the
    run's own regular masks/<name> is ever read: the first, third and fourth images are
    computed again, the second reuses its run's own mask."""
    folder, previous = copy_run(first_run, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"the secret\n")
    names = sorted(os.listdir(previous / "masks"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / names[1]).write_bytes(secret.read_bytes())
    named = {
        names[0]: str(secret),
        # the stored directory is never followed: the run's own masks/<name> is read
        names[1]: str(tmp_path / "elsewhere" / names[1]),
        names[2]: "/etc/passwd",
    }
    os.remove(previous / "masks" / names[3])  # a link inside masks/ to a file outside
    os.symlink(secret, previous / "masks" / names[3])

    def forge(table):
        for row in table:
            row["mask_uri"] = named.get(os.path.basename(row["mask_uri"]), row["mask_uri"])

    rewrite_rows(previous, forge)
    outside = secret.read_bytes()
    out = tmp_path / "out"
    done = run_cli(
        *job_argv(f"{folder}/*", out, tiny_model), *FAST, "--no_report", "--reuse_from", previous
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m = assert_clean_and_committed(out)
    assert (m["counts"]["reused"], m["counts"]["computed"]) == (1, 3)
    reused = next(r for r in rows(out) if os.path.basename(r["mask_uri"]) == names[1])
    assert (out / "masks" / names[1]).read_bytes() == (
        first_run[1] / "masks" / names[1]
    ).read_bytes()
    assert reused["image_uri"] in {r["image_uri"] for r in rows(first_run[1])}
    copied = [open(p, "rb").read() for p in (out / "masks").iterdir()]
    assert outside not in copied and not any(b"root:" in c for c in copied)
    assert all(c.startswith(b"\x89PNG") for c in copied)
    assert secret.read_bytes() == outside  # and nothing outside changed
    assert sorted(os.listdir(out / "masks")) == names
    assert not any(os.path.islink(p) for p in (out / "masks").iterdir())


def test_resume_of_a_committed_folder_with_another_target_is_refused(
    tiny_model, first_run, tmp_path
):
    folder, previous = copy_run(first_run, tmp_path)
    before = digests(previous)
    argv = [*job_argv(f"{folder}/*", previous, tiny_model), *FAST, "--no_report"]
    done = run_cli(*argv, "--target", "1", "--resume")
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line_error(done)
    assert "--target" in line and "'1'" in line and "'predicted'" in line, line
    assert digests(previous) == before


def test_resume_after_kill_9_refuses_another_run_then_finishes_its_own(tiny_model, tmp_path):
    """kill -9 mid-run; --resume with another --input_pattern, --target or --artifacts exits 2
    naming the option and both values; with the same options it finishes the listed inputs,
    names and counts the files matched now but not listed, and removes orphan masks."""
    folder = images(tmp_path / "in", 12)
    other = images(tmp_path / "other", 2, seed=5)
    out = tmp_path / "out"
    argv = [*job_argv(f"{folder}/*", out, tiny_model), *SLOW]
    proc = spawn(*argv, *WORKERS)
    reached = lambda: (
        (out / ".staging" / "inputs.parquet").exists() and len(group_pids(proc.pid)) >= 3
    )
    assert wait_for(reached, proc), proc.communicate()[1][-3000:]
    kill_group(proc)
    assert not (out / "manifest.json").exists()

    changed = {
        "--input_pattern": (f"{other}/*", f"{folder}/*"),
        "--target": ("1", "predicted"),
        "--artifacts": ("masks", "masks,overlays"),
    }
    for option, (now, then) in changed.items():
        again = list(argv)
        if option == "--input_pattern":
            again[again.index(option) + 1] = now
        else:
            again += [option, now]
        done = run_cli(*again, "--resume")
        assert done.returncode == 2, (option, done.stderr[-3000:])
        line = one_line_error(done)
        assert option in line and repr(now) in line and repr(then) in line, line

    images(tmp_path / "late", 1, seed=9)
    late = folder / "late.png"
    os.rename(tmp_path / "late" / "img000.png", late)  # matched now, not in the run's list
    (out / "masks").mkdir(exist_ok=True)
    orphan = out / "masks" / "img000-0123456789ab--class2.png"  # an old attempt's mask
    orphan.write_bytes(b"\x89PNG not a mask of this run")
    done = run_cli(*argv, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "not in the interrupted run" in line]
    assert len(said) == 1 and str(late) in said[0] and "1 file" in said[0]
    m = assert_clean_and_committed(out)
    assert m["resumed"] and m["counts"]["not_in_run"] == 1
    assert m["counts"]["matched"] == 12 and m["counts"]["attributed"] == 12
    assert str(late) not in {r["image_uri"] for r in rows(out)}
    assert m["config"]["input_pattern"] == f"{folder}/*"
    assert not orphan.exists()
    named = {os.path.basename(r["mask_uri"]) for r in rows(out)}
    assert set(os.listdir(out / "masks")) == named


def test_two_listed_files_with_one_image_id_are_one_row_and_a_duplicate_id_error():
    """File ids are derived from uris (12 hex digits of sha1), so two listed files share one
    only by a hash collision: then the first uri in sorted order keeps the id, whatever order
    the workers see them in, and the other is a DuplicateId error naming it."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.read import FirstOfIdFn
    from transforms.records import ERRORS

    with TestPipeline() as p:
        found = (
            p
            | beam.Create([("x-0123456789ab", ["/in/b.png", "/in/c.png", "/in/a.png"])])
            | beam.ParDo(FirstOfIdFn()).with_outputs(ERRORS, main="uris")
        )
        assert_that(found.uris, equal_to(["/in/a.png"]), label="First")
        errors = found[ERRORS] | beam.Map(
            lambda r: (r["image_uri"], r["error_type"], "'/in/a.png'" in r["message"])
        )
        assert_that(
            errors,
            equal_to([("/in/b.png", "DuplicateId", True), ("/in/c.png", "DuplicateId", True)]),
            label="Later",
        )
