"""Deletion/insertion curves and region ablation against numpy on a linear logit model, where
the steepest deletion order is known, and the packing of their forward rows."""

import numpy as np
import pytest
import tensorflow as tf

from attribution import faithfulness
from attribution.baselines import make_baseline
from attribution.integrated_gradients import IntegratedGradients, Request

H, W, C = 8, 7, 3
RNG = np.random.default_rng(7)
# positive weights on class 0: with a black baseline every attribution is x * w > 0, so the
# |IG| order is the signed order, and removing pixels in it is the steepest possible descent
WEIGHTS = np.abs(RNG.normal(size=(H * W * C, 3))).astype(np.float32)
WEIGHTS[:, 1:] *= -0.2


def linear_logits(x):
    return tf.reshape(x, [-1, H * W * C]) @ WEIGHTS


def score(x, target=0):
    return float(x.reshape(-1).astype(np.float64) @ WEIGHTS[:, target].astype(np.float64))


def engine(batch_size=8, fn=linear_logits, score="logit", image_size=(H, W)):
    """The engine around ``fn`` (also tests/test_mufidelity_road.py's, at its image size)."""
    return IntegratedGradients(
        fn,
        image_size=image_size,
        score=score,
        method="gausslegendre",
        steps=4,
        tolerance=None,
        batch_size=batch_size,
    )


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, H, W, C), dtype=np.float32)


def items_for(ig, xs, boxes=()):
    results = ig.attribute([Request(i, x, np.zeros_like(x)) for i, x in enumerate(xs)], "0")
    return [
        faithfulness.Item.of(r, xs[r.key], np.zeros_like(xs[r.key]), f"image-{r.key}", boxes)
        for r in results
    ]


def numpy_curve(start, fill, order, points, target=0):
    n = faithfulness.counts(points, H * W)
    out = []
    for k in n:
        image = start.copy().reshape(-1, C)
        image[order[:k]] = fill.reshape(-1, C)[order[:k]]
        out.append(score(image, target))
    return np.array(out)


def test_curves_match_numpy_and_attribution_order_is_the_steepest_deletion():
    ig = engine()
    xs = images(3)
    items = items_for(ig, xs)
    evidence = faithfulness.evaluate(ig, items, points=9)
    for x, item, e in zip(xs, items, evidence):
        zero = np.zeros_like(x)
        blurred = make_baseline("blur", x)
        ordered = faithfulness.attribution_order(item.attributions)
        shuffled = faithfulness.random_order(H * W, item.key)
        np.testing.assert_allclose(
            e.curves["deletion"], numpy_curve(x, zero, ordered, 9), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            e.curves["deletion_random"], numpy_curve(x, zero, shuffled, 9), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            e.curves["insertion"], numpy_curve(blurred, x, ordered, 9), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            e.curves["insertion_random"], numpy_curve(blurred, x, shuffled, 9), rtol=1e-5, atol=1e-5
        )
        fx = score(x)
        curve = numpy_curve(x, zero, ordered, 9)
        expected_auc = np.trapezoid(curve, np.linspace(0, 1, 9)) / fx
        assert e.aucs["deletion"] == pytest.approx(expected_auc, rel=1e-5)
        # steepest: at every point no other order tried is lower
        pixel_gain = (x * WEIGHTS[:, 0].reshape(H, W, C)).sum(-1).ravel()
        others = [
            shuffled,
            np.argsort(pixel_gain, kind="stable"),  # worst first
            *(np.random.default_rng(s).permutation(H * W) for s in range(20)),
        ]
        for order in others:
            assert np.all(curve <= numpy_curve(x, zero, order, 9) + 1e-5)
        assert e.aucs["deletion"] < e.aucs["deletion_random"]
        assert e.aucs["insertion"] > e.aucs["insertion_random"]


def test_random_order_is_seeded_by_the_key():
    a, b = faithfulness.random_order(50, "abc"), faithfulness.random_order(50, "abc")
    assert np.array_equal(a, b) and sorted(a) == list(range(50))
    assert not np.array_equal(a, faithfulness.random_order(50, "abd"))


