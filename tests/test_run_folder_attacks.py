"""The run folder against a careless operator and an attacker: --overwrite deletes
only what a run wrote, inside the folder; locks that are links, folders or garbage; Ctrl-C
and SIGTERM; and every failure that was a traceback is one line with its exit code. Each
test hashes what lies beside the run folder before and after: nothing outside it changes."""

import hashlib
import json
import os
import shutil
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from job_argv import job_argv
from test_run_folder import (
    FAST,
    SLOW,
    WORKERS,
    assert_clean_and_committed,
    images,
    rows,
    run_cli,
    spawn,
    staged_parts,
    wait_for,
)

from pipeline import run as job
from pipeline.run import INTERRUPTED


def snapshot(root, skip=None):
    """{path under root: sha256 of a file, the target of a link, or 'dir'}, without ``skip``."""
    out = {}
    for where, dirs, files in os.walk(root):
        if skip is not None and os.path.abspath(where) == os.path.abspath(skip):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(where, name)
            if skip is not None and os.path.abspath(path) == os.path.abspath(skip):
                continue
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                out[key] = "link:" + os.readlink(path)
            elif os.path.isdir(path):
                out[key] = "dir"
            else:
                with open(path, "rb") as f:
                    out[key] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def world(tmp_path):
    """tmp/{victims, sibling run, in/ images, runs/}: what an attack on runs/out aims at."""
    victims = tmp_path / "victims"
    (victims / "stuff").mkdir(parents=True)
    (victims / "keep.txt").write_text("the owner's file")
    (victims / "stuff" / "a.txt").write_text("another")
    sibling = tmp_path / "runs" / "sibling"
    (sibling / "summaries").mkdir(parents=True)
    (sibling / "summaries" / "keep").write_text("a sibling run's part")
    (sibling / "manifest.json").write_text(json.dumps({"run_id": "sibling"}))
    images(tmp_path / "in", 2)
    return tmp_path


@pytest.fixture(scope="module")
def committed(tiny_model, tmp_path_factory):
    """A committed run folder (2 images, masks, overlays, raw, report), copied by each test."""
    root = tmp_path_factory.mktemp("committed")
    folder = images(root / "in", 2)
    out = root / "out"
    assert job.main([*job_argv(f"{folder}/*", out, tiny_model), *FAST, "--write_raw"]) == 0
    return out


def one_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def run_in_process(capsys, *argv):
    code = job.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def with_files(out, files):
    record = json.loads((out / "manifest.json").read_text())
    record["files"] = files
    (out / "manifest.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    "files,named",
    [
        ({"..": ["sibling"]}, "'..'"),
        ({"../../victims": ["keep.txt", "stuff"]}, "'../../victims'"),
        ({"VICTIMS": ["keep.txt"]}, "victims"),
        ({"summaries": ["../../../victims/keep.txt"]}, "'../../../victims/keep.txt'"),
        ({"summaries": ["VICTIMS/keep.txt"]}, "keep.txt"),
        ({"summaries": [".."]}, "'..'"),
        ({"summaries": ["a\0b"]}, "'a\\x00b'"),
        ({"summaries": "keep.txt"}, "'keep.txt'"),
        ({"summaries": {"../../../victims": {"size": 1, "sha256": "0" * 64}}}, "victims"),
        ({"masks": [7]}, "7"),
        (["summaries"], "'files' is not a mapping"),
    ],
)
def test_overwrite_refuses_a_manifest_naming_anything_but_plain_parts(
    tiny_model, world, committed, capsys, files, named
):
    out = world / "runs" / "out"
    shutil.copytree(committed, out, symlinks=True)
    files = json.loads(json.dumps(files).replace("VICTIMS", str(world / "victims")))
    with_files(out, files)
    before, inside = snapshot(world, skip=out), snapshot(out)
    code, err = run_in_process(
        capsys, *job_argv(f"{world}/in/*", out, tiny_model), *FAST, "--overwrite"
    )
    assert code == 2
    line = one_line(err)
    assert line.startswith("error: --overwrite: ") and named in line, line
    assert "nothing was deleted" in line
    assert snapshot(world, skip=out) == before
    assert snapshot(out) == inside  # refused before the lock, before any deletion


