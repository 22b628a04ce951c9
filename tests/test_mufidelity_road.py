"""MuFidelity (Bhatt et al. 2020) and the fills of removed pixels (--deletion_fill; ROAD, Rong
et al. 2022) against NumPy references written from the papers in this file, and closed forms.

The references share no code with attribution/faithfulness.py except the random subsets,
which are handed to them explicitly (as masks) so both sides score the same images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from job_argv import job_argv
from test_faithfulness import engine as faithfulness_engine

from attribution import faithfulness
from attribution.baselines import make_baseline
from attribution.integrated_gradients import Request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W, C = 10, 9, 3
RNG = np.random.default_rng(11)
LINEAR = RNG.normal(size=(H * W * C, 3)).astype(np.float32)
HIDDEN = (RNG.normal(size=(H * W * C, 6)) / 8).astype(np.float32)
OUT = RNG.normal(size=(6, 3)).astype(np.float32)


def linear_logits(x):
    return tf.reshape(x, [-1, H * W * C]) @ LINEAR


def tanh_logits(x):
    return tf.tanh(tf.reshape(x, [-1, H * W * C]) @ HIDDEN) @ OUT


def tanh_probability(x, target):
    """The reference's own F: softmax of tanh(x W1) W2, in float64."""
    logits = np.tanh(x.reshape(-1).astype(np.float64) @ HIDDEN.astype(np.float64))
    logits = logits @ OUT.astype(np.float64)
    e = np.exp(logits - logits.max())
    return float(e[target] / e.sum())


def linear_logit(x, target):
    return float(x.reshape(-1).astype(np.float64) @ LINEAR[:, target].astype(np.float64))


def engine(fn=linear_logits, score="logit", batch_size=8):
    return faithfulness_engine(batch_size, fn, score=score, image_size=(H, W))


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, H, W, C), dtype=np.float32)


def items_for(ig, xs, baselines=None, target="0"):
    baselines = [np.zeros_like(x) for x in xs] if baselines is None else baselines
    results = ig.attribute(
        [Request(i, x, b) for i, (x, b) in enumerate(zip(xs, baselines))], target
    )
    return [faithfulness.Item.of(r, xs[r.key], baselines[r.key], f"image-{r.key}") for r in results]


def masks_of(item, subsets, fraction, grid, seed=0):
    """The subsets the engine draws for this item, as [S, H, W] bool masks (True: removed)."""
    cells, count = faithfulness.cell_map(item.image.shape[:2], grid)
    return faithfulness.subset_cells(count, subsets, fraction, item.key, seed)[:, cells]


def reference_mufidelity(x, fill, attributions, masks, f, target):
    """Bhatt et al. (2020) def. 3: Pearson correlation over subsets S of sum_{i in S} g_i and
    f(x) - f(x with x_S := fill_S)."""
    sums, drops = [], []
    for mask in masks:
        sums.append(float(attributions[mask].astype(np.float64).sum()))
        drops.append(f(x, target) - f(np.where(mask[..., None], fill, x), target))
    return float(np.corrcoef(sums, drops)[0, 1])


NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def dense_road(image, removed):
    """ROAD's linear imputation as a dense system written from the paper: every removed pixel
    equals the weighted mean of its neighbours inside the image (1/6 for the 4 edge
    neighbours, 1/12 for the diagonals), kept pixels fixed; no noise. Every pixel removed:
    the image's mean colour."""
    h, w, c = image.shape
    unknown = [(y, x) for y in range(h) for x in range(w) if removed[y, x]]
    if len(unknown) == h * w:
        return np.broadcast_to(image.reshape(-1, c).mean(0), image.shape).astype(np.float32)
    index = {p: i for i, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), c))
    for i, (y, x) in enumerate(unknown):
        for dy, dx in NEIGHBOURS:
            ny, nx = y + dy, x + dx
            if not (0 <= ny < h and 0 <= nx < w):
                continue
            weight = 1 / 12 if dy and dx else 1 / 6
            a[i, i] += weight
            if (ny, nx) in index:
                a[i, index[(ny, nx)]] -= weight
            else:
                b[i] += weight * image[ny, nx].astype(np.float64)
    solved = np.linalg.solve(a, b)
    out = image.astype(np.float64).copy()
    for i, (y, x) in enumerate(unknown):
        out[y, x] = solved[i]
    return out.astype(np.float32)


# ---------------------------------------------------------------------------- MuFidelity


