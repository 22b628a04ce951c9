"""Strategy discovery: the clustering on planted layouts, the Beam stage's
independence of row order and workers, and the job finding a planted cue without --regions."""

import json
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from attribution import strategies as st
from pipeline import options
from tests.job_argv import job_argv
from transforms.settings import Settings
from transforms.strategies import DiscoverStrategies, assign_row
from transforms.write import SUMMARY_SCHEMA

G = 14
PATTERNS = {  # where each planted strategy puts extra attribution on a 14 x 14 grid
    0: (slice(4, 10), slice(4, 10), 3.0),  # the object, centre
    1: (slice(12, 14), slice(8, 14), 6.0),  # a bar at the bottom-right edge
    2: (slice(0, 3), slice(0, 3), 6.0),  # a corner
    3: (slice(5, 9), slice(0, 4), 5.0),  # the left side
}


def planted(sizes: dict[int, int], seed: int = 0, noise: float = 1.0):
    """Layouts of the planted strategies: the pattern times gamma noise (shape 1/noise) per
    cell, so every row differs; returns (grids [n, G*G], labels [n]) in a shuffled order."""
    rng = np.random.default_rng(seed)
    grids, labels = [], []
    for label, size in sizes.items():
        base = np.full((G, G), 0.2)
        rows, cols, extra = PATTERNS[label]
        base[rows, cols] += extra
        for _ in range(size):
            x = rng.gamma(1 / noise, size=(G, G)) * base
            grids.append((x / x.sum()).ravel())
            labels.append(label)
    order = rng.permutation(len(grids))
    return np.array(grids)[order], np.array(labels)[order]