def test_ties_are_broken_stably():
    flat = np.zeros((2, 3, 3), np.float32)
    flat[1, 1] = 1.0
    assert list(faithfulness.attribution_order(flat)) == [4, 0, 1, 2, 3, 5]


def test_region_ablation_replaces_the_box_by_the_baseline():
    ig = engine()
    xs = images(2, seed=3)
    boxes = [("left", (0, 0, 3, H)), ("half pixel", (3.5, 2, 4.5, 3))]
    items = items_for(ig, xs, boxes)
    evidence = faithfulness.evaluate(ig, items, kinds=(), points=16)
    for x, item, e in zip(xs, items, evidence):
        assert e.curves == {} and e.forward_rows == 2
        ablated = x.copy()
        ablated[:, :3] = 0
        half = x.copy()
        half[2, 3] *= 0.5
        half[2, 4] *= 0.5
        for region, image in zip(e.ablations, (ablated, half)):
            assert region["ablation_score"] == pytest.approx(score(image), rel=1e-5, abs=1e-5)
            assert region["ablation_drop"] == pytest.approx(
                item.target_score - region["ablation_score"], abs=1e-6
            )
        assert [r["name"] for r in e.ablations] == ["left", "half pixel"]


def test_endpoints_cost_no_model_call_and_rows_share_fixed_size_calls_without_retracing():
    ig = engine(batch_size=8)
    xs = images(5, seed=1)
    items = items_for(ig, xs, boxes=[("box", (1, 1, 4, 4))])
    traces, calls = ig.trace_count, ig.model_calls
    points = 6
    evidence = faithfulness.evaluate(ig, items, points=points)
    # per row: 2 deletion curves and 2 insertion curves of K - 2 inner points, F(blurred)
    # once, one ablation; 0% and 100% of deletion and 100% of insertion are known
    per_row = 4 * (points - 2) + 1 + 1
    assert [e.forward_rows for e in evidence] == [per_row] * 5
    assert ig.model_calls - calls == -(-5 * per_row // 8)  # packed across rows, 8 a call
    assert ig.trace_count == traces  # the forward function traced by attribute(), reused
    # with the blur baseline F(blurred) is F(baseline): one row fewer per image
    blur_items = [
        faithfulness.Item(**{**vars(i), "baseline": make_baseline("blur", i.image)}) for i in items
    ]
    evidence = faithfulness.evaluate(ig, blur_items, points=points, blur_baseline=True)
    assert [e.forward_rows for e in evidence] == [per_row - 1] * 5
    assert ig.trace_count == traces


def test_faithfulness_rows_go_through_the_same_model_calls_as_gradient_rows():
    """Counted at the model: one traced forward shape (any number of rows, at most the
    engine's batch size a call), nothing traced anew for the curves."""
    shapes = []

    def counting(x):
        shapes.append(tuple(x.shape))
        return linear_logits(x)

    ig = engine(batch_size=8, fn=counting)
    items = items_for(ig, images(3, seed=2))
    traced = len(shapes)
    faithfulness.evaluate(ig, items, points=16)
    faithfulness.evaluate(ig, items, points=5)
    assert len(shapes) == traced  # model code ran only while tracing: nothing new was traced
    assert set(shapes) == {(None, H, W, C)}


@pytest.mark.parametrize(
    "text, kinds",
    [
        ("deletion,insertion", ("deletion", "insertion")),
        ("none", ()),
        ("insertion", ("insertion",)),
    ],
)
def test_parse_kinds(text, kinds):
    assert faithfulness.parse_kinds(text) == kinds


@pytest.mark.parametrize("text", ["", "deletion,foo", "all"])
def test_parse_kinds_refuses_unknown(text):
    with pytest.raises(ValueError, match="--faithfulness"):
        faithfulness.parse_kinds(text)


def test_points_must_include_both_ends():
    with pytest.raises(ValueError, match="--faithfulness_points"):
        faithfulness.fractions(1)


REQUIRED = ["--input_pattern", "x/*.png", "--output_dir", "out", "--model", "m"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--faithfulness", "deletion,sideways"], "--faithfulness"),
        (["--faithfulness_points", "1"], "--faithfulness_points"),
        (["--faithfulness_points", "100000"], "at most 1025"),
        # MuFidelity's options, at and past their edges
        (["--mufidelity_subsets", "2"], "--mufidelity_subsets must be from 3 to 4096"),
        (["--mufidelity_subsets", "4097"], "--mufidelity_subsets"),
        (["--mufidelity_subsets", "0"], "--mufidelity_subsets"),
        (["--mufidelity_fraction", "0"], "--mufidelity_fraction must be between 0 and 1"),
        (["--mufidelity_fraction", "1"], "--mufidelity_fraction"),
        (["--mufidelity_fraction", "-0.1"], "--mufidelity_fraction"),
        (["--mufidelity_fraction", "1.5"], "--mufidelity_fraction"),
        (["--mufidelity_fraction", "nan"], "--mufidelity_fraction"),
        (["--mufidelity_grid", "1"], "--mufidelity_grid must be 0"),
        (["--mufidelity_grid", "1025"], "--mufidelity_grid"),
        (["--mufidelity_grid", "-1"], "--mufidelity_grid"),
        (["--faithfulness", "mufidelity,road"], "--faithfulness"),
    ],
)
def test_bad_faithfulness_options_are_refused_before_any_work(flags, message):
    from pipeline import options

    with pytest.raises(options.UsageError, match=message):
        options.parse([*REQUIRED, *flags])


