"""Strategy drift in `python -m pipeline.compare`: strategies matched by layout across two runs,
the share of a class's rows that changed strategy, a new suspicious strategy, and the
--max_strategy_shift gate's exit codes, on hand-made run folders with DIR/strategies."""

import json
import subprocess
import sys

import numpy as np
import pytest
from run_folders import CELLS, make_run, strategy_row, write_strategies

from pipeline import compare
from pipeline.compare import strategies as drift
from pipeline.strategies import Strategy

MIDDLE = np.zeros(CELLS * CELLS)
MIDDLE[[5, 6, 9, 10]] = 0.25
LEFT = np.zeros(CELLS * CELLS)
LEFT[[4, 8]] = 0.5
CORNER = np.zeros(CELLS * CELLS)
CORNER[0], CORNER[1:] = 0.7, 0.3 / (CELLS * CELLS - 1)
WATERMARK = dict(  # a suspicious strategy: 70% on 1/16 of the image, removal costs 0.6
    mean_grid=CORNER.tolist(),
    hotspot_box=[0.0, 0.0, 0.25, 0.25],
    hotspot_area_fraction=1 / 16,
    hotspot_mass_fraction=0.7,
    ablation_score=0.3,
    ablation_drop=0.6,
    control_drop=0.05,
)


def strategy(number, share, grid, **values) -> Strategy:
    return Strategy(0, "a", number, share=share, mean_grid=tuple(grid), **values)


def test_shift_is_the_share_of_rows_that_changed_strategy_matched_by_layout():
    a = [strategy(0, 0.8, MIDDLE), strategy(1, 0.2, LEFT)]
    b = [strategy(0, 0.4, LEFT), strategy(1, 0.6, MIDDLE)]  # renumbered, shares moved
    result = drift.class_drift(a, b)
    assert [(p["a"], p["b"]) for p in result["pairs"]] == [(0, 1), (1, 0)]
    assert result["shift"] == pytest.approx((0.2 + 0.2) / 2)
    assert result["new"] == result["gone"] == result["new_suspicious"] == []
    assert drift.class_drift(a, a)["shift"] == 0.0


def test_a_new_suspicious_strategy_is_unmatched_and_flagged():
    a = [strategy(0, 1.0, MIDDLE)]
    b = [
        strategy(0, 0.7, MIDDLE),
        strategy(1, 0.3, CORNER, area=1 / 16, mass=0.7, ablation_drop=0.6, control_drop=0.05),
    ]
    result = drift.class_drift(a, b)
    assert [(p["a"], p["b"]) for p in result["pairs"]] == [(0, 0)]
    assert result["new"] == [1] and result["new_suspicious"] == [1]
    assert result["shift"] == pytest.approx((0.3 + 0.3) / 2)
    # the same suspicious strategy already in A is no news
    assert drift.class_drift(b, b)["new_suspicious"] == []


def test_cosine_and_unmatchable_layouts():
    assert drift.cosine(MIDDLE, MIDDLE) == pytest.approx(1.0)
    assert drift.cosine(MIDDLE, LEFT) == 0.0
    assert drift.cosine(MIDDLE, MIDDLE[:4]) is None  # another grid size
    a, b = [strategy(0, 1.0, MIDDLE)], [strategy(0, 1.0, LEFT)]
    result = drift.class_drift(a, b)
    assert result["pairs"] == [] and result["shift"] == 1.0  # nothing in common


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three runs over the same images: A; B = A's strategies; C: `triangle` gained a
    watermark strategy for a third of its rows and `circle`'s strategies swapped shares."""
    root = tmp_path_factory.mktemp("strategy_drift")
    runs = {name: make_run(root / name) for name in "abc"}
    base = [
        strategy_row(0, 0, share=0.75, mean_grid=MIDDLE.tolist()),
        strategy_row(0, 1, share=0.25, mean_grid=LEFT.tolist()),
        strategy_row(2, 0, share=1.0, mean_grid=MIDDLE.tolist()),
    ]
    write_strategies(runs["a"], base)
    write_strategies(runs["b"], base)
    write_strategies(
        runs["c"],
        [
            strategy_row(0, 0, share=0.25, mean_grid=MIDDLE.tolist()),
            strategy_row(0, 1, share=0.75, mean_grid=LEFT.tolist()),
            strategy_row(2, 0, share=2 / 3, mean_grid=MIDDLE.tolist()),
            strategy_row(2, 1, share=1 / 3, **WATERMARK),
        ],
    )
    return runs, root


