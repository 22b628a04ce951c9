"""The run folder on real processes and files: exclusive (lock), clean (refused or
overwritten), committed once by the job, resumable after kill -9, safe with special files,
honest exits."""

import datetime
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from job_argv import job_argv
from PIL import Image

from pipeline import run as job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--steps", "4", "--tolerance", "0.05", "--max_steps", "16", "--progress_interval", "0"]
# Slow enough to be caught mid-run: 512 points per image, 2 images per engine call, a part
# published per batch (--commit_interval 0), two worker processes.
SLOW = [
    "--method",
    "riemann_trapezoid",
    "--steps",
    "512",
    "--tolerance",
    "0",
    "--batch_size",
    "16",
    "--image_batch_size",
    "2",
    "--commit_interval",
    "0",
    "--progress_interval",
    "0",
    "--no_report",
]
WORKERS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


def images(folder, n, size=(12, 10), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(
            folder / f"img{i:03d}.png"
        )
    return folder


def files_under(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def rows(out, folder="summaries"):
    return sorted(
        pq.read_table(os.path.join(out, folder)).to_pylist(),
        key=lambda r: (r["image_uri"], r.get("target_rank") or 0),
    )


def manifest(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def assert_clean_and_committed(out):
    """A committed folder: manifest listing exactly the data files, nothing private left."""
    m = manifest(out)
    assert m["complete"], m["counts"]
    for folder in ("summaries", "errors"):
        assert sorted(os.listdir(os.path.join(out, folder))) == sorted(m["files"][folder])
    names = [os.path.relpath(p, out) for p in files_under(out)]
    assert not [
        n for n in names if n.startswith((".staging", ".lock")) or ".tmp-" in n or "beam-temp" in n
    ], names
    assert not [p for p in files_under(out) if os.path.getsize(p) == 0]
    return m


def spawn(*argv):
    """`python -m pipeline` in its own process group (its DirectRunner workers join it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *map(str, argv)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_cli(*argv, timeout=300):
    """`python -m pipeline` to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, argv)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def group_pids(pgid):
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(name))
    return pids


def wait_for(condition, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def kill_group(proc):
    """kill -9 the launcher and every worker process of its group; wait until all are gone."""
    pgid = os.getpgid(proc.pid)
    members = group_pids(pgid)
    os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_pids(pgid)
    return members


def staged_parts(out):
    folder = os.path.join(out, ".staging", "summaries")
    return (
        [n for n in os.listdir(folder) if n.endswith(".parquet")] if os.path.isdir(folder) else []
    )


def same_rows(a, b):
    assert [r["image_uri"] for r in a] == [r["image_uri"] for r in b]
    for x, y in zip(a, b):
        for key in (
            "image_id",
            "target_class",
            "predicted_class",
            "steps",
            "mask_uri",
            "overlay_uri",
            "content_sha256",
            "settings_hash",
            "model_fingerprint",
        ):
            if key.endswith("_uri"):
                assert os.path.basename(x[key]) == os.path.basename(y[key])
            else:
                assert x[key] == y[key], key
        assert np.isclose(x["attribution_sum"], y["attribution_sum"], rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def slow_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("slow")
    return images(root / "in", 24)


@pytest.fixture(scope="module")
def clean_run(tiny_model, slow_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    assert (
        job.main(
            [
                *job_argv(f"{slow_inputs}/*", str(out), tiny_model),
                *SLOW,
            ]
        )
        == 0
    )
    return out


@pytest.mark.parametrize("point", ["parts_staged", "inputs_listed"])
def test_kill_9_mid_run_then_resume_ends_as_a_clean_run(
    tiny_model, slow_inputs, clean_run, tmp_path, point
):
    out = tmp_path / "out"
    argv = [
        *job_argv(f"{slow_inputs}/*", out, tiny_model),
        *SLOW,
    ]
    proc = spawn(*argv, *WORKERS)
    if point == "parts_staged":
        reached = lambda: len(staged_parts(out)) >= 3
    else:  # the workers started, nothing published yet
        reached = lambda: (
            (out / ".staging" / "inputs.parquet").exists() and len(group_pids(proc.pid)) >= 3
        )
    assert wait_for(reached, proc), proc.communicate()[1][-3000:]
    assert not (out / "manifest.json").exists()  # caught before the commit
    members = kill_group(proc)
    assert len(members) >= 3  # the launcher and its two worker processes were killed
    lock = json.loads((out / ".lock").read_text())
    assert lock["pid"] == proc.pid

    # The same command without --resume is refused: the lock is stale, the folder unfinished.
    assert job.main([str(a) for a in argv]) == 2
    staged = len(staged_parts(out))
    assert job.main([str(a) for a in argv] + ["--resume"]) == 0
    m = assert_clean_and_committed(out)
    assert m["resumed"] and m["run_id"] == lock["run_id"]
    resumed, clean = rows(out), rows(clean_run)
    same_rows(resumed, clean)
    assert len({r["image_uri"] for r in resumed}) == len(resumed) == 24  # no duplicated row
    assert m["counts"]["rows"] == 24 and m["counts"]["failed"] == 0
    if point == "parts_staged":  # what the killed attempt published is not recomputed
        assert staged >= 3 and m["counts"]["reused"] >= staged
        assert m["counts"]["computed"] == 24 - m["counts"]["reused"]
    masks = sorted(os.listdir(out / "masks"))
    assert masks == sorted(os.listdir(clean_run / "masks"))


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_owner(
    tiny_model, slow_inputs, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = [
        *job_argv(f"{slow_inputs}/*", out, tiny_model),
        *SLOW,
    ]
    first = spawn(*argv)
    assert wait_for(lambda: (out / ".lock").exists(), first)
    assert job.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "in use by run" in err and f"pid {first.pid}" in err and "\n" not in err
    assert job.main([str(a) for a in argv] + ["--overwrite"]) == 2  # a live lock is never taken
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert_clean_and_committed(out)
    assert len(rows(out)) == 24


def test_a_stale_lock_is_reported_and_needs_resume_or_overwrite(tiny_model, tmp_path, capsys):
    folder = images(tmp_path / "in", 2)
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out.mkdir()
    (out / ".lock").write_text(
        json.dumps(
            {
                "run_id": "old",
                "host": os.uname().nodename,
                "pid": dead.pid,
                "started_at": "2026-01-01T00:00:00+00:00",
                "token": "x",
            }
        )
    )
    argv = [
        *job_argv(f"{folder}/*", str(out), tiny_model),
        *FAST,
    ]
    assert job.main(argv) == 2
    err = capsys.readouterr().err
    assert "stale lock" in err and "--resume" in err and "--overwrite" in err
    assert job.main(argv + ["--overwrite"]) == 0
    assert_clean_and_committed(out)
    # The lock of a live process (this one) an hour old is in use; older than
    # --lock_timeout it is stale even while its process lives.
    an_hour_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    (out / ".lock").write_text(
        json.dumps(
            {
                "run_id": "old",
                "host": os.uname().nodename,
                "pid": os.getpid(),
                "started_at": an_hour_ago.isoformat(timespec="seconds"),
                "token": "x",
            }
        )
    )
    assert job.main(argv + ["--overwrite"]) == 2
    assert "in use by run 'old'" in capsys.readouterr().err
    assert job.main(argv + ["--overwrite", "--lock_timeout", "60"]) == 0
    assert_clean_and_committed(out)


def test_rerun_is_refused_then_overwrite_replaces_everything(tiny_model, tmp_path, capsys):
    folder = images(tmp_path / "in", 6)
    out = tmp_path / "out"
    assert (
        job.main(
            [
                *job_argv(f"{folder}/*", str(out), tiny_model),
                "--target",
                "topk:2",
                "--write_raw",
                *FAST,
            ]
        )
        == 0
    )
    assert len(rows(out)) == 12
    smaller = [
        *job_argv(f"{folder}/img00[0-2].png", str(out), tiny_model),
        "--method",
        "riemann_middle",
        *FAST,
        "--direct_num_workers",
        "2",
        "--direct_running_mode",
        "multi_threading",
    ]
    assert job.main(smaller) == 2
    err = capsys.readouterr().err
    assert "holds another run's outputs" in err and "--overwrite" in err
    assert len(rows(out)) == 12  # refused before touching anything
    assert job.main(smaller + ["--overwrite"]) == 0
    m = assert_clean_and_committed(out)
    new = rows(out)
    assert len(new) == 3 and {r["method"] for r in new} == {"riemann_middle"}
    assert m["counts"] == {**m["counts"], "matched": 3, "attributed": 3, "rows": 3}
    assert len(os.listdir(out / "masks")) == len(os.listdir(out / "overlays")) == 3
    assert not (out / "raw").exists()  # the earlier run's raw files went with it


def test_special_files_become_error_rows_at_once(tiny_model, tmp_path):
    folder = images(tmp_path / "in", 2)
    os.mkfifo(folder / "fifo.png")
    os.symlink("/dev/zero", folder / "zero.png")
    (folder / "large.png").write_bytes(b"\x89PNG" + b"\0" * 5000)
    out = tmp_path / "out"
    started = time.monotonic()
    result = run_cli(
        *job_argv(f"{folder}/*", str(out), tiny_model),
        "--max_file_bytes",
        "4000",
        *FAST,
        "--no_report",
        timeout=50,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 50
    errors = {os.path.basename(r["image_uri"]): r for r in rows(out, "errors")}
    assert {k: (v["stage"], v["error_type"]) for k, v in errors.items()} == {
        "fifo.png": ("read", "NotRegularFile"),
        "zero.png": ("read", "NotRegularFile"),
        "large.png": ("read", "FileTooLarge"),
    }
    assert "FIFO" in errors["fifo.png"]["message"]
    assert "character device" in errors["zero.png"]["message"]
    assert len(rows(out)) == 2
    assert_clean_and_committed(out)


def test_a_listed_file_that_vanished_is_an_error_row_naming_it(tmp_path):
    from transforms.read import DecodeFn

    fn = DecodeFn((8, 8), 10_000)
    [out] = list(fn.process(str(tmp_path / "gone.png")))
    assert out.tag == "errors"
    assert out.value["image_uri"].endswith("gone.png")
    assert out.value["error_type"] == "FileNotFound"


def test_the_output_folder_inside_the_input_pattern_is_never_read(tiny_model, tmp_path):
    data = images(tmp_path / "data", 3)
    out = data / "out"
    argv = ["--input_pattern", f"{data}/**", "--output_dir", str(out), "--model", tiny_model, *FAST]
    assert job.main(argv) == 0
    assert job.main(argv + ["--overwrite"]) == 0  # its masks and Parquet are there now
    m = assert_clean_and_committed(out)
    assert m["counts"]["matched"] == 3 and m["counts"]["failed"] == 0
    assert not [r for r in rows(out) if r["image_uri"].startswith(str(out))]


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs mounted for the test (needs root and a kernel that allows it)."""

    def mount(size):
        point = tmp_path / f"tmpfs-{size}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or 'not root'}")
        mounted.append(point)
        return point

    mounted = []
    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_disk_ends_with_exit_1_naming_the_file_and_no_half_written_file(
    tiny_model, tmp_path, tmpfs
):
    folder = images(tmp_path / "in", 40, size=(64, 48))
    disk = tmpfs("48k")
    out = disk / "out"
    result = run_cli(
        *job_argv(f"{folder}/*", str(out), tiny_model),
        *FAST,
        "--write_raw",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {out}/"), last
    assert "No space left on device" in last and "--resume" in last and "[" not in last
    assert "Traceback" not in result.stderr  # one line, not Beam's logs of every attempt
    assert not [p for p in files_under(out) if ".tmp-" in p or os.path.getsize(p) == 0]
    assert not (out / ".lock").exists() and not (out / "manifest.json").exists()
    for path in files_under(out):  # every file there is whole
        if path.endswith(".parquet"):
            pq.read_metadata(path)
        elif path.endswith(".png"):
            Image.open(path).load()


def test_a_report_that_does_not_fit_exits_1_with_the_data_committed(tiny_model, tmp_path, tmpfs):
    folder = images(tmp_path / "in", 1, size=(8, 8))
    disk = tmpfs("76k")
    out = disk / "out"
    result = run_cli(
        *job_argv(f"{folder}/*", str(out), tiny_model),
        *FAST,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {out}/report.html: No space left on device")
    m = assert_clean_and_committed(out)
    assert m["report"] is None and "report.html" in m["report_error"]
    assert not (out / "report.html").exists()


def _corrupt_run(tmp_path):
    run = tmp_path / "previous"
    (run / "summaries").mkdir(parents=True)
    (run / "summaries" / "part.parquet").write_bytes(b"PAR1 not really parquet")
    (run / "manifest.json").write_text(json.dumps({"finished_at": "x", "run_id": "p"}))
    return run


@pytest.mark.parametrize(
    "case",
    [
        "target_out_of_range",
        "huge_batch",
        "huge_steps",
        "labels_not_utf8",
        "regions_empty",
        "regions_nan",
        "output_dir_is_a_file",
        "corrupt_reuse_from",
        "image_size_contradicts",
        "overwrite_and_resume",
        "max_file_bytes_zero",
    ],
)
def test_every_bad_option_is_refused_before_any_work_with_one_line(
    tiny_model, tmp_path, capsys, case
):
    folder = images(tmp_path / "in", 1)
    out = tmp_path / "out"
    extra, expected = {
        "target_out_of_range": (["--target", "3"], "the model has 3 classes"),
        "huge_batch": (["--batch_size", "1000000"], "--batch_size must be <= "),
        "huge_steps": (["--steps", "100000000"], "--steps must be <= "),
        "labels_not_utf8": (["--labels", "LABELS"], "not UTF-8"),
        "regions_empty": (["--regions", "REGIONS_EMPTY"], "empty 'region' cell"),
        "regions_nan": (["--regions", "REGIONS_NAN"], "not a finite number"),
        "output_dir_is_a_file": ([], "is an existing file"),
        "corrupt_reuse_from": (["--reuse_from", "CORRUPT"], "cannot be read as Parquet"),
        "image_size_contradicts": (["--image_size", "8,8"], "does not match"),
        "overwrite_and_resume": (["--overwrite", "--resume"], "exclude each other"),
        "max_file_bytes_zero": (["--max_file_bytes", "0"], "--max_file_bytes must be"),
    }[case]
    (tmp_path / "labels.txt").write_bytes("chat\nchien\n\xe9t\xe9\n".encode("latin-1"))
    (tmp_path / "empty.csv").write_text("image,region,x0,y0,x1,y1\nimg000.png,,0,0,4,4\n")
    (tmp_path / "nan.csv").write_text("image,region,x0,y0,x1,y1\nimg000.png,a,0,nan,4,4\n")
    substitutions = {
        "LABELS": tmp_path / "labels.txt",
        "REGIONS_EMPTY": tmp_path / "empty.csv",
        "REGIONS_NAN": tmp_path / "nan.csv",
        "CORRUPT": _corrupt_run(tmp_path),
    }
    extra = [str(substitutions.get(a, a)) for a in extra]
    if case == "output_dir_is_a_file":
        out.write_text("not a folder")
    assert (
        job.main(
            [
                *job_argv(f"{folder}/*", str(out), tiny_model),
                *FAST,
                *extra,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert out.is_file() if case == "output_dir_is_a_file" else not out.exists()


def test_a_resume_with_an_unreadable_previous_run_is_refused(tiny_model, tmp_path, capsys):
    folder = images(tmp_path / "in", 1)
    out = tmp_path / "out"
    (out / ".staging").mkdir(parents=True)
    (out / ".staging" / "inputs.parquet").write_bytes(b"cut short by a crash")
    (out / "summaries").mkdir()
    pq.write_table(pa.table({"image_uri": ["x"]}), out / "summaries" / "old.parquet")
    (out / ".staging" / "summaries").mkdir()
    (out / ".staging" / "summaries" / "damaged.parquet").write_bytes(b"PAR1 damaged")
    argv = [
        *job_argv(f"{folder}/*", str(out), tiny_model),
        *FAST,
    ]
    assert job.main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    # A list cut short is matched again; a damaged part is dropped and rows of another
    # schema are not reused: all is computed again, the job does not fail on them.
    assert job.main(argv + ["--resume"]) == 0
    m = assert_clean_and_committed(out)
    assert (m["counts"]["matched"], m["counts"]["reused"], m["counts"]["computed"]) == (1, 0, 1)


def test_the_job_attributes_the_list_it_was_given_while_the_folder_changes(tiny_model, tmp_path):
    folder = images(tmp_path / "in", 24)
    out = tmp_path / "out"
    proc = spawn(
        "--input_pattern", f"{folder}/*", "--output_dir", out, "--model", tiny_model, *SLOW
    )
    assert wait_for(lambda: (out / ".staging" / "inputs.parquet").exists(), proc)
    os.remove(folder / "img023.png")  # listed, then gone before it is read
    images(tmp_path / "late", 1)
    os.rename(tmp_path / "late" / "img000.png", folder / "late.png")  # added after the list
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    m = assert_clean_and_committed(out)
    assert (m["counts"]["matched"], m["counts"]["attributed"], m["counts"]["failed"]) == (24, 23, 1)
    [error] = rows(out, "errors")
    assert error["image_uri"] == str(folder / "img023.png")
    assert (error["stage"], error["error_type"]) == ("read", "FileNotFound")
    assert not [r for r in rows(out) if r["image_uri"].endswith("late.png")]


def test_links_to_nothing_link_loops_and_folders_the_pattern_names_are_error_rows(
    tiny_model, tmp_path
):
    """Beam's match lists only what it can stat as a file: the launcher lists the rest of
    what the pattern names, and each becomes one error row saying what it is."""
    folder = images(tmp_path / "in", 2)
    os.symlink(tmp_path / "nowhere.png", folder / "dangling.png")
    os.symlink(folder / "loop.png", folder / "loop.png")
    (folder / "folder.png").mkdir()
    (folder / "folder.png" / "inside.txt").write_text("not an image")
    out = tmp_path / "out"
    result = run_cli(
        *job_argv(f"{folder}/*.png", str(out), tiny_model),
        *FAST,
        "--no_report",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    m = assert_clean_and_committed(out)
    errors = {os.path.basename(r["image_uri"]): r for r in rows(out, "errors")}
    assert {k: (v["stage"], v["error_type"]) for k, v in errors.items()} == {
        "dangling.png": ("read", "BrokenLink"),
        "loop.png": ("read", "Unreadable"),
        "folder.png": ("read", "NotRegularFile"),
    }
    assert "nowhere.png" in errors["dangling.png"]["message"]
    assert "a folder" in errors["folder.png"]["message"]
    assert len(rows(out)) == 2
    assert m["counts"]["matched"] == 5 and m["counts"]["failed"] == 3


def test_a_recursive_pattern_walks_folders_without_listing_them(tmp_path):
    from pipeline.run import match_inputs

    folder = images(tmp_path / "in", 2)
    (folder / "sub").mkdir()
    images(folder / "sub", 1)
    os.symlink(tmp_path / "nowhere.png", folder / "sub" / "dangling.png")
    listed = [os.path.relpath(p, folder) for p in match_inputs(f"{folder}/**")]
    assert "sub" not in listed
    assert "sub/dangling.png" in listed
    assert len([p for p in listed if p.endswith(".png")]) == 4
    single = match_inputs(str(folder / "sub" / "dangling.png"))
    assert single == [str(folder / "sub" / "dangling.png")]
