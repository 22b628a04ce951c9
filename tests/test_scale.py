"""make scale's parts (the run itself is not part of the tests): the generator writes readable
shards, and the results table computes the launcher-memory verdict from the numbers."""

from benchmarks import scale, scale_data
from transforms.tfrecord import Record, RecordKeys, read_shard


def test_generator_writes_shards_our_reader_reads(tmp_path):
    paths = scale_data.write_shards(str(tmp_path), 5, per_shard=2)
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "data-00000-of-00003.tfrecord",
        "data-00001-of-00003.tfrecord",
        "data-00002-of-00003.tfrecord",
    ]
    keys = RecordKeys(label_key="image/class/label")
    records = [r for p in paths for _, r in read_shard(p, keys)]
    assert len(records) == 5 and all(isinstance(r, Record) for r in records)
    assert all(r.data.startswith(b"\x89PNG") and r.true_class in range(3) for r in records)
    assert len({r.data for r in records}) == 5


def test_results_table_verdict():
    row = {
        "attributed": 1,
        "failed": 0,
        "complete": True,
        "wall_s": 1.0,
        "images_per_s": 1.0,
        "model_loads": 1,
        "load_average": [1.0, 1.0, 1.0],
    }
    ok = scale.markdown(
        [
            {**row, "images": 10_000, "launcher_peak_mb": 800.0},
            {**row, "images": 100_000, "launcher_peak_mb": 949.0},
        ]
    )
    assert "149.0 MB (limit 150 MB): **PASS**" in ok
    bad = scale.markdown(
        [
            {**row, "images": 10_000, "launcher_peak_mb": 800.0},
            {**row, "images": 100_000, "launcher_peak_mb": 951.0},
        ]
    )
    assert "**FAIL**" in bad