@pytest.mark.parametrize("shape", ["names", "sizes"])
def test_overwrite_deletes_the_run_and_nothing_else_with_either_files_shape(
    tiny_model, world, committed, capsys, shape
):
    """``files`` as {folder: [names]} (the older form) or {folder: {name: {size, sha256}}}."""
    out = world / "runs" / "out"
    shutil.copytree(committed, out, symlinks=True)
    record = json.loads((out / "manifest.json").read_text())
    names = {folder: sorted(listed) for folder, listed in record["files"].items()}
    assert names["summaries"] and all(n.endswith(".parquet") for n in names["summaries"])
    with_files(  # whichever shape this version commits, the test sets the one it names
        out,
        names
        if shape == "names"
        else {
            folder: {
                name: {"size": os.path.getsize(out / folder / name), "sha256": "0" * 64}
                for name in listed
            }
            for folder, listed in names.items()
        },
    )
    (out / "notes.txt").write_text("the operator's own notes, beside the run")
    (out / "drafts").mkdir()
    (out / "drafts" / "a.txt").write_text("kept")
    before = snapshot(world, skip=out)
    code, err = run_in_process(
        capsys, *job_argv(f"{world}/in/*", out, tiny_model), *FAST, "--overwrite"
    )
    assert code == 0, err
    assert snapshot(world, skip=out) == before
    assert (out / "notes.txt").read_text().startswith("the operator's")
    assert (out / "drafts" / "a.txt").read_text() == "kept"
    assert not (out / "raw").exists()  # the old run's parts went; this run wrote no raw/
    m = json.loads((out / "manifest.json").read_text())
    assert m["run_id"] != record["run_id"] and m["counts"]["attributed"] == 2


@pytest.mark.parametrize(
    "link,target",
    [
        ("summaries", "VICTIMS"),
        ("masks/img000.png", "VICTIMS/keep.txt"),
        (".staging", "VICTIMS"),
        ("report.html", "VICTIMS/keep.txt"),
        ("raw/deeper/x.npy", "VICTIMS/stuff/a.txt"),
    ],
)
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_a_link_among_the_run_folders_parts_is_refused_and_never_followed(
    tiny_model, world, committed, capsys, link, target, flag
):
    out = world / "runs" / "out"
    shutil.copytree(committed, out, symlinks=True)
    path = out / link
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target.replace("VICTIMS", str(world / "victims")), path)
    before, inside = snapshot(world, skip=out), snapshot(out)
    code, err = run_in_process(capsys, *job_argv(f"{world}/in/*", out, tiny_model), *FAST, flag)
    assert code == 2
    line = one_line(err)
    assert f"{link} is a symbolic link" in line and str(world / "victims") in line, line
    assert snapshot(world, skip=out) == before and snapshot(out) == inside


@pytest.mark.parametrize("part", ["manifest.json", "summaries/part.parquet"])
def test_a_fifo_among_the_parts_is_refused_never_opened(tiny_model, world, committed, capsys, part):
    out = world / "runs" / "out"
    shutil.copytree(committed, out, symlinks=True)
    (out / part).unlink(missing_ok=True)
    os.mkfifo(out / part)
    inside = snapshot(out, skip=out / part)
    for flag in ("--overwrite", "--resume"):
        code, err = run_in_process(capsys, *job_argv(f"{world}/in/*", out, tiny_model), *FAST, flag)
        assert code == 2
        line = one_line(err)
        assert f"{part} is not a regular file nor a folder" in line, line
    assert snapshot(out, skip=out / part) == inside


@pytest.mark.parametrize("flag", [None, "--overwrite", "--resume"])
def test_a_folder_this_tool_did_not_write_is_never_deleted(tiny_model, world, capsys, flag):
    out = world / "runs" / "out"
    (out / "masks").mkdir(parents=True)
    (out / "raw").mkdir()
    (out / "masks" / "mine.png").write_bytes(b"the user's own mask")
    (out / "raw" / "data.npy").write_bytes(b"the user's own array")
    before = snapshot(world)
    code, err = run_in_process(
        capsys, *job_argv(f"{world}/in/*", out, tiny_model), *FAST, *([flag] if flag else [])
    )
    assert code == 2
    line = one_line(err)
    assert "is not a run folder" in line and "choose another --output_dir" in line, line
    assert "masks" in line and "raw" in line
    assert snapshot(world) == before


