"""`python -m pipeline.report DIR_A DIR_B`: runs of different methods side by side."""

import os
import re
import subprocess
import sys

from job_argv import job_argv
from PIL import Image
from skimage import data

from pipeline import run as job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--steps", "4", "--tolerance", "0.05", "--max_steps", "16", "--progress_interval", "0"]


def test_report_puts_runs_of_different_methods_side_by_side(tiny_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).resize((40, 40)).save(photos / f"{name}.png")
    runs = []
    for attribution in ("ig", "blur_ig"):
        out = tmp_path / attribution
        assert (
            job.main(
                [
                    *job_argv(str(photos / "*.png"), str(out), tiny_model),
                    "--attribution",
                    attribution,
                    "--no_report",
                    *FAST,
                ]
            )
            == 0
        )
        runs.append(str(out))
    page = tmp_path / "side.html"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.report", *runs, "--output", str(page)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert all(run in html for run in runs) and "<code>blur_ig</code>" in html
    assert "<code>blur:20</code>" in html  # the baseline blur IG used, not --baseline
    rows = re.findall(r"<tr><td><span class=\"uri\">", html)
    assert len(rows) == 2  # one row per run in the runs table
    classes = len(re.findall(r"<h3><code>", html))
    assert classes >= 1
    assert html.count('alt="heatmap"') == 2 * classes  # each class: one tile per run
    assert not (tmp_path / "ig" / "report.html").exists()  # the single-run report untouched
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.report",
            runs[0],
            str(tmp_path / "no"),
            "--output",
            str(tmp_path / "x.html"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
