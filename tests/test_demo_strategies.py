"""The demo's check of the strategy found without boxes: precision and recall of a strategy's
members against the stamped images of a generated held-out folder (its truth.csv)."""

import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo import CUE_CLASS, generate
from demo.strategies import stamp_recovery


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    folder = generate(tmp_path_factory.mktemp("heldout"), split="heldout", count=40, seed=3)
    with open(folder / "truth.csv", newline="") as f:
        truth = {r["image"]: r["has_cue"] == "true" for r in csv.DictReader(f)}
    return folder, truth


def test_precision_and_recall_of_the_members_against_the_stamp(heldout, tmp_path):
    folder, truth = heldout
    names = sorted(truth)
    predicted_cue = names[:24]  # the rows the run labels `cross`; the rest another class
    stamped = [n for n in predicted_cue if truth[n]]
    clean = [n for n in predicted_cue if not truth[n]]
    assert len(stamped) >= 4 and len(clean) >= 4  # the seed gives both kinds
    # strategy 1 holds all stamped rows but one, and two clean rows
    members = set(stamped[1:]) | set(clean[:2])
    rows = []
    for name in names:
        uri = str(folder / "images" / name)
        cue = name in predicted_cue
        rows.append(
            {
                "image_uri": uri,
                "target_label": CUE_CLASS if cue else "circle",
                "target_rank": 0,
                "strategy": (1 if name in members else 0) if cue else None,
            }
        )
        # a second target of the same image is not a prediction: never counted
        rows.append({"image_uri": uri, "target_label": CUE_CLASS, "target_rank": 1, "strategy": 1})
    schema = pa.schema(
        [
            ("image_uri", pa.string()),
            ("target_label", pa.string()),
            ("target_rank", pa.int32()),
            ("strategy", pa.int32()),
        ]
    )
    (tmp_path / "run" / "summaries").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=schema), tmp_path / "run" / "summaries" / "p.parquet"
    )
    r = stamp_recovery(str(tmp_path / "run"), folder / "truth.csv", CUE_CLASS, 1)
    hits = len(stamped) - 1
    assert (r.members, r.stamped_members) == (hits + 2, hits)
    assert (r.stamped_in_class, r.class_rows) == (len(stamped), 24)
    assert r.precision == pytest.approx(hits / (hits + 2))
    assert r.recall == pytest.approx(hits / len(stamped))
    assert r.stamped_images == sum(truth.values())
    assert f"precision {hits / (hits + 2):.0%} ({hits} of its {hits + 2} members" in r.sentence()
    empty = stamp_recovery(str(tmp_path / "run"), folder / "truth.csv", CUE_CLASS, 7)
    assert empty.members == 0 and empty.precision is None and "precision n/a" in empty.sentence()