def test_adjusted_rand_index_matches_its_closed_form():
    # Hubert & Arabie on [0,0,0,1,1,1] vs [0,0,1,1,2,2]: pairs together in both 2, in the
    # first 6, in the second 3, of 15: expected 6*3/15 = 1.2, max (6+3)/2 = 4.5 ->
    # (2 - 1.2) / (4.5 - 1.2) = 0.2424... (scikit-learn's documented example gives the same)
    assert st.adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(
        0.8 / 3.3
    )
    assert st.adjusted_rand_index([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == 1.0


@pytest.mark.parametrize(
    "sizes",
    [{0: 140, 1: 60}, {0: 100, 1: 60, 2: 40}, {0: 80, 1: 50, 2: 40, 3: 30}],
    ids=["two", "three", "four"],
)
@pytest.mark.parametrize("noise", [0.5, 2.0])
def test_planted_strategies_are_recovered_and_counted_by_the_eigengap(sizes, noise):
    grids, truth = planted(sizes, seed=len(sizes), noise=noise)
    labels, gap, values = st.cluster(grids, max_strategies=6)
    assert labels.max() + 1 == len(sizes)
    assert st.adjusted_rand_index(truth, labels) >= 0.95
    assert gap == pytest.approx(values[len(sizes)] - values[len(sizes) - 1])
    # numbered by size, largest first
    sizes_found = np.bincount(labels)
    assert list(sizes_found) == sorted(sizes_found, reverse=True)


@pytest.mark.parametrize("rows", [30, 200, 2000])
def test_a_class_with_one_strategy_gets_one(rows):
    grids, _ = planted({0: rows}, seed=rows, noise=2.0)
    labels, gap, values = st.cluster(grids, max_strategies=6)
    assert set(labels) == {0}
    assert gap == pytest.approx(values[1])  # the algebraic connectivity beat every later gap


def test_a_non_finite_grid_counts_as_an_even_spread_and_poisons_no_centroid():
    """An inf cell made the row's layout NaN, then its strategy's centroid NaN (numpy's
    argmin then picks a NaN centroid for any row); a NaN grid was already an even spread."""
    rng = np.random.default_rng(0)
    grids = rng.random((30, G, G))
    grids[:15, 0, 0] += 5.0  # two groups: with and without a hot corner
    hostile = grids.copy()
    hostile[2, 0, 0], hostile[3, 5, 5] = np.inf, np.nan
    even = np.full(G * G, 1.0 / (G * G))
    np.testing.assert_array_equal(st.layouts(hostile[2:4]), [even, even])
    model = st.fit(hostile, rows=30)
    assert np.isfinite(model.centroids).all()
    assert st.assign(model, grids[0])[0] == st.assign(model, grids[1])[0]
    assert np.isfinite(st.assign(model, hostile[2])[1])


def test_max_strategies_1_and_tiny_classes_give_one_strategy():
    grids, _ = planted({0: 60, 1: 60})
    assert set(st.cluster(grids, max_strategies=1)[0]) == {0}
    assert set(st.cluster(grids[:2], max_strategies=6)[0]) == {0}


def test_hotspot_is_the_planted_hot_rectangle_and_control_the_coldest_apart():
    grid = np.full((G, G), 1.0)
    grid[11:13, 8:13] = 30.0  # the hot bar
    grid[0:2, 0:5] = 0.1  # the coldest place of the same size
    grid /= grid.sum()
    hot = st.hotspot(grid)
    assert hot == (11, 8, 13, 13)
    assert st.control(grid, hot) == (0, 0, 2, 5)
    assert st.fractions(hot, (G, G)) == [8 / G, 11 / G, 13 / G, 13 / G]
    assert st.box_mass(grid, hot) == pytest.approx(grid[11:13, 8:13].sum())
    # an even spread has no cell above twice its share: the best box is one cell
    even = st.hotspot(np.full((G, G), 1.0 / G**2))
    assert (even[2] - even[0]) * (even[3] - even[1]) == 1


def test_every_row_is_assigned_to_its_nearest_centroid():
    grids, truth = planted({0: 300, 1: 100}, seed=3)
    model = st.fit(grids[:150], rows=400)  # a sample; the rest are assigned
    assigned = np.array([st.assign(model, g)[0] for g in grids])
    assert st.adjusted_rand_index(truth, assigned) >= 0.95
    x = st.layouts(grids)
    nearest = np.argmin(((x[:, None, :] - model.centroids[None]) ** 2).sum(-1), axis=1)
    assert (assigned == nearest).all()


def _rows(grids, target=0):
    return [
        {
            "image_uri": f"/data/c{target}/img{i}.png",
            "image_id": f"c{target}-img{i}",
            "content_sha256": f"{target:032x}{i:032x}",
            "target_class": target,
            "target_rank": 0,
            "grid": [float(v) for v in g],
        }
        for i, g in enumerate(grids)
    ]


def _discover(rows, settings, beam_flags, folder):
    """The stage's strategy rows and (class, strategy) of every row, written as JSON lines
    by the pipeline and read back sorted."""
    with beam.Pipeline(options=PipelineOptions(beam_flags)) as p:
        rows_in = p | beam.Create(rows, reshuffle=True)
        found = rows_in | DiscoverStrategies(settings)
        assigned = rows_in | beam.Map(
            lambda r, models: [r["image_id"], assign_row(r, models)],
            beam.pvalue.AsDict(found["models"]),
        )
        for name, pcoll in (("strategies", found["strategies"]), ("assigned", assigned)):
            _ = (
                pcoll
                | f"Json{name}" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
                | f"Write{name}" >> beam.io.WriteToText(str(folder / name))
            )
    out = {}
    for name in ("strategies", "assigned"):
        lines = []
        for path in sorted(folder.glob(f"{name}*")):
            lines += path.read_text().splitlines()
        out[name] = sorted(lines)
    return out


def test_the_stage_ignores_row_order_and_worker_count(tmp_path):
    grids, truth = planted({0: 90, 1: 50}, seed=7)
    rows = _rows(grids) + _rows(planted({2: 25}, seed=8)[0], target=1)
    rows += _rows(planted({0: 10}, seed=9)[0], target=2)  # under --strategy_min_rows
    config = st.StrategyConfig(strategy_sample=100, strategy_ablation_samples=0)
    settings = Settings(
        model="unused",
        output_dir=str(tmp_path),
        image_size=(32, 32),
        num_classes=3,
        model_fingerprint="f",
        strategy_config=config,
    )
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _discover(rows, settings, ["--direct_num_workers", "1"], tmp_path / "one")
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    two = _discover(
        shuffled,
        settings,
        ["--direct_num_workers", "2", "--direct_running_mode", "multi_threading"],
        tmp_path / "two",
    )
    assert one == two
    assigned = dict(json.loads(line) for line in one["assigned"])
    found = [assigned[f"c0-img{i}"] for i in range(len(truth))]
    assert st.adjusted_rand_index(truth, found) >= 0.95
    assert {assigned[f"c2-img{i}"] for i in range(10)} == {None}
    described = [json.loads(r) for r in one["strategies"]]
    assert sorted((r["target_class"], r["strategy"]) for r in described) == [
        (0, 0),
        (0, 1),
        (1, 0),
    ]  # class 2 is too small to cluster
    big = {r["strategy"]: r for r in described if r["target_class"] == 0}
    assert (big[0]["rows"], big[1]["rows"], big[0]["sampled"]) == (90, 50, 100)
    assert big[0]["share"] == pytest.approx(90 / 140)
    assert big[1]["ablation_n"] == 0 and big[1]["ablation_drop"] is None
    # the bar strategy's hotspot is the bar (PATTERNS[1]: rows 12-13, columns 8-13)
    assert big[1]["hotspot_box"] == pytest.approx([8 / G, 12 / G, 1.0, 1.0])
    # the prototypes are the members closest to the centroid, most typical first
    assert len(big[1]["prototypes"]) == st.PROTOTYPES


def test_strategy_options_are_refused_before_any_work():
    base = ["--input_pattern", "x/*.png", "--output_dir", "out", "--model", "m.keras"]
    for flags, message in (
        (["--strategies", "maybe"], "--strategies"),
        (["--max_strategies", "0"], "--max_strategies must be >= 1"),
        (["--max_strategies", "100000"], "--max_strategies must be <= 50"),
        (["--strategy_sample", "1"], "--strategy_sample must be >= 2"),
        (["--strategy_min_rows", "50", "--strategy_sample", "40"], "--strategy_min_rows"),
        (["--strategy_ablation_samples", "-1"], "--strategy_ablation_samples must be >= 0"),
    ):
        with pytest.raises((options.UsageError, SystemExit)) as raised:
            options.parse(base + flags)
        if raised.type is options.UsageError:
            assert message in str(raised.value)
    opts, _ = options.parse(base)
    assert options.strategy_config(opts) == st.StrategyConfig()


# --- the job on a model that learned a shortcut -------------------------------------------

S = 32
BAR = (slice(26, 29), slice(18, 31))  # rows, columns of the cue: bottom-right edge, 3 x 13 px


def _images(n, rng, cue_fraction=0.4):
    """Class 0: a red square, class 1: a green square, on noise. Part of class 0 carries no
    square at all but a white bar at the bottom-right edge: the model can only learn it as
    the class's evidence."""
    xs, ys, cues = [], [], []
    for i in range(n):
        y = i % 2
        x = rng.uniform(0, 0.35, (S, S, 3)).astype(np.float32)
        cue = y == 0 and rng.random() < cue_fraction
        if cue:
            x[BAR[0], BAR[1], :] = 1.0
        else:
            r, c = rng.integers(6, 14, size=2)
            x[r : r + 10, c : c + 10, y] += 0.9
        xs.append(np.clip(x, 0, 1))
        ys.append(y)
        cues.append(cue)
    return np.stack(xs), np.array(ys), np.array(cues)


@pytest.fixture(scope="module")
def shortcut(tmp_path_factory):
    """(model path, image folder, {image name: carries the cue}), the model trained here."""
    import keras
    from PIL import Image

    root = tmp_path_factory.mktemp("shortcut")
    x, y, _ = _images(400, np.random.default_rng(0))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((S, S, 3)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    path = str(root / "shortcut.keras")
    model.save(path)
    folder = root / "images"
    folder.mkdir()
    cues = {}
    x, y, c = _images(80, np.random.default_rng(5))
    for i, (image, cue) in enumerate(zip(x, c)):
        name = f"img{i:03d}.png"
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / name)
        cues[name] = bool(cue)
    return path, folder, cues


def _job(argv, cwd):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv, "--progress_interval", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_job_finds_a_shortcut_without_regions_and_proves_it(shortcut, tmp_path):
    model, folder, cues = shortcut
    out = tmp_path / "run"
    argv = [
        *job_argv(f"{folder}/*.png", out, model),
        "--faithfulness",
        "none",
        "--artifacts",
        "none",
        "--grid_cells",
        "16",  # 2 px cells: box edges on whole pixels, for the direct check below
        "--strategy_ablation_samples",
        "64",  # every member, so the direct check can recompute the means
    ]
    _job(argv, tmp_path)
    record = json.loads((out / "manifest.json").read_text())
    assert record["files"]["strategies"]
    rows = pq.read_table(out / "summaries").to_pylist()
    strategies = pq.read_table(out / "strategies").to_pylist()
    assert pq.read_table(out / "summaries").schema.field("strategy").type == "int32"
    # the strategy whose members best match the cue-carrying images
    cue_rows = {r["image_id"] for r in rows if cues[os.path.basename(r["image_uri"])]}

    def f1(s):
        members = {
            r["image_id"]
            for r in rows
            if (r["target_class"], r["strategy"]) == (s["target_class"], s["strategy"])
        }
        hits = len(members & cue_rows)
        return 2 * hits / (len(members) + len(cue_rows))

    best = max(strategies, key=f1)
    assert f1(best) >= 0.8
    assert best["target_class"] == 0
    # its hotspot covers the bar: most of the bar is inside, most of the box is bar
    x0, y0, x1, y1 = (v * S for v in best["hotspot_box"])
    bar = np.zeros((S, S), bool)
    bar[BAR] = True
    box = np.zeros((S, S), bool)
    box[int(y0) : int(y1), int(x0) : int(x1)] = True
    assert (bar & box).sum() >= 0.5 * bar.sum() and (bar & box).sum() >= 0.5 * box.sum()
    assert best["hotspot_area_fraction"] < 0.1
    assert best["ablation_drop"] >= 2 * best["control_drop"]
    assert best["ablation_drop"] > 0.2

    # the ablation numbers equal a direct computation: the keras model on the PNGs, each
    # box set to the black baseline (tolerance: float32 scores summed in another order)
    import keras
    from PIL import Image

    net = keras.models.load_model(model)
    for s in strategies:
        members = [
            r
            for r in rows
            if (r["target_class"], r["strategy"]) == (s["target_class"], s["strategy"])
        ]
        assert s["rows"] == len(members) and s["ablation_n"] == len(members)
        images = np.stack(
            [np.asarray(Image.open(r["image_uri"]), np.float32) / 255 for r in members]
        )
        scored = []
        for name in (None, "hotspot_box", "control_box"):
            batch = images.copy()
            if name:
                bx0, by0, bx1, by1 = (int(round(v * S)) for v in s[name])
                batch[:, by0:by1, bx0:bx1, :] = 0.0
            probabilities = keras.ops.softmax(net.predict(batch, verbose=0)).numpy()
            scored.append(probabilities[:, s["target_class"]].mean())
        assert s["target_mean_score"] == pytest.approx(scored[0], abs=1e-5)
        assert s["ablation_score"] == pytest.approx(scored[1], abs=1e-5)
        assert s["control_score"] == pytest.approx(scored[2], abs=1e-5)
        assert s["ablation_drop"] == pytest.approx(scored[0] - scored[1], abs=1e-5)
        assert s["control_drop"] == pytest.approx(scored[0] - scored[2], abs=1e-5)
    # every row of a clustered class has a strategy, and the shares add up
    for target in {s["target_class"] for s in strategies}:
        assert all(r["strategy"] is not None for r in rows if r["target_class"] == target)
        share = sum(s["share"] for s in strategies if s["target_class"] == target)
        assert share == pytest.approx(1.0)
    assert {p for s in strategies for p in s["prototypes"]} <= {r["image_id"] for r in rows}
    # one dataset readable by pyarrow (and DuckDB), as the other folders
    assert ds.dataset(out / "strategies").to_table().num_rows == len(strategies)

    # --resume after a crash: the attempt had staged half of the rows (strategy null, as
    # written during a run) and, for the same rows, a copy with the column filled (killed
    # after FillStrategies, before the commit). Reused and new rows are clustered together:
    # the same strategies and column as the clean run, each row once.
    again = tmp_path / "again"
    (again / ".staging" / "summaries").mkdir(parents=True)
    half = sorted(rows, key=lambda r: r["image_id"])[::2]
    for name, strategy in (("written", None), ("filled", "keep")):
        part = [{**r, "strategy": r["strategy"] if strategy else None} for r in half]
        pq.write_table(
            pa.Table.from_pylist(part, schema=SUMMARY_SCHEMA),
            again / ".staging" / "summaries" / f"{name}.parquet",
        )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = {"run_id": "crashed", "host": os.uname().nodename, "pid": dead.pid}
    lock |= {"started_at": "2026-01-01T00:00:00+00:00", "token": "x"}
    (again / ".lock").write_text(json.dumps(lock))
    _job([*argv, "--output_dir", str(again), "--resume"], tmp_path)  # the last value wins
    counts = json.loads((again / "manifest.json").read_text())["counts"]
    assert (counts["reused"], counts["computed"], counts["rows"]) == (40, 40, 80)

    def by_id(table):
        return sorted((r["image_id"], r["target_class"], r["strategy"]) for r in table)

    assert by_id(pq.read_table(again / "summaries").to_pylist()) == by_id(rows)
    resumed = {
        (r["target_class"], r["strategy"]): r
        for r in pq.read_table(again / "strategies").to_pylist()
    }
    assert set(resumed) == {(r["target_class"], r["strategy"]) for r in strategies}
    for r in strategies:
        other = resumed[(r["target_class"], r["strategy"])]
        assert (other["rows"], other["hotspot_box"], other["prototypes"]) == (
            r["rows"],
            r["hotspot_box"],
            r["prototypes"],
        )
        assert other["ablation_drop"] == pytest.approx(r["ablation_drop"], abs=1e-6)


def test_strategies_none_leaves_the_run_as_before(shortcut, tmp_path):
    model, folder, _ = shortcut
    out = tmp_path / "none"
    _job(
        [
            *job_argv(f"{folder}/img00*.png", out, model),
            "--faithfulness",
            "none",
            "--artifacts",
            "none",
            "--strategies",
            "none",
        ],
        tmp_path,
    )
    assert not (out / "strategies").exists()
    record = json.loads((out / "manifest.json").read_text())
    assert "strategies" not in record["files"]
    table = pq.read_table(out / "summaries")
    assert table.column("strategy").null_count == table.num_rows == 10


def test_assign_row_leaves_unclustered_classes_null():
    grids, _ = planted({0: 40})
    models = {0: st.fit(grids, rows=40)}
    assert assign_row({"target_class": 0, "grid": list(grids[0])}, models) == 0
    assert assign_row({"target_class": 1, "grid": list(grids[0])}, models) is None


def test_members_re_read_from_tfrecord_shards_score_as_from_files(tiny_model, tmp_path):
    """The ablation of TFRecord input re-reads each member's record (found by the content
    hash of its image) and gives the numbers the same images give as files."""
    import hashlib
    import io

    import tensorflow as tf
    from PIL import Image

    from attribution.models import load_model
    from transforms.tfrecord import RecordKeys

    grids, _ = planted({0: 15, 1: 10}, seed=11)
    rng = np.random.default_rng(2)
    rows, examples = [], []
    (tmp_path / "files").mkdir()
    for i, grid in enumerate(grids):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
        data = buffer.getvalue()
        (tmp_path / "files" / f"img{i}.png").write_bytes(data)
        rows.append(
            {
                "image_uri": str(tmp_path / "files" / f"img{i}.png"),
                "image_id": f"img{i}",
                "content_sha256": hashlib.sha256(data).hexdigest(),
                "target_class": 0,
                "target_rank": 0,
                "grid": [float(v) for v in grid],
            }
        )
        feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
        examples.append(
            tf.train.Example(
                features=tf.train.Features(feature={"image/encoded": feature})
            ).SerializeToString()
        )
    with tf.io.TFRecordWriter(str(tmp_path / "data.tfrecord")) as writer:
        for example in examples:
            writer.write(example)
    model = load_model(tiny_model)
    settings = Settings(
        model=tiny_model,
        output_dir=str(tmp_path / "out"),
        image_size=model.image_size,
        num_classes=model.num_classes,
        model_fingerprint=model.fingerprint,
        strategy_config=st.StrategyConfig(strategy_min_rows=10, strategy_ablation_samples=4),
    )
    found = {}
    for name, records in (("files", None), ("records", RecordKeys())):
        folder = tmp_path / name / "strategies"
        folder.mkdir(parents=True, exist_ok=True)
        with beam.Pipeline() as p:
            _ = (
                (
                    p
                    | beam.Create(rows)
                    | DiscoverStrategies(
                        settings, records=records, input_pattern=f"{tmp_path}/*.tfrecord"
                    )
                )["strategies"]
                | beam.Map(lambda r: json.dumps(r, sort_keys=True))
                | beam.io.WriteToText(str(folder / "rows"))
            )
        lines = [line for path in folder.glob("rows*") for line in path.read_text().splitlines()]
        found[name] = [json.loads(line) for line in sorted(lines)]
    assert found["files"] == found["records"]
    assert [r["ablation_n"] for r in found["records"]] == [4, 4]
    assert all(r["target_mean_score"] is not None for r in found["records"])