def test_the_job_writes_curves_and_ablations_and_none_turns_curves_off(tiny_model, tmp_path):
    import pyarrow.parquet as pq
    from conftest import random_pngs

    from pipeline import run

    folder = random_pngs(tmp_path / "images", 3, shape=(20, 16, 3), seed=5, prefix="im")
    regions = tmp_path / "regions.csv"
    regions.write_text(
        "image,region,x0,y0,x1,y1\n" + "".join(f"im{i}.png,box,2,2,10,10\n" for i in range(3))
    )
    common = [
        "--input_pattern",
        f"{folder}/*.png",
        "--model",
        tiny_model,
        "--steps",
        "8",
        "--regions",
        str(regions),
        "--progress_interval",
        "0",
        "--no_report",
    ]
    assert (
        run.main([*common, "--output_dir", str(tmp_path / "on"), "--faithfulness_points", "5"]) == 0
    )
    assert run.main([*common, "--output_dir", str(tmp_path / "off"), "--faithfulness", "none"]) == 0
    on = pq.read_table(tmp_path / "on" / "summaries").to_pylist()
    off = pq.read_table(tmp_path / "off" / "summaries").to_pylist()
    assert len(on) == len(off) == 3
    for row in on:
        assert row["faithfulness_points"] == 5 and len(row["insertion_curve"]) == 5
        assert row["deletion_curve"][0] == pytest.approx(row["target_score"], abs=1e-6)
        assert row["deletion_curve"][-1] == pytest.approx(row["baseline_score"], abs=1e-6)
        assert all(np.isfinite(row[k]) for k in ("deletion_auc", "insertion_auc_random"))
        (box,) = row["regions"]
        assert box["ablation_drop"] == pytest.approx(row["target_score"] - box["ablation_score"])
    for row in off:
        assert row["deletion_curve"] is None and row["deletion_auc"] is None
        assert row["faithfulness_points"] is None
        assert row["regions"][0]["ablation_score"] is not None  # ablation needs only --regions
    assert {r["image_uri"]: r["regions"][0]["ablation_score"] for r in on} == pytest.approx(
        {r["image_uri"]: r["regions"][0]["ablation_score"] for r in off}
    )
    # the report's Faithfulness section, before the examples
    from pipeline.report import write_report

    page = open(write_report(str(tmp_path / "on")), encoding="utf-8").read()
    assert 'id="faithfulness"' in page and page.index('id="faithfulness"') < page.index(
        'id="examples"'
    )
    assert "Attribution order beats random in" in page
    page = open(write_report(str(tmp_path / "off")), encoding="utf-8").read()
    assert "No deletion/insertion curves in this run" in page


