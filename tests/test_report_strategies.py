"""The report's Strategies section on hand-made run folders whose DIR/strategies Parquet follows
the contract: the suspicion score, the ranking of classes, the finding's words and numbers,
defensive reading, escaping, the section without the stage, and a 1,000-class folder in
headless Chromium."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import markupsafe
import numpy as np
import pyarrow as pa
import pytest
from run_folders import (
    CELLS,
    HOSTILE,
    STRATEGY_SCHEMA,
    make_run,
    strategy_row,
    write_strategies,
)
from test_report import chromium

from pipeline import report
from pipeline.report import strategies as st

REPO = Path(__file__).resolve().parent.parent

# The planted shortcut: half of `triangle` (class 2) puts 63% of its attribution on the top
# left cell (1/16 of the image); removing it drops the score 0.97 -> 0.30, the control box
# only 0.97 -> 0.92. Its other half and `circle` look at the middle, benign.
TOP_LEFT = np.zeros(CELLS * CELLS)
TOP_LEFT[0], TOP_LEFT[1:] = 0.63, 0.37 / (CELLS * CELLS - 1)
PLANTED = dict(
    share=0.5,
    rows=3,
    mean_grid=TOP_LEFT.tolist(),
    hotspot_box=[0.0, 0.0, 0.25, 0.25],
    hotspot_area_fraction=1 / 16,
    hotspot_mass_fraction=0.63,
    target_mean_score=0.97,
    ablation_score=0.30,
    ablation_drop=0.67,
    control_drop=0.05,
    ablation_n=3,
    prototypes=["triangle4", "triangle5"],
)


def planted_rows():
    return [
        strategy_row(0, 0),
        strategy_row(2, 0, share=0.5, rows=3, ablation_n=3),
        strategy_row(2, 1, **PLANTED),
    ]


@pytest.fixture
def run_dir(tmp_path):
    folder = make_run(tmp_path / "run")
    write_strategies(folder, planted_rows())
    return folder


def strategy(**values) -> st.Strategy:
    base = dict(
        target_class=0,
        label="a",
        strategy=0,
        share=1.0,
        area=0.01,
        mass=0.64,  # 64 times the even share: log2 = 6
        ablation_drop=0.5,
        control_drop=0.1,
    )
    base.update(values)
    return st.Strategy(**base)


def test_suspicion_is_excess_drop_times_log_concentration_times_root_share():
    assert strategy().suspicion == pytest.approx(0.4 * 6)
    assert strategy(share=0.25).suspicion == pytest.approx(0.5 * 0.4 * 6)  # sqrt(0.25)
    assert strategy(control_drop=0.5).suspicion == 0.0  # no more than elsewhere
    assert strategy(control_drop=0.7).suspicion == 0.0  # the control costs more: not negative
    assert strategy(mass=0.01).suspicion == 0.0  # spread evenly: log2(1) = 0
    assert strategy(mass=0.005).suspicion == 0.0  # less than even
    assert strategy(ablation_drop=None).suspicion is None
    assert strategy(area=0.0).suspicion is None
    assert strategy(mass=None).suspicion is None


def test_flag_rule_needs_excess_ratio_and_concentration():
    assert strategy().suspicious
    assert not strategy(ablation_drop=0.19).suspicious  # excess 0.09 < MIN_EXCESS
    assert not strategy(ablation_drop=0.5, control_drop=0.3).suspicious  # ratio 1.7 < 2
    assert not strategy(mass=0.029).suspicious  # 2.9x < MIN_CONCENTRATION
    assert not strategy(control_drop=None).suspicious


def test_place_names_the_box_position():
    assert st.place((0.0, 0.0, 0.1, 0.1)) == "top left"
    assert st.place((0.4, 0.4, 0.6, 0.6)) == "centre"
    assert st.place((0.8, 0.4, 1.0, 0.6)) == "centre right"
    assert st.place((0.4, 0.9, 0.6, 1.0)) == "bottom centre"


def test_finding_states_the_planted_strategy_with_its_numbers(run_dir):
    found = report.findings(report.read_run(str(run_dir)))
    strategy_lines = [f for f in found if "strategy" in f]
    assert len(strategy_lines) == 1, found  # the benign strategies say nothing
    assert strategy_lines[0].startswith(
        "class `triangle`: 50% of its predictions follow strategy 1, which puts 63% of its "
        "attribution on 6.2% of the image (top left); removing that box lowers `triangle` "
        "from 0.97 to 0.30, against 0.97 -> 0.92 for a box of the same size elsewhere "
        "(3 rows, 3 ablated): look at its prototypes (`triangle4`, `triangle5`)"
    )


def test_classes_are_ranked_by_suspicion_not_rows(run_dir):
    run = report.read_run(str(run_dir))
    assert st.ranked_classes(run) == [2, 0, 1]  # triangle (flagged), circle (benign), square
    run.report_classes = 1
    assert run.shown_classes() == [2]
    plain = report.read_run(str(make_run(run_dir.parent / "plain")))
    assert plain.shown_classes() == [0, 1, 2]  # no strategies: most rows, then class id


def test_a_minority_strategy_ranks_its_class_above_a_majority_one(tmp_path):
    """A tenth of class 0 on a watermark (flagged) outranks all of class 1 on a quarter of the
    image holding 70% of its attribution (2.8x: not flagged), whose removal costs more."""
    folder = make_run(tmp_path / "run")
    write_strategies(
        folder,
        [
            strategy_row(0, 0, share=0.9),
            strategy_row(0, 1, **{**PLANTED, "share": 0.1}),
            strategy_row(
                1,
                0,
                hotspot_area_fraction=0.25,
                hotspot_mass_fraction=0.7,
                ablation_drop=0.6,
                control_drop=0.1,
            ),
        ],
    )
    run = report.read_run(str(folder))
    minority, majority = st.of(run).classes[0][1], st.of(run).classes[1][0]
    assert minority.suspicious and not majority.suspicious
    assert st.ranked_classes(run)[:2] == [0, 1]


def test_section_draws_every_strategy_with_map_prototypes_and_numbers(run_dir):
    page = Path(report.write_report(str(run_dir))).read_text()
    section = re.search(r'<section id="strategies">(.*?)</section>', page, re.S).group(1)
    assert "<strong>1</strong> flagged strategies in 2 clustered classes" in section
    # triangle first (flagged), its minority strategy 1 before its benign strategy 0
    assert section.index("class <code>triangle</code>") < section.index("class <code>circle</code>")
    triangle = section[section.index("class <code>triangle</code>") :]
    assert triangle.index("strategy 1 <span") < triangle.index("strategy 0</h4>")
    assert section.count('alt="mean map of strategy') == 3
    # prototypes: the run's overlays, embedded as thumbnails (3 + 2 + 3 images)
    assert section.count('alt="triangle4"') == 1 and section.count("data:image/jpeg") == 8
    assert "0.97 -&gt; 0.30" in section and "0.97 -&gt; 0.92" in section
    assert "63% of the attribution on 6.2% of the image (top left)" in section
    # findings come before the section, and the section before the errors
    assert page.index('id="findings"') < page.index('id="strategies"') < page.index('id="errors"')


def test_missing_optional_columns_show_as_missing(tmp_path):
    folder = make_run(tmp_path / "run")
    contract = pa.schema(
        [
            f
            for f in STRATEGY_SCHEMA
            if f.name not in ("control_box", "ablation_n", "target_mean_score")
        ]
    )
    write_strategies(folder, planted_rows(), contract)
    run = report.read_run(str(folder))
    s = st.of(run).classes[2][1]
    assert s.ablation_n is None and s.target_mean_score is None
    assert s.score_before == pytest.approx(0.97)  # ablation_score + ablation_drop
    finding = next(f for f in report.findings(run) if "strategy 1" in f)
    assert "(3 rows, ablated count not recorded)" in finding
    section = st.strategies_section(run)
    numbers = dict(section["classes"][0]["strategies"][0]["numbers"])
    assert numbers["members ablated"] is None


def test_damaged_values_are_missing_not_a_crash(tmp_path):
    folder = make_run(tmp_path / "run")
    schema = pa.schema(
        [
            ("target_class", pa.int32()),
            ("target_label", pa.string()),
            ("strategy", pa.int32()),
            ("share", pa.string()),  # wrong type
            ("mean_grid", pa.list_(pa.float64())),
            ("hotspot_box", pa.list_(pa.float64())),
        ]
    )
    write_strategies(
        folder,
        [
            {"target_class": 0, "strategy": 0, "share": "lots", "mean_grid": [1.0, 2.0, 3.0]},
            {"target_class": 1, "strategy": 0, "hotspot_box": [0.5, 0.5, 0.2, 0.9]},
            {"target_class": None, "strategy": 3},  # no class: skipped
        ],
        schema,
    )
    run = report.read_run(str(folder))
    found = st.of(run)
    assert sorted(found.classes) == [0, 1]
    a, b = found.classes[0][0], found.classes[1][0]
    assert a.share is None and a.mean_grid is None and a.label == "0"  # 3 cells: not square
    assert b.hotspot_box is None and b.suspicion is None
    Path(report.write_report(str(folder))).read_text()  # renders


def test_hostile_labels_and_prototype_ids_are_escaped_and_not_followed(tmp_path):
    folder = make_run(tmp_path / "run")
    secret = tmp_path / "secret.png"
    secret.write_bytes((folder / "overlays" / "circle0.png").read_bytes())
    write_strategies(
        folder,
        [
            strategy_row(
                0,
                0,
                **{**PLANTED, "target_label": HOSTILE, "prototypes": ["../../secret", HOSTILE]},
            )
        ],
    )
    page = Path(report.write_report(str(folder))).read_text()
    assert "<script>alert(1)</script>" not in page
    assert str(markupsafe.escape(HOSTILE)) in page
    section = re.search(r'<section id="strategies">(.*?)</section>', page, re.S).group(1)
    assert "data:image/jpeg" not in section  # neither id was read
    assert section.count("the image id is not a plain file name") == 2


def test_without_the_stage_the_section_says_why(tmp_path):
    plain = make_run(tmp_path / "plain")
    page = Path(report.write_report(str(plain))).read_text()
    assert "The strategy stage did not run for this run" in page
    assert not [f for f in report.findings(report.read_run(str(plain))) if "strategy" in f]

    off = make_run(tmp_path / "off")
    manifest = json.loads((off / "manifest.json").read_text())
    manifest["config"]["strategies"] = "none"
    (off / "manifest.json").write_text(json.dumps(manifest))
    assert (
        "turned off for this run (<code>--strategies none</code>)"
        in Path(report.write_report(str(off))).read_text()
    )

    empty = make_run(tmp_path / "empty")  # the stage ran, no class had enough rows
    manifest = json.loads((empty / "manifest.json").read_text())
    manifest["files"] = {"summaries": [], "errors": [], "strategies": []}
    manifest["config"]["strategy_min_rows"] = 20
    (empty / "manifest.json").write_text(json.dumps(manifest))
    assert "no class had the 20 rows" in Path(report.write_report(str(empty))).read_text()


def test_report_classes_option(run_dir):
    cli = [sys.executable, "-m", "pipeline.report", str(run_dir)]
    result = subprocess.run([*cli, "--report_classes", "0"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --report_classes must be >= 1, got 0"
    result = subprocess.run([*cli, "--report_classes", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    page = (run_dir / "report.html").read_text()
    assert "Showing the 1 classes ranked first" in page
    section = re.search(r'<section id="strategies">(.*?)</section>', page, re.S).group(1)
    assert section.count("<h3>class <code>") == 1  # triangle drawn, circle in the table
    assert "Other clustered classes" in section and "<code>circle</code>" in section
    # the job's --report_classes, recorded in the manifest, is the default
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["config"]["report_classes"] = 2
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert (
        "Showing the 2 classes ranked first" in Path(report.write_report(str(run_dir))).read_text()
    )


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed: run scripts/install_chromium.sh",
)
def test_a_thousand_class_report_opens_in_chromium(tmp_path):
    from benchmarks import report_scale

    folder = report_scale.make_folder(tmp_path / "run", classes=1000, rows_per_class=4)
    page = Path(report.write_report(str(folder)))
    assert page.stat().st_size < 5_000_000
    result = chromium(tmp_path / "profile", "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr
    body = re.search(r"<body([^>]*)>", result.stdout).group(1)
    images = page.read_text().count("<img ")
    assert f'data-images-loaded="{images}"' in body and 'data-images-broken="0"' in body, body
    dom = result.stdout
    section = re.search(r'<section id="strategies">(.*?)</section>', dom, re.S).group(1)
    planted = report_scale.planted_classes(1000)
    assert (
        f"<strong>{len(planted)}</strong> flagged strategies in 1000 clustered classes" in section
    )
    drawn = re.findall(r"<h3>class <code>class_(\d+)</code>", section)
    assert len(drawn) == 24 and {int(c) for c in drawn} <= set(planted)  # the flagged ones
    rest = section[section.index("Other clustered classes") :]
    assert rest.count("<tr>") == 1 + 1000 - 24  # the rest: a header and one row each


def test_the_job_refuses_a_bad_report_classes_before_any_work():
    from pipeline import options
    from pipeline.launch import UsageError

    argv = ["--input_pattern", "x", "--output_dir", "o", "--model", "m"]
    assert options.parse(argv)[0].report_classes == 24
    assert options.parse([*argv, "--report_classes", "5"])[0].report_classes == 5
    with pytest.raises(UsageError, match=r"--report_classes must be >= 1, got 0"):
        options.parse([*argv, "--report_classes", "0"])


def test_the_control_score_column_is_used_when_the_run_has_it():
    s = strategy(target_mean_score=0.9, ablation_score=0.4, control_drop=0.1)
    assert s.control_after == pytest.approx(0.8)  # before - control_drop
    assert strategy(target_mean_score=0.9, control_score=0.75).control_after == 0.75


def test_a_flagged_strategy_is_the_worst_even_below_an_unflagged_ones_suspicion():
    unflagged = strategy(strategy=0, mass=0.029, ablation_drop=0.9, control_drop=0.0)
    flagged = strategy(strategy=1, share=0.1, mass=0.04, ablation_drop=0.3, control_drop=0.0)
    assert unflagged.suspicion > flagged.suspicion and flagged.suspicious
    found = st.Strategies(ran=True, classes={0: [unflagged, flagged]})
    assert found.worst(0) is flagged
