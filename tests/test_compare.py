"""`python -m pipeline.compare`: drift between two runs, as a Beam pipeline, gated by --fail_on."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from job_argv import job_argv
from PIL import Image

from pipeline import compare
from pipeline import run as job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--steps", "4", "--tolerance", "0.05", "--max_steps", "16", "--progress_interval", "0"]
SIZE = 16


def _model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )


def _batch(folder, names):
    from attribution.images import decode_image, resize_with_pad

    return np.stack(
        [resize_with_pad(decode_image((folder / n).read_bytes()), (SIZE, SIZE)) for n in names]
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A with a tiny model (raw attributions kept); run B with the same architecture, its
    weights perturbed, over the same images plus one more, reusing A (the model changed, so
    nothing may be reused). The perturbation moves the filters (every attribution map
    changes) and raises one class's bias just enough to flip about half of the predictions."""
    root = tmp_path_factory.mktemp("compare")
    folder = root / "images"
    folder.mkdir()
    names = []
    for i in range(8):
        pixels = np.random.default_rng(100 + i).random((20 + i, 24, 3)) * 255
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    batch = _batch(folder, names)
    model_a, model_b = _model(0), _model(0)
    kernel, bias, dense, dense_bias = model_a.get_weights()
    kernel = kernel + np.random.default_rng(1).normal(0, 0.5 * kernel.std(), kernel.shape)
    model_b.set_weights([kernel, bias, dense, dense_bias])
    logits = model_b.predict(batch, verbose=0)
    usual = np.bincount(logits.argmax(-1), minlength=3).argmax()
    other = max((c for c in range(3) if c != usual), key=lambda c: logits[:, c].mean())
    margins = np.sort(logits.max(-1) - logits[:, other])
    shifted = dense_bias.copy()
    shifted[other] += (margins[3] + margins[4]) / 2
    model_b.set_weights([kernel, bias, dense, shifted])
    paths = {"a": str(root / "a.keras"), "b": str(root / "b.keras")}
    model_a.save(paths["a"])
    model_b.save(paths["b"])
    predicted = [
        dict(zip(names, m.predict(batch, verbose=0).argmax(-1).tolist()))
        for m in (model_a, model_b)
    ]
    expected = {name: (predicted[0][name], predicted[1][name]) for name in names}
    out = {"a": root / "run_a", "b": root / "run_b"}
    assert (
        job.main(
            [
                *job_argv(f"{folder}/img*", str(out["a"]), paths["a"]),
                "--write_raw",
                *FAST,
            ]
        )
        == 0
    )
    Image.new("RGB", (10, 10), (250, 20, 20)).save(folder / "only in b.png")
    assert (
        job.main(
            [
                *job_argv(f"{folder}/*", str(out["b"]), paths["b"]),
                "--reuse_from",
                str(out["a"]),
                *FAST,
            ]
        )
        == 0
    )
    return out, expected, root


def test_a_changed_model_recomputes_everything(runs):
    out, _, _ = runs
    with open(out["b"] / "manifest.json") as f:
        m = json.load(f)
    assert (m["counts"]["reused"], m["counts"]["computed"]) == (0, 9)


def test_a_run_compared_with_itself_has_no_drift(runs, capsys):
    out, _, root = runs
    drift_dir = root / "self"
    assert (
        compare.main(
            [
                str(out["a"]),
                str(out["a"]),
                "--output_dir",
                str(drift_dir),
                "--fail_on",
                "median_grid_correlation<0.8",
                "--fail_on",
                "changed_prediction_fraction>0.02",
                "--runner",
                "DirectRunner",
            ]
        )
        == 0
    )
    assert "compared 8 images" in capsys.readouterr().out
    rows = pq.read_table(drift_dir / "drift").to_pylist()
    assert len(rows) == 8
    for row in rows:
        assert row["uri_a"] == row["uri_b"] and not row["prediction_changed"]
        assert row["grid_correlation"] == 1.0 and row["top5_iou"] == 1.0
        assert row["iou_source"] == "raw"  # both runs wrote raw attributions
        assert row["target_score_delta"] == 0.0 and row["same_model"] and row["same_settings"]
        assert row["deletion_auc_a"] is not None and row["deletion_auc_delta"] == 0.0
    with open(drift_dir / "drift_summary.json") as f:
        summary = json.load(f)
    assert summary["passed"] is True
    assert summary["metrics"]["changed_prediction_count"] == 0
    assert summary["metrics"]["images_only_in_a"] == summary["metrics"]["images_only_in_b"] == 0
    assert [t["violated"] for t in summary["thresholds"]] == [False, False]
    assert "No image changed" in (drift_dir / "drift.html").read_text()


