"""Regions reach Summarize as a keyed join in the graph: the job graph does not grow with the
number of boxes, and the rows are the ones the in-memory lookup (load_regions) gives."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from job_argv import DATAFLOW_DRY_RUN, job_argv

from attribution import masks
from attribution.images import pad_geometry
from pipeline import run as job
from transforms.regions import check_regions, load_regions, region_key, region_rows

FAST = ["--steps", "4", "--tolerance", "0", "--progress_interval", "0", "--no_report"]


def read(out, folder):
    return pq.read_table(os.path.join(out, folder)).to_pylist()


def test_rows_stream_in_file_order_with_their_index(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(
        "image,region,x0,y0,x1,y1\na.png,left,0,0,5,5\n/abs/b.png,x,1,1,2,2\na.png,right,5,0,9,5\n"
    )
    rows = list(region_rows(str(path), f"{tmp_path}/img/*.png", batch_rows=1))
    assert rows == [
        (region_key(f"{tmp_path}/img/a.png"), (1, "left", (0.0, 0.0, 5.0, 5.0))),
        ("/abs/b.png", (2, "x", (1.0, 1.0, 2.0, 2.0))),
        (region_key(f"{tmp_path}/img/a.png"), (3, "right", (5.0, 0.0, 9.0, 5.0))),
    ]
    assert check_regions(str(path), f"{tmp_path}/img/*.png") == 3


def test_regions_joined_in_the_graph_give_the_rows_of_the_in_memory_lookup(
    tiny_model, mixed_folder, tmp_path
):
    folder, names, bad = mixed_folder
    regions = tmp_path / "regions.csv"
    # relative and absolute names, several boxes per image in a chosen order, a box on a
    # broken file and one on a file that is not matched: all as the old dict lookup did
    regions.write_text(
        "image,region,x0,y0,x1,y1\nrgb.png,right,16,0,32,24\n"
        f"{folder}/photo.jpg,all,0,0,32,24\nrgb.png,left,0,0,16,24\n"
        "truncated.jpg,x,0,0,4,4\nnot-there.png,y,0,0,4,4\n"
        "rgb.png,centre,8,6,24,18\n"
    )
    out, plain = tmp_path / "out", tmp_path / "plain"
    common = ["--input_pattern", f"{folder}/*", "--model", tiny_model, "--write_raw", *FAST]
    assert job.main([*common, "--output_dir", str(out), "--regions", str(regions)]) == 0
    assert job.main([*common, "--output_dir", str(plain)]) == 0
    lookup = load_regions(str(regions), f"{folder}/*")
    rows, before = read(out, "summaries"), {r["image_uri"]: r for r in read(plain, "summaries")}
    assert len(rows) == len(names - bad) and len(read(out, "errors")) == len(bad)
    with_regions = 0
    for row in rows:
        boxes = lookup.get(region_key(row["image_uri"]))
        if boxes is None:
            assert row["regions"] is None
        else:
            with_regions += 1
            raw = np.load(row["raw_uri"])
            geometry = pad_geometry((row["height"], row["width"]), raw.shape[:2])
            expected = masks.region_masses(
                raw, [(name, geometry.box_to_model(box)) for name, box in boxes]
            )
            masses = [{k: r[k] for k in e} for r, e in zip(row["regions"], expected)]
            assert masses == expected  # same values, in file order
            assert all(r["ablation_score"] is not None for r in row["regions"])
        other = before[row["image_uri"]]
        for column in ("target_class", "attribution_sum", "completeness_error", "grid"):
            assert row[column] == other[column], column
    assert with_regions == 2
    names_rgb = [
        r["name"] for r in next(x for x in rows if x["image_uri"].endswith("/rgb.png"))["regions"]
    ]
    assert names_rgb == ["right", "left", "centre"]


def test_a_million_boxes_do_not_travel_in_the_job_graph(tiny_model, mixed_folder, tmp_path):
    folder, _, _ = mixed_folder
    n = 1_000_000
    rng = np.random.default_rng(0)
    x0 = rng.integers(0, 16, n).astype(np.float64)
    table = pa.table(
        {
            "image": [f"image-{i % 50_000}.png" for i in range(n)],
            "region": ["object"] * n,
            "x0": x0,
            "y0": x0,
            "x1": x0 + 8,
            "y1": x0 + 8,
        }
    )
    path = tmp_path / "boxes.parquet"
    pq.write_table(table, path)
    assert os.path.getsize(path) > 1_000_000
    argv = [
        *job_argv(f"{folder}/*", "gs://no-such-bucket/ig/out", tiny_model),
        *DATAFLOW_DRY_RUN,
    ]
    result = job.run([*argv, "--regions", str(path)])
    size = len(result.beam_result.job.proto_pipeline.SerializeToString())
    proto = result.beam_result.job.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    # joined before the model (each box is ablated)
    assert "ReadRegions" in names and "Attribute/JoinRegions" in names
    assert size < 1_000_000, size
    without = len(job.run(argv).beam_result.job.proto_pipeline.SerializeToString())
    assert size - without < 50_000  # the join's few steps, not the boxes
