"""The HTML report on hand-made run folders: aggregates, findings, escaping, the command
line, and a render in headless Chromium (images decoded, no console errors)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_folders import (
    CELLS,
    CLASSES,
    CUE,
    HOSTILE,
    HOSTILE_REGION,
    ROWS_PER_CLASS,
    error,
    images_of,
    make_run,
    png,
    summary_row,
)

from pipeline import report

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run", errors=[error("/in/a.jpg"), error("/in/b.jpg")])


def test_aggregates_per_class(run_dir, monkeypatch):
    monkeypatch.setattr(report.read, "BATCH_ROWS", 4)  # several batches per file, merged
    run = report.read_run(str(run_dir))
    assert run.rows == 18 and run.unconverged == 3 and run.error_count == 2
    assert sorted(run.classes) == [0, 1, 2]
    for class_id, label in enumerate(CLASSES):
        s = run.classes[class_id]
        assert (s.label, s.rows, s.unconverged) == (label, ROWS_PER_CLASS, 1)
        expected = np.zeros((CELLS, CELLS))
        expected.flat[class_id * 5] = 1.0
        np.testing.assert_allclose(s.mean_grid(), expected)
        curve = s.mean_curve()
        assert curve[0] == pytest.approx(0.0) and curve[-1] == pytest.approx(1.0 + class_id)
        assert curve[50] == pytest.approx(0.5 + class_id / 2)  # alpha 0.5
        assert s.region_share("cue") == pytest.approx(CUE[label])
        assert s.hit_rate("cue") == (1.0 if label == "circle" else 0.0)
        # most / least concentrated: top5_share = 0.1 + 0.05 * index
        assert [e.top5_share for e in s.most] == pytest.approx([0.35, 0.30])
        assert [e.top5_share for e in s.least] == pytest.approx([0.10, 0.15])
    assert sorted(run.steps.tolist()) == [16] * 15 + [256] * 3


def test_findings_state_the_planted_shortcut(run_dir):
    found = report.findings(report.read_run(str(run_dir)))
    text = "\n".join(found)
    assert (
        "class `circle` puts 58% of its positive attribution on region `cue` (the region "
        "covers 1.0% of the image), 5x the other classes' 12% on average, and its peak falls there in 100% of "
        "images"
    ) in text
    assert not any(
        "on region `object`" in f and "other classes" in f for f in found
    )  # no clear outlier
    assert (
        "class `circle`: 58% of positive attribution falls on region `cue` (peak there in "
        "100% of images), 30% on `object` (peak there in 0% of images)"
    ) in found
    assert "class `square`: 60% of positive attribution falls on region `object`" in text
    assert "3 of 18 rows (16.7%) did not converge to the completeness tolerance 0.01" in text
    assert "raise --max_steps (this run: 256)" in text
    assert "2 of 20 inputs (10.0%) failed; most common: UnsupportedFormat at decode (2)." in found
    assert [s.class_id for s in report.shortcuts(report.read_run(str(run_dir)))] == [0]


def test_no_shortcut_when_classes_agree(tmp_path, monkeypatch):
    monkeypatch.setitem(CUE, "circle", 0.2)  # 20% vs 12%: not a clear outlier
    run = report.read_run(str(make_run(tmp_path / "run")))
    assert report.shortcuts(run) == []
    assert not any("other classes" in f for f in report.findings(run))


def test_report_with_no_errors_and_no_regions(tmp_path):
    run_dir = make_run(tmp_path / "run", regions=False)
    run = report.read_run(str(run_dir))
    assert "No input failed." in report.findings(run)
    assert not any("region" in f for f in report.findings(run))
    page = Path(report.write_report(str(run_dir))).read_text()
    assert "<h2>Errors</h2><p>No input failed.</p>" in page
    assert "No regions were given for this run" in page


def test_report_with_zero_attributed_rows(tmp_path):
    run_dir = make_run(tmp_path / "run", rows=[], errors=[error(f"/in/{i}.jpg") for i in range(3)])
    run = report.read_run(str(run_dir))
    assert run.rows == 0 and run.classes == {}
    assert "No row was attributed: there is nothing to say about attributions." in report.findings(
        run
    )
    page = Path(report.write_report(str(run_dir))).read_text()
    assert "3 inputs could not be attributed" in page and "<img" not in page


def test_report_is_self_contained_and_escapes_data(tmp_path):
    folder = tmp_path / "run"
    hostile = png(images_of(folder) / HOSTILE, (20, 30))
    rows = [summary_row(folder, i, c) for c in range(3) for i in range(ROWS_PER_CLASS)]
    rows[0] = {**rows[0], "image_uri": hostile, "target_label": "<b>circle</b>"}
    for row in rows:  # a hostile region name: in the regions table and the findings
        row["regions"] = [
            {**r, "name": HOSTILE_REGION} if r["name"] == "object" else r for r in row["regions"]
        ]
    make_run(folder, rows=rows, errors=[error(HOSTILE, "<img src=x onerror=alert(1)>")])
    page = Path(report.write_report(str(folder))).read_text()
    assert "<script>alert(1)" not in page and "<b>circle" not in page
    assert "<img src=x" not in page and "<i>region" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<th>&lt;i&gt;region&lt;/i&gt; &amp; &#34;co&#39;&lt;/th&gt;</th>" in page
    assert "<code>&lt;i&gt;region&lt;/i&gt; &amp; &#34;co&#39;&lt;/th&gt;</code>" in page
    assert re.findall(r'\bsrc="(?!data:)', page) == []
    assert re.findall(r'\bhref="(?!#)', page) == []
    assert "http://" not in page and "https://" not in page
    assert "Content-Security-Policy" in page


def test_unreadable_pictures_are_said_in_place(tmp_path):
    folder = tmp_path / "run"
    rows = [summary_row(folder, i, 0) for i in range(3)]
    moved = folder / "masks" / "circle1.png"
    rows[0] = {**rows[0], "image_uri": str(images_of(folder) / "gone.png")}
    rows[1] = {**rows[1], "mask_uri": f"/old/place/masks/{moved.name}"}  # run folder moved
    rows[2] = {**rows[2], "overlay_uri": str(folder / "overlays" / "gone.png")}
    make_run(folder, rows=rows)
    page = Path(report.write_report(str(folder))).read_text()
    assert f"original missing: {images_of(folder) / 'gone.png'} no longer exists" in page
    assert f"overlay missing: {folder / 'overlays' / 'gone.png'} does not exist" in page
    assert page.count("mask missing") == 0  # found under DIR/masks instead


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(report.ReportError, match="not the output folder of a finished"):
        report.read_run(str(tmp_path))


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.report", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_line_writes_the_report(run_dir):
    result = run_cli(str(run_dir))
    assert result.returncode == 0, result.stderr
    assert (run_dir / "report.html").is_file()
    assert f"report: {run_dir}/report.html" in result.stdout


@pytest.mark.parametrize("which", ["missing", "empty"])
def test_command_line_refuses_a_folder_that_is_no_run(tmp_path, which):
    folder = tmp_path / "nothing"
    if which == "empty":
        folder.mkdir()
    result = run_cli(str(folder))
    assert result.returncode == 2
    assert "manifest.json not found" in result.stderr and "Traceback" not in result.stderr


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium(profile: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed: run scripts/install_chromium.sh",
)
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    page = Path(report.write_report(str(run_dir)))
    url = page.as_uri()
    images = page.read_text().count("<img ")
    result = chromium(tmp_path / "profile", "--dump-dom", url)
    assert result.returncode == 0, result.stderr
    body = re.search(r"<body([^>]*)>", result.stdout).group(1)
    assert f'data-images-loaded="{images}"' in body and 'data-images-broken="0"' in body, body
    console = [
        line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line
    ]
    assert console == []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = chromium(
        tmp_path / "profile",
        "--window-size=1280,2000",
        f"--screenshot={ARTIFACTS / 'report.png'}",
        url,
    )
    assert shot.returncode == 0 and (ARTIFACTS / "report.png").stat().st_size > 0


def test_count_axes_use_short_labels_that_fit_the_fixed_margin():
    """Charts have fixed margins (constrained layout was half their drawing time), so row
    counts are written short at any scale: 950, 12k, 3.4M."""
    from matplotlib.figure import Figure

    from pipeline.report import charts

    axes = Figure().add_subplot()
    charts._counts_axis(axes)
    label = axes.yaxis.get_major_formatter()
    assert [label(v, 0) for v in (0, 950, 12_000, 150_000, 3_400_000)] == [
        "0",
        "950",
        "12k",
        "150k",
        "3.4M",
    ]