@pytest.mark.parametrize("grid, fill", [(0, "baseline"), (3, "baseline"), (4, "blur")])
def test_mufidelity_matches_a_numpy_reference_from_the_paper(grid, fill):
    ig = engine(tanh_logits, score="probability")
    xs = images(3, seed=4)
    items = items_for(ig, xs)
    evidence = faithfulness.evaluate(
        ig, items, kinds=("mufidelity",), subsets=40, fraction=0.3, grid=grid, fill=fill
    )
    for x, item, e in zip(xs, items, evidence):
        masks = masks_of(item, 40, 0.3, grid)
        source = item.baseline if fill == "baseline" else make_baseline("blur", x)
        expected = reference_mufidelity(
            x, source, item.attributions.sum(-1), masks, tanh_probability, item.target
        )
        # float32 model against the float64 reference: score drops of ~1e-2 agree to ~1e-7,
        # which moves a correlation over 40 subsets by far less than 1e-4
        assert e.mufidelity == pytest.approx(expected, abs=1e-4)
        assert e.forward_rows == 40 and e.curves == {} and e.points == 0


def test_subsets_have_the_asked_size_and_reproduce_from_the_image_key():
    cells, count = faithfulness.cell_map((H, W), 4)
    assert count == 16 and sorted(np.unique(cells)) == list(range(16))
    chosen = faithfulness.subset_cells(count, 50, 0.2, "key")
    assert chosen.shape == (50, 16) and set(chosen.sum(axis=1)) == {3}  # round(0.2 * 16)
    assert np.array_equal(chosen, faithfulness.subset_cells(count, 50, 0.2, "key"))
    assert not np.array_equal(chosen, faithfulness.subset_cells(count, 50, 0.2, "other"))
    # grid 0: one cell per pixel; a grid wider than the image: per pixel along that side
    assert faithfulness.cell_map((H, W), 0)[1] == H * W
    assert faithfulness.cell_map((H, W), 12)[1] == 10 * 9
    # at least one cell and never all of them
    assert faithfulness.subset_cells(4, 5, 0.01, "k").sum(axis=1).tolist() == [1] * 5
    assert faithfulness.subset_cells(4, 5, 0.99, "k").sum(axis=1).tolist() == [3] * 5


@pytest.mark.parametrize("grid", [0, 3, 9])
def test_mufidelity_of_ig_on_a_linear_model_is_one(grid):
    """For a linear logit, IG is exact (a_i = w_i (x_i - b_i)) and removing a subset to the
    baseline lowers the logit by exactly the subset's attribution: correlation 1."""
    ig = engine()
    xs = images(3, seed=2)
    noise = [make_baseline("uniform_noise", x, key=str(i)) for i, x in enumerate(xs)]
    for baselines in (None, noise):
        items = items_for(ig, xs, baselines)
        evidence = faithfulness.evaluate(ig, items, kinds=("mufidelity",), grid=grid)
        # float32 sums on both sides: relative error ~1e-6 of drops whose spread is ~1
        assert [e.mufidelity for e in evidence] == pytest.approx([1.0] * 3, abs=1e-5)


def test_random_attributions_give_mufidelity_near_zero():
    """Maps unrelated to the model: r over 128 subsets has standard deviation about
    1 / sqrt(127) = 0.089; every row within 4.5 of those and the mean of 24 rows within 4.5
    standard errors (0.018) of 0."""
    ig = engine()
    xs = images(24, seed=9)
    items = items_for(ig, xs)
    rng = np.random.default_rng(3)
    for item in items:
        item.attributions = rng.normal(size=item.attributions.shape).astype(np.float32)
    values = [e.mufidelity for e in faithfulness.evaluate(ig, items, kinds=("mufidelity",))]
    assert all(abs(v) < 0.4 for v in values)
    assert abs(np.mean(values)) < 0.08


def test_a_constant_side_gives_zero_as_xplique():
    assert faithfulness.pearson([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0
    assert faithfulness.pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]) == pytest.approx(
        np.corrcoef([1, 2, 3], [2, 4, 6.5])[0, 1], abs=1e-12
    )