def test_a_dangling_lock_link_is_named_and_removed_by_overwrite(tiny_model, world, capsys):
    out = world / "runs" / "out"
    out.mkdir(parents=True)
    nowhere = world / "victims" / "nowhere"
    os.symlink(nowhere, out / ".lock")
    argv = [*job_argv(f"{world}/in/*", out, tiny_model), *FAST, "--no_report"]
    code, err = run_in_process(capsys, *argv)
    assert code == 2
    line = one_line(err)
    assert "unreadable lock" in line and "symbolic link" in line and str(nowhere) in line
    assert "older than" not in line
    before = snapshot(world, skip=out)
    code, err = run_in_process(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert not os.path.lexists(nowhere)  # the link was removed, nothing created through it
    assert snapshot(world, skip=out) == before
    assert_clean_and_committed(out)


@pytest.mark.parametrize("target", ["victims", "victims/keep.txt"])
def test_a_lock_link_is_removed_by_overwrite_what_it_names_kept(tiny_model, world, capsys, target):
    out = world / "runs" / "out"
    out.mkdir(parents=True)
    os.symlink(world / target, out / ".lock")
    before = snapshot(world, skip=out)
    code, err = run_in_process(
        capsys, *job_argv(f"{world}/in/*", out, tiny_model), *FAST, "--no_report", "--overwrite"
    )
    assert code == 0, err
    assert "Traceback" not in err
    assert snapshot(world, skip=out) == before
    assert_clean_and_committed(out)


def test_a_lock_that_is_a_folder_is_refused_even_with_overwrite(tiny_model, world, capsys):
    out = world / "runs" / "out"
    (out / ".lock").mkdir(parents=True)
    (out / ".lock" / "inside.txt").write_text("someone's")
    before = snapshot(world)
    code, err = run_in_process(
        capsys, *job_argv(f"{world}/in/*", out, tiny_model), *FAST, "--overwrite"
    )
    assert code == 2
    line = one_line(err)
    assert ".lock is a folder" in line and "not a lock this tool writes" in line, line
    assert snapshot(world) == before


@pytest.mark.parametrize(
    "content,said",
    [
        (b"\x00\xffgarbage", "not a JSON lock"),
        (b"[1, 2]", "holds JSON list"),
        (b'{"run_id": "x", "host": "h", "pid": "12", "started_at": "s", "token": "t"}', "pid"),
        ("FIFO", "not a regular file"),  # reading it would block for ever
    ],
)
def test_a_lock_with_garbage_is_called_unreadable_not_old(tiny_model, world, capsys, content, said):
    out = world / "runs" / "out"
    out.mkdir(parents=True)
    if content == "FIFO":
        os.mkfifo(out / ".lock")
    else:
        (out / ".lock").write_bytes(content)
    argv = [*job_argv(f"{world}/in/*", out, tiny_model), *FAST, "--no_report"]
    code, err = run_in_process(capsys, *argv)
    assert code == 2
    line = one_line(err)
    assert "unreadable lock" in line and said in line and "older than" not in line, line
    code, err = run_in_process(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert_clean_and_committed(out)


@pytest.mark.parametrize("name,group", [("SIGINT", True), ("SIGTERM", False)])
def test_an_interrupted_run_says_one_line_exits_128_plus_the_signal_and_resumes(
    tiny_model, tmp_path, name, group
):
    """Ctrl-C reaches the terminal's whole process group (the launcher and its worker
    processes); a SIGTERM (a scheduler's stop) the launcher alone."""
    folder = images(tmp_path / "in", 12)
    out = tmp_path / "out"
    argv = [*job_argv(f"{folder}/*", out, tiny_model), *SLOW, "--progress_interval", "1"]
    proc = spawn(*argv, *(WORKERS if group else []))

    def published():  # not counting a write a worker has under way (.tmp-*)
        return len([n for n in staged_parts(out) if not n.startswith(".tmp-")])

    assert wait_for(lambda: published() >= 2, proc), proc.communicate()[1][-3000:]
    signum = getattr(signal, name)
    if group:
        os.killpg(os.getpgid(proc.pid), signum)
    else:
        os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert [line for line in err.splitlines() if not line.startswith("progress: ")] == [INTERRUPTED]
    assert not (out / ".lock").exists() and not (out / "manifest.json").exists()
    staged = published()
    assert staged >= 2
    assert job.main([str(a) for a in argv] + ["--resume"]) == 0
    m = assert_clean_and_committed(out)
    assert m["resumed"] and m["counts"]["rows"] == 12 and m["counts"]["reused"] >= staged
    assert len({r["image_uri"] for r in rows(out)}) == 12


@pytest.mark.parametrize("where", ["under_a_file", "under_proc", "link_to_nothing"])
def test_an_unusable_output_dir_is_refused_before_the_model_loads(tmp_path, capsys, where):
    """The model named does not exist: exit 2 (not 3) proves the folder was checked first.
    One case in a real process, the others in this one (the same code path, faster)."""
    (tmp_path / "file.txt").write_text("a regular file")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    out, said = {
        "under_a_file": (tmp_path / "file.txt" / "out", "file.txt is a file, not a folder"),
        "under_proc": ("/proc/ig-no-such-run/out", "cannot create or write a folder in /proc"),
        "link_to_nothing": (tmp_path / "dangling" / "out", "dangling is a link to nothing"),
    }[where]
    images(tmp_path / "in", 1)
    before = snapshot(tmp_path)
    argv = [*job_argv(f"{tmp_path}/in/*", out, tmp_path / "no-model"), *FAST]
    if where == "under_proc":
        result = run_cli(*argv)
        code, err = result.returncode, result.stderr
    else:
        code, err = run_in_process(capsys, *argv)
    assert code == 2, err[-3000:]
    line = one_line(err)
    assert line.startswith(f"error: --output_dir {out}: ") and said in line, line
    assert snapshot(tmp_path) == before


def test_a_model_whose_scores_are_not_finite_is_refused_at_load(tmp_path):
    from conftest import tiny_cnn

    model = tiny_cnn()
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, np.array([np.nan, 0.0, np.inf], np.float32)])
    model.export(str(tmp_path / "nan"), verbose=False)
    images(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = run_cli(*job_argv(f"{tmp_path}/in/*", out, tmp_path / "nan"), *FAST)
    assert result.returncode == 3, result.stderr[-3000:]
    line = one_line(result.stderr)
    assert "the model cannot load" in line and "not all finite (1 NaN, 1 infinite of 3)" in line
    assert not out.exists()


def test_a_run_where_every_input_failed_exits_1_whatever_the_allowed_fraction(
    tiny_model, tmp_path, capsys
):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"broken{i}.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code, err = run_in_process(
        capsys,
        *job_argv(f"{folder}/*", out, tiny_model),
        *FAST,
        "--no_report",
        "--max_failure_fraction",
        "1",
    )
    assert code == 1
    line = one_line(err)
    assert "every one of the 3 matched inputs failed" in line and "--max_failure_fraction" in line
    m = assert_clean_and_committed(out)
    assert (m["counts"]["matched"], m["counts"]["failed"]) == (3, 3)


