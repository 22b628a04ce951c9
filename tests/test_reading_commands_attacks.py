"""The reading commands (compare, report, demo) attacked as an attacker and a careless operator
would: an output that is, holds or lies inside a run they read (also through a link), two
comparisons into one folder at once, one killed mid-write, forged runs with 240 classes, grids
larger than any run writes, rows that give no content hash, a 3 GB manifest. A run folder is
never written into nor deleted; a page stays bounded; a refusal is one line, exit 2, before
anything is read or written."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_folders import REPO, cli, make_run, one_error_line, summary_row


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (links not followed) with its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file() and not p.is_symlink()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _run(folder: Path) -> Path:
    return make_run(folder, rows=[summary_row(folder, i, 0) for i in range(2)])


# (run A, run B, --output_dir), relative to the test's folder; "link" is a link to "a"
LAYOUTS = {
    # the comparison deletes OUTPUT_DIR/drift and OUTPUT_DIR/unmatched before it writes: both
    # runs were deleted whole
    "runs named like its outputs": ("out/drift", "out/unmatched", "out"),
    "one of the runs": ("a", "b", "a"),
    "inside a run": ("a", "b", "a/drift"),
    "a link to a run": ("a", "b", "link"),
    "another run": ("a", "b", "c"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compare_never_writes_into_or_deletes_a_run_folder(tmp_path, layout):
    run_a, run_b, out = (tmp_path / p for p in LAYOUTS[layout])
    for folder in {run_a, run_b, tmp_path / "a", tmp_path / "c"}:
        _run(folder)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    runs = [tmp_path / "a", tmp_path / "c", run_a, run_b]
    before = {str(r): snapshot(r) for r in runs}
    result = cli("pipeline.compare", run_a, run_b, "--output_dir", out, timeout=180)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result)
    assert line.startswith(f"error: --output_dir {out}"), line
    assert {str(r): snapshot(r) for r in runs} == before
    assert not (run_a / "drift.html").exists() and not (out / "drift_summary.json").exists()


def test_compare_into_a_folder_beside_the_runs_still_works(tmp_path):
    """Runs below --output_dir, but not where the comparison writes, are compared as before."""
    run_a, run_b = _run(tmp_path / "runs" / "a"), _run(tmp_path / "runs" / "b")
    result = cli("pipeline.compare", run_a, run_b, "--output_dir", tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "drift.html").is_file() and (run_a / "manifest.json").is_file()
    assert sorted(os.listdir(run_a)) == sorted(os.listdir(run_b))


def test_a_second_comparison_into_a_folder_in_use_is_refused(tmp_path):
    """Two comparisons into one folder at once each deleted the other's parts and mixed their
    own in; now the folder is locked as a run folder is, and the second is refused."""
    from pipeline import lock

    run_a, run_b, out = _run(tmp_path / "a"), _run(tmp_path / "b"), tmp_path / "drift"
    first = cli("pipeline.compare", run_a, run_b, "--output_dir", out, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    written = snapshot(out)
    lock.create(str(out), lock.Lock.new("compare-elsewhere"))  # this live process holds it
    try:
        second = cli("pipeline.compare", run_a, run_b, "--output_dir", out, timeout=180)
    finally:
        held = lock.read(str(out))
        lock.release(str(out), held.token)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is in use by run 'compare-elsewhere' (host {held.host}, pid {os.getpid()}" in (
        one_error_line(second)
    )
    assert snapshot(out) == written


def test_a_comparison_killed_mid_write_is_replaced_by_the_rerun(tmp_path):
    """kill -9 once the job has begun writing: the rerun takes the dead process's lock and
    leaves only its own outputs (no beam-temp-* folder, no lock)."""
    run_a, run_b, out = _run(tmp_path / "a"), _run(tmp_path / "b"), tmp_path / "drift"
    killed = subprocess.Popen(
        [sys.executable, "-m", "pipeline.compare", run_a, run_b, "--output_dir", out],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while killed.poll() is None and not (out / "drift").exists():
            time.sleep(0.05)
    finally:
        killed.kill()
        killed.wait()
    rerun = cli("pipeline.compare", run_a, run_b, "--output_dir", out, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["drift", "drift.html", "drift_summary.json", "unmatched"]
    assert [p.name for p in (out / "drift").iterdir()] == ["part-00000-of-00001.parquet"]


@pytest.mark.parametrize("target", ["a/manifest.json", "b/report.html", "link/masks/page.html"])
def test_the_methods_page_is_never_written_into_a_run_it_reads(tmp_path, target):
    """``--output A/manifest.json`` replaced run A's manifest by the page: the run was gone."""
    runs = [_run(tmp_path / "a"), _run(tmp_path / "b")]
    (tmp_path / "link").symlink_to(tmp_path / "a")
    before = [snapshot(r) for r in runs]
    result = cli("pipeline.report", *runs, "--output", tmp_path / target)
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_error_line(result).startswith(f"error: --output {tmp_path / target} is inside ")
    assert [snapshot(r) for r in runs] == before
    beside = cli("pipeline.report", *runs, "--output", tmp_path / "methods.html")
    assert beside.returncode == 0 and (tmp_path / "methods.html").is_file(), beside.stderr