def test_findings_name_a_class_whose_mufidelity_is_not_positive():
    import pyarrow as pa

    from pipeline import evidence

    rows = [{"target_label": "good", "mufidelity": v} for v in (0.6, 0.8, 0.7)]
    rows += [{"target_label": "bad", "mufidelity": v} for v in (-0.2, 0.1, -0.1)]
    rows += [{"target_label": "bad", "mufidelity": None}]  # not computed: not counted
    table = pa.Table.from_pylist(rows)
    means = {
        f.label: (f.rows, round(f.mean, 6), round(f.median, 6)) for f in evidence.mufidelity(table)
    }
    assert means == {
        "bad": (3, -0.066667, -0.1),
        "good": (3, 0.7, 0.7),
        "(all)": (6, 0.316667, 0.35),
    }
    failed, held = evidence.split_findings(table)
    assert failed == [
        "class `bad`: the attribution in random subsets does not predict the score drop when "
        "they are removed (mean MuFidelity -0.07, n=3)"
    ]
    assert any("MuFidelity" in line and "averages 0.32 over 6 rows" in line for line in held)


# ---------------------------------------------------------------------------- ROAD


@pytest.mark.parametrize("channels", [3, 1])  # RGB, and grayscale models' one channel
def test_road_imputation_matches_a_dense_solve_of_the_same_system(channels):
    rng = np.random.default_rng(5)
    image = rng.random((7, 6, channels), dtype=np.float32)
    for share in (0.2, 0.6, 0.95):
        removed = rng.random((7, 6)) < share
        removed[0, 0] = removed[-1, -1] = True  # corners: 3 neighbours, renormalised
        removed[3, 3] = False
        got = faithfulness.road_impute(image, removed, noise=0.0)
        # both solve the same well-conditioned system in float64, then round to float32
        np.testing.assert_allclose(got, dense_road(image, removed), atol=1e-6)
        assert np.array_equal(got[~removed], image[~removed])  # kept pixels untouched


def test_road_keeps_a_constant_image_constant_and_its_noise_is_seeded():
    image = np.full((40, 40, 3), 0.37, np.float32)
    removed = np.random.default_rng(0).random((40, 40)) < 0.5
    np.testing.assert_allclose(faithfulness.road_impute(image, removed, noise=0.0), 0.37, atol=1e-6)
    a = faithfulness.road_impute(image, removed, rng=np.random.default_rng(1))
    b = faithfulness.road_impute(image, removed, rng=np.random.default_rng(1))
    assert np.array_equal(a, b) and np.array_equal(a[~removed], image[~removed])
    # the noise is Gaussian with ROAD's sigma: ~2400 draws put the sample sd within 5%
    assert np.std(a[removed] - 0.37) == pytest.approx(faithfulness.ROAD_NOISE, rel=0.05)
    everything = faithfulness.road_impute(image * 0 + [0.1, 0.5, 0.9], np.ones((40, 40), bool))
    assert np.abs(everything.reshape(-1, 3).mean(0) - [0.1, 0.5, 0.9]).max() < 1e-3


def _mask(pixels, keep=False):
    removed = np.zeros(H * W, bool)
    removed[pixels] = True
    return (~removed if keep else removed).reshape(H, W)


def reference_curves(x, order, points, target):
    """The four curves of one order, each point's image built here and scored by the
    reference's F: road (dense solve) and blur fills, deletion and insertion."""
    blurred = make_baseline("blur", x)
    images = {
        "road_deletion": lambda p: dense_road(x, _mask(p)),
        "road_insertion": lambda p: dense_road(x, _mask(p, keep=True)),
        "blur_deletion": lambda p: np.where(_mask(p)[..., None], blurred, x),
        "blur_insertion": lambda p: np.where(_mask(p)[..., None], x, blurred),
    }
    n = faithfulness.counts(points, H * W)
    return {
        name: np.array([tanh_probability(make(order[:k]), target) for k in n])
        for name, make in images.items()
    }


def test_deletion_and_insertion_with_the_road_and_blur_fills_match_numpy():
    ig = engine(tanh_logits, score="probability")
    xs = images(2, seed=6)
    items = items_for(ig, xs)
    points = 6
    road = faithfulness.evaluate(ig, items, points=points, fill="road", road_noise=0.0)
    blur = faithfulness.evaluate(ig, items, points=points, fill="blur")
    for x, item, r, b in zip(xs, items, road, blur):
        for suffix, order in (
            ("", faithfulness.attribution_order(item.attributions)),
            ("_random", faithfulness.random_order(H * W, item.key)),
        ):
            expected = reference_curves(x, order, points, item.target)
            for kind in ("deletion", "insertion"):
                # float32 model and imputation against float64: ~1e-7 on probabilities
                got = {"road": r, "blur": b}
                for fill, evidence in got.items():
                    np.testing.assert_allclose(
                        evidence.curves[kind + suffix], expected[f"{fill}_{kind}"], atol=1e-5
                    )
        # every pixel removed is one image: deletion's end is insertion's start, scored once
        assert r.curves["deletion"][-1] == r.curves["insertion"][0]
        assert r.forward_rows == b.forward_rows == 4 * (points - 2) + 1


