"""The demo's second audit, with no boxes given: does the strategy the job finds for the cue
class hold the stamped images?

``stamp_recovery`` compares a strategy's members (the summaries rows of that class carrying
that ``strategy`` number) with the dataset's ground truth (``truth.csv``, written by
``dataset.generate``: which held-out images carry the stamp): precision = stamped members /
members; recall = stamped members / stamped rows of the class (a strategy can only hold rows
of its class); ``stamped_images`` counts every stamped image of the data set, whatever its
predicted class, for scale.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import pyarrow.compute as pc

from transforms.files import read_parquet
from transforms.layout import SUMMARIES

COLUMNS = ["image_uri", "target_label", "target_rank", "strategy"]


@dataclass(frozen=True)
class Recovery:
    label: str
    strategy: int
    members: int  # rows of the class in the strategy
    stamped_members: int
    stamped_in_class: int  # rows of the class whose image carries the stamp
    class_rows: int
    stamped_images: int  # stamped images in the data set

    @property
    def precision(self) -> float | None:
        return self.stamped_members / self.members if self.members else None

    @property
    def recall(self) -> float | None:
        return self.stamped_members / self.stamped_in_class if self.stamped_in_class else None

    def sentence(self) -> str:
        def share(value):
            return "n/a" if value is None else f"{value:.0%}"

        return (
            f"strategy {self.strategy} of `{self.label}` against the ground truth: precision "
            f"{share(self.precision)} ({self.stamped_members} of its {self.members} members carry "
            f"the stamp), recall {share(self.recall)} (of the {self.stamped_in_class} stamped "
            f"images among the {self.class_rows} predicted `{self.label}`; "
            f"{self.stamped_images} held-out images carry it in all)"
        )


def stamped(truth_csv) -> dict[str, bool]:
    """{image file name: carries the stamp} from ``truth.csv``."""
    with open(truth_csv, newline="") as f:
        return {row["image"]: row["has_cue"] == "true" for row in csv.DictReader(f)}


def stamp_recovery(output_dir: str, truth_csv, label: str, strategy: int) -> Recovery:
    """Precision and recall of ``strategy``'s members of class ``label`` in the run at
    ``output_dir`` against the stamped images listed in ``truth_csv`` (each image's first
    target row; rows are matched to the truth by file name)."""
    truth = stamped(truth_csv)
    table = read_parquet(output_dir, SUMMARIES, COLUMNS)
    table = table.filter(
        pc.and_(pc.equal(table["target_label"], label), pc.equal(table["target_rank"], 0))
    )
    names = [uri.rsplit("/", 1)[-1] for uri in table["image_uri"].to_pylist()]
    numbers = table["strategy"].to_pylist()
    cue = [truth.get(name, False) for name in names]
    member = [n == strategy for n in numbers]
    return Recovery(
        label=label,
        strategy=strategy,
        members=sum(member),
        stamped_members=sum(m and c for m, c in zip(member, cue)),
        stamped_in_class=sum(cue),
        class_rows=len(names),
        stamped_images=sum(truth.values()),
    )