def test_findings_lead_with_what_failed():
    import pyarrow as pa

    from pipeline import evidence

    rows = []
    for _ in range(4):  # `good` beats random in every row, `bad` in none
        rows.append(
            {
                "target_label": "good",
                "target_score": 0.9,
                "deletion_auc": 0.2,
                "deletion_auc_random": 0.6,
                "regions": [{"name": "stamp", "mass_fraction": 0.4, "ablation_score": 0.89}],
            }
        )
        rows.append(
            {
                "target_label": "bad",
                "target_score": 0.8,
                "deletion_auc": 0.7,
                "deletion_auc_random": 0.5,
                "regions": [],
            }
        )
    table = pa.Table.from_pylist(rows)
    lines = evidence.findings(table)
    assert lines[0].startswith("class `bad`") and "no better than random" in lines[0]
    assert "`stamp` holds 40% of `good`'s" in lines[1] and "disagree" in lines[1]
    assert "50% of rows (4 of 8)" in lines[2]
    assert evidence.ablation_sentence(table, "good", "stamp") == (
        "masking `stamp` lowers `good` from 0.90 to 0.89 on average (n=4)"
    )


def test_reused_rows_keep_the_ablation_of_the_same_box_only():
    from transforms.reuse import carry_ablations

    previous = [
        {
            "name": "cue",
            "area_fraction": 0.01,
            "mass_fraction": 0.2,
            "ablation_score": 0.3,
            "ablation_drop": 0.6,
        },
        {
            "name": "object",
            "area_fraction": 0.1,
            "mass_fraction": 0.5,
            "ablation_score": 0.1,
            "ablation_drop": 0.8,
        },
    ]
    now = [
        {"name": "cue", "area_fraction": 0.01, "mass_fraction": 0.2},
        {"name": "object", "area_fraction": 0.2, "mass_fraction": 0.6},
    ]  # the box moved
    carry_ablations(now, previous)
    assert (now[0]["ablation_score"], now[0]["ablation_drop"]) == (0.3, 0.6)
    assert (now[1]["ablation_score"], now[1]["ablation_drop"]) == (None, None)


def test_the_faithfulness_settings_are_in_the_settings_hash():
    import dataclasses

    from transforms.settings import Settings

    base = Settings(
        model="m", output_dir="/o", image_size=(8, 8), num_classes=3, model_fingerprint="f"
    )
    hashes = {
        dataclasses.replace(base, **c).settings_hash
        for c in ({}, {"faithfulness": ()}, {"faithfulness_points": 8}, {"randomize": "top_50"})
    }
    assert len(hashes) == 4


def test_deletion_ends_at_the_deletion_baselines_own_score_for_averaged_baselines(
    tiny_model, tmp_path
):
    """With --baseline black,white a row's baseline_score is the mean of F(black) and F(white);
    deletion fills with the first baseline (black), so its 100% point must be F(black)."""
    import pyarrow.parquet as pq
    from conftest import random_pngs

    from attribution.models import load_model
    from pipeline import run

    folder = random_pngs(tmp_path / "images", 2, shape=(20, 16, 3), seed=6, prefix="im")
    out = tmp_path / "out"
    args = [
        "--input_pattern",
        f"{folder}/*.png",
        "--model",
        tiny_model,
        "--steps",
        "8",
        "--baseline",
        "black,white",
        "--faithfulness_points",
        "5",
        "--progress_interval",
        "0",
        "--no_report",
        "--output_dir",
        str(out),
    ]
    assert run.main(args) == 0
    model = load_model(tiny_model)
    black = np.zeros((1, *model.image_size, 3), np.float32)
    f_black = tf.nn.softmax(tf.function(model.fn)(tf.constant(black))).numpy()[0]
    rows = pq.read_table(out / "summaries").to_pylist()
    assert len(rows) == 2
    for row in rows:
        assert row["deletion_curve"][-1] == pytest.approx(f_black[row["target_class"]], abs=1e-5)
        assert row["deletion_curve"][-1] != pytest.approx(row["baseline_score"], abs=1e-5)