def test_the_default_fill_builds_the_rows_it_built_before():
    """--deletion_fill baseline is the default and its curves are the pre-fill ones: deletion
    ends at F(baseline) without a model call, insertion starts from the blurred image;
    asking for MuFidelity too changes no curve."""
    ig = engine(tanh_logits, score="probability")
    items = items_for(ig, images(3, seed=8))
    default = faithfulness.evaluate(ig, items, points=7)
    both = faithfulness.evaluate(
        ig, items, points=7, fill="baseline", kinds=("deletion", "insertion", "mufidelity")
    )
    for item, d, m in zip(items, default, both):
        assert d.mufidelity is None and m.mufidelity is not None
        assert d.curves["deletion"][-1] == np.float32(item.baseline_score)
        assert d.forward_rows == 4 * 5 + 1 and m.forward_rows == d.forward_rows + 128
        for name in d.curves:  # same images; only their places in the packed calls moved
            np.testing.assert_allclose(d.curves[name], m.curves[name], rtol=0, atol=1e-7)


def test_packing_does_not_change_mufidelity_or_road_curves():
    xs = images(4, seed=12)
    runs = []
    for batch_size in (3, 16):
        ig = engine(tanh_logits, score="probability", batch_size=batch_size)
        items = items_for(ig, xs)
        traces = ig.trace_count
        together = faithfulness.evaluate(
            ig, items, kinds=faithfulness.KINDS, points=5, fill="road", subsets=20
        )
        alone = [
            faithfulness.evaluate(
                ig, [item], kinds=faithfulness.KINDS, points=5, fill="road", subsets=20
            )[0]
            for item in items
        ]
        assert ig.trace_count == traces  # the forward function attribute() traced, reused
        runs.extend([together, alone])
    first = runs[0]
    for other in runs[1:]:
        for a, b in zip(first, other):
            # the same rows in other calls: equal up to float32 rounding of the model
            assert a.mufidelity == pytest.approx(b.mufidelity, abs=1e-6)
            for name in a.curves:
                np.testing.assert_allclose(a.curves[name], b.curves[name], atol=1e-6)


# ---------------------------------------------------------------------------- options


# values at and past their edges are refused in test_faithfulness.py, with the other
# faithfulness options; these are the last values taken
REQUIRED = job_argv("x/*.png", "out", "m")


@pytest.mark.parametrize(
    "flags",
    [
        ["--mufidelity_subsets", "3", "--mufidelity_grid", "0"],
        ["--mufidelity_subsets", "4096", "--mufidelity_grid", "1024"],
        ["--mufidelity_fraction", "0.01", "--mufidelity_grid", "2"],
        ["--mufidelity_fraction", "0.99", "--deletion_fill", "road"],
        ["--faithfulness", "mufidelity", "--deletion_fill", "blur"],
    ],
)
def test_option_values_just_inside_their_edges_are_taken(flags):
    from pipeline import options

    options.parse([*REQUIRED, *flags])


def test_a_bad_value_exits_2_with_one_line_before_any_work(tmp_path, capsys):
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *REQUIRED, "--mufidelity_fraction", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    (line,) = done.stderr.strip().splitlines()
    assert "--mufidelity_fraction must be between 0 and 1" in line
    # an unknown fill is argparse's refusal: usage and one error line, exit 2
    from pipeline import options

    with pytest.raises(SystemExit) as refused:
        options.parse([*REQUIRED, "--deletion_fill", "zero"])
    assert refused.value.code == 2
    assert "--deletion_fill: invalid choice: 'zero'" in capsys.readouterr().err


