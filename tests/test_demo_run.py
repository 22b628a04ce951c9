"""A short demo run finds the planted shortcut: the cue class puts clearly more of its
attribution on the cue stamp than the other classes do, and the report says so."""

import json
import os

import pyarrow.parquet as pq
import pytest
from job_argv import job_argv

from demo import CUE_CLASS, generate
from demo.control import CONTROL, add_control_boxes
from pipeline import evidence, report, run

DEMO_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.yaml"
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("demo")
    model = demo_model  # the real demo model (about a minute, once per session)
    data = generate(root / "heldout", split="heldout", count=80, seed=0)
    out = root / "out"
    regions = add_control_boxes(data / "regions.csv", root / "regions-with-control.csv")
    code = run.main(
        [
            "--config",
            DEMO_CONFIG,
            *job_argv(f"{data}/images/*.png", str(out), str(model)),
            "--labels",
            f"{data}/labels.txt",
            "--regions",
            str(regions),
            "--tolerance",
            "0",
            "--progress_interval",
            "0",
        ]
    )
    assert code == 0
    return out


def test_the_report_finds_the_planted_shortcut(demo_run):
    found = report.shortcuts(report.read_run(str(demo_run)))
    assert [(s.label, s.region) for s in found] == [(CUE_CLASS, "cue")]
    (cue,) = found
    assert cue.share >= 0.10 and cue.share >= 3 * cue.others
    text = "\n".join(report.findings(report.read_run(str(demo_run))))
    assert f"class `{CUE_CLASS}` puts" in text and "region `cue`" in text
    # the shortcut finding quotes the ablation: removing the cue lowers the cue class
    assert f"shortcut the model uses for `{CUE_CLASS}`; masking `cue` lowers `{CUE_CLASS}`" in text
    page = (demo_run / "report.html").read_text()
    assert "shortcut" in page and 'id="faithfulness"' in page


def test_the_demo_run_is_complete_and_regions_are_on_every_row(demo_run):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["attributed"] == 80
    rows = pq.read_table(demo_run / "summaries", columns=["regions"]).column(0).to_pylist()
    assert all({r["name"] for r in regions} >= {"object"} for regions in rows)
    cue_area = {r["area_fraction"] for regions in rows for r in regions if r["name"] == "cue"}
    assert cue_area and all(0 < a < 0.02 for a in cue_area)


def test_attribution_order_beats_random_deletion_and_the_cue_ablation_bites(demo_run):
    table = evidence.read_summaries(str(demo_run))
    rows = table.to_pylist()
    assert all(len(r["deletion_curve"]) == r["faithfulness_points"] == 16 for r in rows)
    (overall,) = [s for s in evidence.shares(table) if s.label == "(all)"]
    assert overall.rows == 80 and overall.share >= 0.75
    # masking the cue lowers `cross` more than masking an object-sized box elsewhere, on the
    # same rows (target cross, cue stamped)
    cue, control = [], []
    for r in rows:
        by_name = {region["name"]: region for region in r["regions"]}
        if r["target_label"] == CUE_CLASS and "cue" in by_name and CONTROL in by_name:
            cue.append(by_name["cue"]["ablation_drop"])
            control.append(by_name[CONTROL]["ablation_drop"])
    assert len(cue) >= 10
    assert sum(cue) / len(cue) > sum(control) / len(control) + 0.1
    sentence = evidence.ablation_sentence(table, CUE_CLASS, "cue")
    assert sentence.startswith(f"masking `cue` lowers `{CUE_CLASS}` from")
    text = "\n".join(evidence.findings(table))
    assert "than a random order in" in text
    data = evidence.section(table)
    assert len(data["classes"]) == 4 and len(data["gaps"]) == 80
    for c in data["classes"]:
        assert len(c["deletion"]) == len(c["deletion_random"]) == 16
        assert c["deletion"][0] == pytest.approx(c["deletion_random"][0])  # both start at F(x)
    assert sum(g > 0 for g in data["gaps"]) == overall.beating
    assert all(r["gap"] <= 0 and r["overlay_uri"] for r in data["not_beating"])