@pytest.mark.parametrize(
    "case",
    ["config_typo", "labels_folder", "regions_list_column"],
)
def test_a_bad_option_is_one_line_and_exit_2(tiny_model, tmp_path, capsys, case):
    images(tmp_path / "in", 1)
    out = tmp_path / "out"
    (tmp_path / "labels").mkdir()
    (tmp_path / "profile.yaml").write_text("steps: 4\nfaithfulnes: none\n")
    pq.write_table(
        pa.table(
            {
                "image": ["img000.png"],
                "region": [["a", "b"]],
                "x0": [0.0],
                "y0": [0.0],
                "x1": [4.0],
                "y1": [4.0],
            }
        ),
        tmp_path / "regions.parquet",
    )
    extra, said = {
        "config_typo": (
            ["--config", tmp_path / "profile.yaml"],
            "unknown option 'faithfulnes': did you mean 'faithfulness'?",
        ),
        "labels_folder": (["--labels", tmp_path / "labels"], "labels: a folder, not a file"),
        "regions_list_column": (
            ["--regions", tmp_path / "regions.parquet"],
            "column 'region' holds list<",
        ),
    }[case]
    code, err = run_in_process(
        capsys, *job_argv(f"{tmp_path}/in/*", out, tiny_model), *FAST, *extra
    )
    assert code == 2
    line = one_line(err)
    assert line.startswith("error: ") and said in line, line
    assert not out.exists()


def test_regions_that_name_no_input_are_said_in_one_warning(tiny_model, tmp_path):
    images(tmp_path / "in", 2)
    (tmp_path / "regions.csv").write_text(
        "image,region,x0,y0,x1,y1\nother.png,face,0,0,4,4\nelse/img000.png,face,0,0,4,4\n"
    )
    out = tmp_path / "out"
    result = run_cli(
        *job_argv(f"{tmp_path}/in/*", out, tiny_model),
        *FAST,
        "--no_report",
        "--regions",
        tmp_path / "regions.csv",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = one_line(result.stderr)
    assert "none of its 2 boxes names an image --input_pattern matched" in line, line
    assert f"relative to {tmp_path}/in" in line
    assert_clean_and_committed(out)


def test_a_part_swapped_for_a_link_after_the_plan_stops_the_overwrite(world, committed):
    """The overwrite's plan is checked again path by path as it deletes: a contract folder
    replaced by a link in between is removed as a link, never followed, and a listed file
    now reached through it stops the overwrite there."""
    from pipeline import folder
    from pipeline.launch import UsageError

    out = world / "runs" / "out"
    shutil.copytree(committed, out, symlinks=True)
    plan = folder.removable(str(out))
    assert plan[-1] == str(out / "manifest.json") and all(p.startswith(f"{out}/") for p in plan)
    shutil.rmtree(out / "summaries")
    os.symlink(world / "victims", out / "summaries")
    parts = [p for p in plan if "/summaries/" in p]
    (world / "victims" / os.path.basename(parts[0])).write_text("named like a part")
    before = snapshot(world, skip=out)
    with pytest.raises(UsageError, match="is outside --output_dir .*the overwrite stopped there"):
        folder.remove_outputs(str(out), plan=plan)
    assert snapshot(world, skip=out) == before
    folder.remove_outputs(str(out), plan=[p for p in plan if p not in parts])
    assert snapshot(world, skip=out) == before  # the link went, not what it named
    assert not os.path.lexists(out / "summaries") and not (out / "manifest.json").exists()