def test_the_new_options_enter_the_settings_hash_only_when_not_the_default():
    import dataclasses

    from transforms.settings import Settings

    base = Settings(
        model="m", output_dir="/o", image_size=(8, 8), num_classes=3, model_fingerprint="f"
    )
    explicit = dataclasses.replace(
        base, deletion_fill="baseline", mufidelity_subsets=128, mufidelity_fraction=0.2
    )
    assert explicit.settings_hash == base.settings_hash
    changes = (
        {"deletion_fill": "road"},
        {"deletion_fill": "blur"},
        {"mufidelity_subsets": 64},
        {"mufidelity_fraction": 0.3},
        {"mufidelity_grid": 0},
        {"faithfulness": ("deletion", "insertion", "mufidelity")},
    )
    hashes = {dataclasses.replace(base, **c).settings_hash for c in changes}
    assert len(hashes) == len(changes) and base.settings_hash not in hashes


# ---------------------------------------------------------------------------- the job


def test_the_job_writes_mufidelity_with_road_and_the_reports_show_them(tiny_model, tmp_path):
    import pyarrow.parquet as pq
    from conftest import random_pngs

    folder = random_pngs(tmp_path / "images", 3, shape=(20, 16, 3), seed=5, prefix="im")
    common = [
        "--steps",
        "4",
        "--tolerance",
        "0",
        "--faithfulness_points",
        "5",
        "--mufidelity_subsets",
        "24",
        "--progress_interval",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": REPO}
    road, plain = tmp_path / "road", tmp_path / "plain"
    for out, extra in (
        (road, ["--faithfulness", "deletion,insertion,mufidelity", "--deletion_fill", "road"]),
        (plain, ["--faithfulness", "mufidelity", "--no_report"]),
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline",
                *job_argv(f"{folder}/*.png", out, tiny_model),
                *common,
                *extra,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    rows = pq.read_table(road / "summaries").to_pylist()
    assert len(rows) == 3
    for row in rows:
        assert -1 <= row["mufidelity"] <= 1 and np.isfinite(row["deletion_auc"])
        assert len(row["deletion_curve"]) == 5
        # road: deletion ends at the all-removed image (not F(baseline)), which is insertion's
        # start
        assert row["deletion_curve"][-1] == row["insertion_curve"][0]
    config = json.loads((road / "manifest.json").read_text())["config"]
    assert config["deletion_fill"] == "road" and config["mufidelity_subsets"] == 24
    plain_rows = pq.read_table(plain / "summaries").to_pylist()
    assert all(r["deletion_curve"] is None and r["mufidelity"] is not None for r in plain_rows)
    assert len({r["settings_hash"] for r in rows + plain_rows}) == 2

    page = (road / "report.html").read_text()
    section = page[page.index('id="faithfulness"') : page.index('id="examples"')]
    assert "<code>--deletion_fill road</code>" in section and "MuFidelity" in section
    assert "24 random subsets" in section and "Attribution order beats random in" in section

    from pipeline.report import write_report

    page = open(write_report(str(plain)), encoding="utf-8").read()  # MuFidelity, no curves
    section = page[page.index('id="faithfulness"') : page.index('id="examples"')]
    assert "mean MuFidelity" in section and "No deletion/insertion curves" in section
    assert "<code>--deletion_fill baseline</code>" in section

    methods = tmp_path / "methods.html"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.report", str(road), str(plain), "--output", str(methods)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    html = methods.read_text()
    assert "mean MuFidelity" in html and "<code>road</code>" in html
    assert "<code>baseline</code>" in html and "removed pixels differently" in html
    ranking = html[html.index("Ranking") :]
    assert "mean MuFidelity over 3 rows" in ranking  # the same 3 images in both runs
    assert str(road) in ranking and str(plain) in ranking


def test_the_methods_page_ranks_runs_on_the_rows_they_share(tmp_path):
    """Run a has images 0-5, run b images 2-7: over their own rows b's mean MuFidelity is
    higher, over the four images both have a's is: the ranking uses those four."""
    from run_folders import make_run, summary_row

    from pipeline.report import methods
    from pipeline.report.read import read_run

    folders = []
    for name, images, shared, own in (("a", range(0, 6), 0.6, 0.0), ("b", range(2, 8), 0.5, 1.0)):
        rows = [summary_row(tmp_path / name, i, 0) for i in images]
        for i, row in zip(images, rows):
            row["mufidelity"] = shared if 2 <= i < 6 else own
        folders.append(str(make_run(tmp_path / name, rows=rows)))
    data = methods.runs_section([read_run(f) for f in folders])
    assert [row[-1] for row in data["rows"]] == pytest.approx([0.4, 2 / 3])  # own rows
    assert data["ranking"] == [("mean MuFidelity", 4, [(folders[0], 0.6), (folders[1], 0.5)])]
    assert data["fills"] == ["baseline"]