def test_perturbed_weights_drift_where_expected_and_fail_the_gate(runs, capsys):
    out, expected, root = runs
    drift_dir = root / "perturbed"
    code = compare.main(
        [
            str(out["a"]),
            str(out["b"]),
            "--output_dir",
            str(drift_dir),
            "--fail_on",
            "changed_prediction_fraction>0.02",
            "--fail_on",
            "images_compared<1",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "changed_prediction_fraction>0.02 violated" in err
    assert "images_compared<1" not in err
    rows = {os.path.basename(r["uri_a"]): r for r in pq.read_table(drift_dir / "drift").to_pylist()}
    assert set(rows) == set(expected)
    changed = {name for name, (a, b) in expected.items() if a != b}
    assert 0 < len(changed) < len(expected), expected  # some, not all, as built
    assert {name for name, r in rows.items() if r["prediction_changed"]} == changed
    for name, row in rows.items():
        assert (row["predicted_class_a"], row["predicted_class_b"]) == expected[name]
        assert row["iou_source"] == "grid"  # run B kept no raw attributions
        assert not row["same_model"] and row["same_settings"]
        assert row["grid_correlation"] < 1.0  # the filters moved: every map changed
        assert row["deletion_auc_delta"] == pytest.approx(
            row["deletion_auc_b"] - row["deletion_auc_a"]
        )
    unmatched = pq.read_table(drift_dir / "unmatched").to_pylist()
    assert [(os.path.basename(r["image_uri"]), r["run"]) for r in unmatched] == [
        ("only in b.png", "b")
    ]
    with open(drift_dir / "drift_summary.json") as f:
        summary = json.load(f)
    metrics = summary["metrics"]
    assert metrics["changed_prediction_count"] == len(changed)
    assert metrics["changed_prediction_fraction"] == pytest.approx(len(changed) / 8)
    assert metrics["median_grid_correlation"] < 0.99
    assert metrics["max_abs_deletion_auc_delta"] > 0  # the faithfulness drifted too
    assert summary["passed"] is False and summary["iou_sources"] == {"raw": 0, "grid": 8}
    assert sum(c["images"] for c in summary["per_class"]) == 8
    page = (drift_dir / "drift.html").read_text()
    assert page.count("data:image/png;base64,") >= 2  # before | after overlays embedded
    assert "http://" not in page and "https://" not in page
    assert "default-src 'none'" in page


def test_the_command_line_entry_point(runs):
    out, _, root = runs
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.compare",
            str(out["a"]),
            str(out["b"]),
            "--output_dir",
            str(root / "cli"),
            "--fail_on",
            "median_grid_correlation<-2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compared 8 images (0 only in A, 1 only in B)" in result.stdout


def test_bad_arguments_exit_2(runs, tmp_path, capsys):
    out, _, _ = runs
    assert (
        compare.main(
            [
                str(out["a"]),
                str(out["b"]),
                "--output_dir",
                str(tmp_path),
                "--fail_on",
                "median_correlation<0.8",
            ]
        )
        == 2
    )
    assert "unknown metric 'median_correlation'" in capsys.readouterr().err
    assert (
        compare.main(
            [
                str(out["a"]),
                str(out["b"]),
                "--output_dir",
                str(tmp_path),
                "--fail_on",
                "median_grid_correlation=0.8",
            ]
        )
        == 2
    )
    assert (
        compare.main([str(out["a"]), str(tmp_path / "nothing"), "--output_dir", str(tmp_path)]) == 2
    )
    assert "no summaries/*.parquet" in capsys.readouterr().err
    assert not (tmp_path / "drift").exists()


def test_spearman_with_ties_and_top_fraction_iou():
    # Hand-computed: ranks of a = [1, 2.5, 2.5, 4], of b = [1, 2, 3, 4].
    a, b = [0.1, 0.3, 0.3, 0.9], [1, 2, 3, 4]
    np.testing.assert_allclose(compare.average_ranks(a), [1, 2.5, 2.5, 4])
    ra, rb = np.array([1, 2.5, 2.5, 4]) - 2.5, np.array([1, 2, 3, 4]) - 2.5
    assert compare.spearman(a, b) == pytest.approx(ra @ rb / np.sqrt((ra @ ra) * (rb @ rb)))
    assert compare.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert compare.spearman([0, 0, 0], [0, 0, 0]) == 1.0
    assert compare.spearman([0, 0, 0], [0, 1, 0]) is None
    assert compare.spearman([1, 2], [1, 2, 3]) is None
    grid = np.arange(100, dtype=float)  # top 5% = the 5 largest
    assert compare.top_fraction_iou(grid, grid) == 1.0
    shifted = grid.copy()
    shifted[[99, 98]] = 0  # 3 of 5 stay, 2 new enter: IoU 3 / 7
    assert compare.top_fraction_iou(grid, shifted) == pytest.approx(3 / 7)
    assert compare.top_fraction_iou(np.ones(10), np.ones(10)) == 1.0  # k = 1, ties by position


def test_thresholds_are_checked_against_the_summary():
    metrics = {
        "median_grid_correlation": 0.7,
        "changed_prediction_fraction": 0.0,
        "median_top5_iou": None,
    }
    checked = compare.check(
        metrics,
        [
            "median_grid_correlation<0.8",
            "changed_prediction_fraction > 0.02",
            "median_top5_iou<=0.5",
        ],
    )
    assert [c["violated"] for c in checked] == [True, False, True]  # undefined counts as violated
