"""The demo's check of the strategy found without boxes: precision and recall of a strategy's
members against the stamped images of a generated held-out folder (its truth.csv); and, with
the strategy stage in the tree, the demo model audited with no boxes: the report's finding
names the stamp's strategy, its members are the stamped images, the page opens in Chromium."""

import csv
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from job_argv import job_argv
from test_report import chromium

from demo import CUE_CLASS, generate
from demo.strategies import stamp_recovery

DEMO_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.yaml"
)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    folder = generate(tmp_path_factory.mktemp("heldout"), split="heldout", count=40, seed=3)
    with open(folder / "truth.csv", newline="") as f:
        truth = {r["image"]: r["has_cue"] == "true" for r in csv.DictReader(f)}
    return folder, truth


def test_precision_and_recall_of_the_members_against_the_stamp(heldout, tmp_path):
    folder, truth = heldout
    names = sorted(truth)
    predicted_cue = names[:24]  # the rows the run labels `cross`; the rest another class
    stamped = [n for n in predicted_cue if truth[n]]
    clean = [n for n in predicted_cue if not truth[n]]
    assert len(stamped) >= 4 and len(clean) >= 4  # the seed gives both kinds
    # strategy 1 holds all stamped rows but one, and two clean rows
    members = set(stamped[1:]) | set(clean[:2])
    rows = []
    for name in names:
        uri = str(folder / "images" / name)
        cue = name in predicted_cue
        rows.append(
            {
                "image_uri": uri,
                "target_label": CUE_CLASS if cue else "circle",
                "target_rank": 0,
                "strategy": (1 if name in members else 0) if cue else None,
            }
        )
        # a second target of the same image is not a prediction: never counted
        rows.append({"image_uri": uri, "target_label": CUE_CLASS, "target_rank": 1, "strategy": 1})
    schema = pa.schema(
        [
            ("image_uri", pa.string()),
            ("target_label", pa.string()),
            ("target_rank", pa.int32()),
            ("strategy", pa.int32()),
        ]
    )
    (tmp_path / "run" / "summaries").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=schema), tmp_path / "run" / "summaries" / "p.parquet"
    )
    r = stamp_recovery(str(tmp_path / "run"), folder / "truth.csv", CUE_CLASS, 1)
    hits = len(stamped) - 1
    assert (r.members, r.stamped_members) == (hits + 2, hits)
    assert (r.stamped_in_class, r.class_rows) == (len(stamped), 24)
    assert r.precision == pytest.approx(hits / (hits + 2))
    assert r.recall == pytest.approx(hits / len(stamped))
    assert r.stamped_images == sum(truth.values())
    assert f"precision {hits / (hits + 2):.0%} ({hits} of its {hits + 2} members" in r.sentence()
    empty = stamp_recovery(str(tmp_path / "run"), folder / "truth.csv", CUE_CLASS, 7)
    assert empty.members == 0 and empty.precision is None and "precision n/a" in empty.sentence()


@pytest.fixture(scope="module")
def no_boxes(tmp_path_factory, demo_model):
    """The demo model over 120 held-out images with no --regions: the strategy stage alone."""
    pytest.importorskip("transforms.strategies", reason="the strategy stage is not in this tree")
    from pipeline import run

    root = tmp_path_factory.mktemp("demo-strategies")
    data = generate(root / "heldout", split="heldout", count=120, seed=0)
    out = root / "out"
    argv = [
        "--config",
        DEMO_CONFIG,
        *job_argv(f"{data}/images/*.png", out, demo_model),
        "--labels",
        f"{data}/labels.txt",
        "--faithfulness",
        "none",
        "--write_raw=false",
        "--progress_interval",
        "0",
    ]
    assert run.main(argv) == 0
    return data, out


def test_the_demo_model_audited_without_boxes_shows_the_stamp(no_boxes, tmp_path):
    from pipeline import report
    from pipeline.report import strategies

    data, out = no_boxes
    found = report.read_run(str(out))
    cue = next(c for c, s in found.classes.items() if s.label == CUE_CLASS)
    worst = strategies.of(found).worst(cue)
    assert worst is not None and worst.suspicious, worst
    assert worst.hotspot_box[0] < 0.25 and worst.hotspot_box[1] < 0.25  # the stamp's corner
    finding = strategies.finding(worst, "predictions")
    assert finding in report.findings(found)
    recovery = stamp_recovery(str(out), data / "truth.csv", CUE_CLASS, worst.strategy)
    # the stamped images predicted `cross` are the strategy's members (the model calls about
    # 70% of stamped non-cross images `cross`, so most stamped rows are in the class)
    assert recovery.recall >= 0.8 and recovery.precision >= 0.6, recovery.sentence()
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: run scripts/install_chromium.sh")
    page = Path(out / "report.html")
    result = chromium(tmp_path / "profile", "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr
    dom = result.stdout
    assert '<section id="strategies">' in dom
    findings = re.search(r'<section id="findings">(.*?)</section>', dom, re.S).group(1)
    assert f"follow strategy {worst.strategy}" in findings and "top left" in findings