def test_the_comparison_page_lists_a_bounded_number_of_classes(tmp_path):
    """A run of as many classes as rows made drift.html grow one table row per class (15 MB
    at 20,000 classes); the page shows TABLE_ROWS, those whose predictions changed most,
    and says how many more drift_summary.json holds."""
    import re

    from pipeline.compare.strategies import TABLE_ROWS

    classes = TABLE_ROWS + 40
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        rows = []
        for i in range(classes):
            row = summary_row(folder, i, 0)
            changed = name == "b" and i == classes - 1  # the last class's prediction changes
            row.update(
                predicted_class=classes if changed else i,
                predicted_label=f"class {classes if changed else i}",
                target_class=i,
                target_label=f"class {i}",
            )
            rows.append(row)
        runs.append(make_run(folder, rows=rows))
    out = tmp_path / "drift"
    result = cli("pipeline.compare", *runs, "--output_dir", out, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (out / "drift.html").read_text()
    section = re.search(r'<section id="classes">(.*?)</section>', page, re.S).group(1)
    shown = re.findall(r'<tr><td class="num">(\d+)</td>', section)
    assert len(shown) == TABLE_ROWS
    assert str(classes - 1) in shown and shown == sorted(shown, key=int)
    assert "40 more classes not shown" in section
    summary = json.loads((out / "drift_summary.json").read_text())
    assert len(summary["per_class"]) == classes


def _map_widths(html: str) -> list[int]:
    """The pixel widths of the page's heat maps and strategy maps."""
    import base64
    import io
    import re

    from PIL import Image

    found = re.findall(
        r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="(?:heatmap|mean map of[^"]*)"',
        html,
    )
    return [Image.open(io.BytesIO(base64.b64decode(data))).width for data in found]


def test_the_report_draws_no_grid_larger_than_any_run_writes(tmp_path):
    """Rows (and a strategy) with grids of 200 x 200 cells, more than --grid_cells allows
    (MAX_GRID_CELLS): such a map was drawn at its size (six rows of 1000 x 1000 cells made a
    24 MB page); it is now left out, the other classes' maps are drawn as before."""
    import numpy as np
    from run_folders import strategy_row, write_strategies

    from attribution.config import MAX_GRID_CELLS

    forged = MAX_GRID_CELLS + 136
    noise = np.random.default_rng(0).random(forged**2).tolist()
    folder = tmp_path / "run"
    rows = [summary_row(folder, i, c) for c in range(3) for i in range(2)]
    for row in rows[:4]:  # classes 0 and 1
        row.update(grid_cells=forged, grid=noise)
    make_run(folder, rows=rows)
    write_strategies(folder, [strategy_row(0, 0, mean_grid=noise), strategy_row(2, 0)])
    result = cli("pipeline.report", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    widths = _map_widths((folder / "report.html").read_text())
    assert len(widths) == 2, widths  # class 2's heat map and its strategy's map
    assert max(widths) < forged


def _magenta_pictures(html: str) -> int:
    """How many embedded pictures are the test's magenta secret (JPEG-shrunk or not)."""
    import base64
    import io
    import re

    from PIL import Image

    count = 0
    for data in re.findall(r"data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)", html):
        image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
        r, g, b = image.getpixel((image.width // 2, image.height // 2))
        count += r > 240 and g < 15 and b > 240
    return count


def test_the_report_shows_no_original_a_row_gives_no_hash_for(tmp_path):
    """A forged folder whose rows name a file the reader can read (matched by the recorded
    --input_pattern) and give no content_sha256 (the job always writes one) had that file
    embedded as the row's original; now the picture says why it is not shown."""
    from PIL import Image
    from run_folders import images_of

    folder = tmp_path / "run"
    secret = images_of(folder) / "private.png"
    secret.parent.mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 255)).save(secret)
    rows = [
        {**summary_row(folder, i, 0), "image_uri": str(secret), "content_sha256": None}
        for i in range(3)
    ]
    make_run(folder, rows=rows)
    result = cli("pipeline.report", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (folder / "report.html").read_text()
    assert _magenta_pictures(page) == 0
    assert "records no content_sha256 to check it against: not shown" in page


@pytest.mark.parametrize("second", ["out", "link", "out/strategies"])
def test_the_demo_refuses_one_folder_for_both_runs(tmp_path, second):
    """`python -m demo --strategies_output_dir` naming --output_dir (itself, through a link,
    or its strategies/ folder) made the second run replace or write into the first, whose
    report the demo had just pointed at. Refused before any data is generated."""
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    cache = tmp_path / "cache"
    result = cli(
        "demo",
        "--output_dir",
        tmp_path / "out",
        "--strategies_output_dir",
        tmp_path / second,
        "--cache_dir",
        cache,
        "--count",
        "2",
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "are one folder or one inside the other" in one_error_line(result)
    assert not cache.exists() and os.listdir(tmp_path / "out") == []


def test_a_huge_manifest_is_refused_without_being_read_whole(tmp_path):
    """A sparse manifest.json of 3 GB (no disk used) took 6.5 GB of memory and 20 s to be
    refused by the report; it is read no further than MAX_MANIFEST_BYTES. The promise is
    about memory: RLIMIT_AS caps the command at 2 GB, so reading it whole would fail with
    MemoryError instead of this one line."""
    import resource

    from transforms.files import MAX_MANIFEST_BYTES

    folder = _run(tmp_path / "run")
    with open(folder / "manifest.json", "r+b") as f:
        f.truncate(3 * 1024**3)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))

    compare = ["pipeline.compare", folder, folder, "--output_dir", tmp_path / "drift"]
    for argv in (["pipeline.report", folder], compare):
        result = cli(*argv, preexec_fn=cap)
        assert result.returncode == 2, result.stderr[-3000:]
        assert one_error_line(result) == (
            f"error: {folder / 'manifest.json'} is larger than {MAX_MANIFEST_BYTES} bytes, "
            f"which no manifest of `python -m pipeline` is: pass the output folder of a "
            f"finished run"
        )