def compare_runs(a, b, out, *flags):
    return compare.main([str(a), str(b), "--output_dir", str(out), *flags])


def test_unchanged_strategies_pass_the_gate(folders, capsys):
    runs, root = folders
    assert compare_runs(runs["a"], runs["b"], root / "ab", "--max_strategy_shift", "0") == 0
    summary = json.loads((root / "ab" / "drift_summary.json").read_text())
    m = summary["metrics"]
    assert m["strategy_classes_compared"] == 2 and m["max_strategy_shift"] == 0.0
    assert m["new_suspicious_strategies"] == 0 and m["strategy_classes_flagged"] == 0
    assert "strategies: 2 classes compared" in capsys.readouterr().out


def test_moved_shares_and_a_new_suspicious_strategy_fail_the_gate(folders, capsys):
    runs, root = folders
    assert compare_runs(runs["a"], runs["c"], root / "ac", "--max_strategy_shift", "0.4") == 1
    summary = json.loads((root / "ac" / "drift_summary.json").read_text())
    classes = {c["label"]: c for c in summary["strategies"]["classes"]}
    assert classes["circle"]["shift"] == pytest.approx(0.5) and classes["circle"]["flagged"]
    assert classes["triangle"]["new_suspicious"] == [1] and classes["triangle"]["flagged"]
    assert classes["triangle"]["shift"] == pytest.approx(1 / 3)  # under 0.4: flagged as new
    violated = {t["metric"] for t in summary["thresholds"] if t["violated"]}
    assert violated == {"max_strategy_shift", "new_suspicious_strategies"}
    err = capsys.readouterr().err
    assert "--fail_on max_strategy_shift>0.4 violated: max_strategy_shift is 0.5" in err
    page = (root / "ac" / "drift.html").read_text()
    assert '<section id="strategies">' in page and page.count("FLAGGED") == 2

    # a looser shift gate still fails on the new suspicious strategy; no gate: exit 0
    assert compare_runs(runs["a"], runs["c"], root / "ac2", "--max_strategy_shift", "0.6") == 1
    assert compare_runs(runs["a"], runs["c"], root / "ac3") == 0
    # --fail_on can name the metrics too
    assert (
        compare_runs(runs["a"], runs["c"], root / "ac4", "--fail_on", "max_strategy_shift>0.6") == 0
    )


def test_runs_without_strategies(folders, tmp_path):
    runs, _ = folders
    plain = make_run(tmp_path / "plain")
    assert compare_runs(runs["a"], plain, tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "drift_summary.json").read_text())
    assert summary["metrics"]["max_strategy_shift"] is None
    assert "run B has none" in (tmp_path / "out" / "drift.html").read_text()
    # gated without anything to compare: violated, as every threshold on an undefined metric
    assert compare_runs(runs["a"], plain, tmp_path / "out2", "--max_strategy_shift", "0.5") == 1


def test_a_bad_max_strategy_shift_exits_2_before_any_work(folders, tmp_path):
    runs, _ = folders
    out = tmp_path / "never"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.compare",
            str(runs["a"]),
            str(runs["b"]),
            "--output_dir",
            str(out),
            "--max_strategy_shift",
            "1.5",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --max_strategy_shift must be in [0, 1], got 1.5"
    assert not out.exists()
