"""A short demo run finds the planted shortcut: the cue class puts clearly more of its
attribution on the cue stamp than the other classes do, and the report says so."""
import json
import os

import pyarrow.parquet as pq
import pytest

from demo import CUE_CLASS, generate, train_or_load
from pipeline import report, run

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "demo.yaml")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    model = train_or_load(root / "cache", seed=0)  # the real demo model (about a minute)
    data = generate(root / "heldout", split="heldout", count=80, seed=0)
    out = root / "out"
    code = run.main(["--config", DEMO_CONFIG, "--input_pattern",
                     f"{data}/images/*.png", "--output_dir", str(out), "--model", str(model),
                     "--labels", f"{data}/labels.txt", "--regions", f"{data}/regions.csv",
                     "--tolerance", "0", "--progress_interval", "0"])
    assert code == 0
    return out


def test_the_report_finds_the_planted_shortcut(demo_run):
    found = report.shortcuts(report.read_run(str(demo_run)))
    assert [(s.label, s.region) for s in found] == [(CUE_CLASS, "cue")]
    (cue,) = found
    assert cue.share >= 0.10 and cue.share >= 3 * cue.others
    text = "\n".join(report.findings(report.read_run(str(demo_run))))
    assert f"class `{CUE_CLASS}` puts" in text and "region `cue`" in text
    assert "shortcut" in (demo_run / "report.html").read_text()


def test_the_demo_run_is_complete_and_regions_are_on_every_row(demo_run):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["attributed"] == 80
    rows = pq.read_table(demo_run / "summaries", columns=["regions"]).column(0).to_pylist()
    assert all({r["name"] for r in regions} >= {"object"} for regions in rows)
    cue_area = {r["area_fraction"] for regions in rows for r in regions if r["name"] == "cue"}
    assert cue_area and all(0 < a < 0.02 for a in cue_area)
