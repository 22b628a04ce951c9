"""The strategy stage (``--strategies auto``): per class, cluster the rows' attribution layouts
(``attribution/strategies.py``), assign every row, find where each strategy looks and test it
by ablation on the model.

```
rows --(class, sample key, grid)--> Top.PerKey (the k smallest seeded hashes: a bounded,
      order- and worker-independent sample) + Count.PerKey
   --> fit per class (ClassModel) ............................. side input "models"
rows --assign (nearest centroid)--> ((class, strategy), member)
   --> mean layout (CombinePerKey), prototypes (Top.PerKey by distance), members to ablate
       (Top.PerKey by a second seeded hash) re-read from their files or records
   --> one `strategies` row per (class, strategy), hotspot and control boxes ablated
       in packed forward calls, the model loaded once per worker process
summaries parts --FillStrategies (models)--> the same parts, column `strategy` filled
```

Memory does not grow with the number of rows: the sample is at most ``--strategy_sample``
layouts a class, the models are a few centroids a class, every other step is a streaming map
or a bounded combine, and the summaries are filled one staged part at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from attribution import faithfulness
from attribution import strategies as st
from attribution.baselines import make_baseline, seed_for
from attribution.images import decode_image, model_input
from transforms.files import publish_table
from transforms.layout import SUMMARIES, join, parts_dir
from transforms.read import read_input
from transforms.records import NAMESPACE
from transforms.settings import Settings
from transforms.write import SUMMARY_SCHEMA

STRATEGY_SCHEMA = pa.schema(
    [
        ("target_class", pa.int32()),
        ("target_label", pa.string()),
        ("strategy", pa.int32()),
        ("strategies", pa.int32()),  # strategies of the class
        ("rows", pa.int64()),
        ("class_rows", pa.int64()),
        ("share", pa.float64()),
        ("sampled", pa.int64()),  # rows of the class that were clustered
        ("eigengap", pa.float64()),
        ("grid_cells", pa.int32()),
        ("mean_grid", pa.list_(pa.float32())),
        ("hotspot_box", pa.list_(pa.float64())),  # x0, y0, x1, y1 fractions of the input
        ("hotspot_area_fraction", pa.float64()),
        ("hotspot_mass_fraction", pa.float64()),
        ("control_box", pa.list_(pa.float64())),
        ("control_mass_fraction", pa.float64()),
        ("ablation_n", pa.int32()),
        ("target_mean_score", pa.float64()),
        ("ablation_score", pa.float64()),
        ("control_score", pa.float64()),
        ("ablation_drop", pa.float64()),
        ("control_drop", pa.float64()),
        ("prototypes", pa.list_(pa.string())),
        ("prototype_uris", pa.list_(pa.string())),
    ]
)


ABLATION_COLUMNS = (
    "target_mean_score",
    "ablation_score",
    "control_score",
    "ablation_drop",
    "control_drop",
)


@dataclasses.dataclass(frozen=True)
class Member:
    """A row assigned to a strategy: what the ablation and the prototypes need of it."""

    image_uri: str
    image_id: str
    content_sha256: str
    target_class: int
    distance: float


def sample_key(row: dict, seed: int) -> tuple:
    """The seeded hash a row is sampled by (ties: its id and rank): the same rows are chosen
    whatever their order or the workers."""
    key = f"strategy:{row['content_sha256']}:{row['target_class']}"
    return seed_for(key, seed), row["image_id"], row["target_rank"]


def ablation_key(member: Member, seed: int) -> tuple:
    return seed_for(f"strategy-ablation:{member.content_sha256}", seed), member.image_id


def fit_class(element, settings: Settings):
    """(class, {"sample": [[(key, grid)]], "count": [n]}) -> (class, ClassModel) when the
    class has at least --strategy_min_rows rows."""
    target, groups = element
    rows = sum(groups["count"])
    config = settings.strategy_config
    if rows < config.strategy_min_rows:
        return
    sample = sorted(item for batch in groups["sample"] for item in batch)
    grids = np.array([grid for _, grid in sample], np.float64)
    yield target, st.fit(grids, rows, config.max_strategies, settings.seed)


def assign_row(row: dict, models: dict) -> int | None:
    model = models.get(row["target_class"])
    if model is None or row.get("grid") is None:
        return None
    return st.assign(model, row["grid"])[0]


def member_of(row: dict, models: dict):
    """A summary row -> ((class, strategy), (Member, unit layout)), nothing when unclustered."""
    model = models.get(row["target_class"])
    if model is None or row.get("grid") is None:
        return
    strategy, distance = st.assign(model, row["grid"])
    member = Member(
        row["image_uri"], row["image_id"], row["content_sha256"], row["target_class"], distance
    )
    yield (row["target_class"], strategy), (member, st.layouts([row["grid"]])[0])


FIXED_POINT = 2.0**32  # layouts are summed as integers: the same sum in any order


class MeanLayoutFn(beam.CombineFn):
    """unit layouts -> (their sum in units of 2^-32, as int64, and their count): integer
    sums, so the mean does not depend on how the runner split and merged the rows (float
    sums differed in the last bit between 1 and 2 workers)."""

    def create_accumulator(self):
        return None, 0

    def add_input(self, acc, layout):
        total, n = acc
        fixed = np.rint(np.asarray(layout, np.float64) * FIXED_POINT).astype(np.int64)
        return (fixed if total is None else total + fixed), n + 1

    def merge_accumulators(self, accs):
        total, n = None, 0
        for t, k in accs:
            if t is not None:
                total = t.copy() if total is None else total + t
            n += k
        return total, n

    def extract_output(self, acc):
        return acc


def reread_file(member: Member, settings: Settings):
    """(Member, model-input image) re-read from its file, or None when it cannot be read or
    its bytes changed since it was attributed (a different image is never ablated)."""
    try:
        data = read_input(member.image_uri, settings.max_file_bytes)
        if hashlib.sha256(data).hexdigest() != member.content_sha256:
            return member, None
        pixels = decode_image(data, max_pixels=settings.max_pixels)
        return member, model_input(pixels, settings.image_size, settings.channels)
    except Exception:  # noqa: BLE001 - evidence is best effort: the row is in summaries
        logging.warning("strategies: cannot re-read %s for ablation", member.image_uri)
        return member, None


def records_wanted(shard: str, wanted: list[str], keys):
    """(content sha256, DecodedImage-ready Record) of a shard's records whose image bytes
    hash to one of ``wanted`` (the members to ablate): each shard is read once, only the
    wanted records are kept."""
    from transforms.tfrecord import read_shard

    want = set(wanted)
    for _, record in read_shard(shard, keys):
        if getattr(record, "data", None) is None:
            continue  # a corrupt frame or a record without image: already an errors row
        sha = hashlib.sha256(record.data).hexdigest()
        if sha in want:
            yield sha, record


def reread_record(element, settings: Settings):
    """(sha, {"member": [(key, Member)], "record": [Record]}) -> ((class, strategy),
    (Member, model-input image or None)) for each member of that content."""
    from transforms.tfrecord import decode_record

    _, groups = element
    image = None
    for record in groups["record"][:1]:
        try:
            image = decode_record(
                record, settings.image_size, settings.max_pixels, settings.channels
            ).image
        except Exception:  # noqa: BLE001 - evidence is best effort: the row is in summaries
            logging.warning("strategies: cannot decode record %s for ablation", record.uri)
    for key, member in groups["member"]:
        yield key, (member, image)


def ablation_scores(engine, images, baselines, targets, boxes) -> np.ndarray:
    """[N, 3] target scores of each image as is, with the hotspot box, and with the control
    box set to its baseline (boxes in model pixels; pixels straddling an edge by the share of
    their area inside), packed into the engine's calls by ``faithfulness.evaluate``."""
    hotspot, control = boxes
    items = [
        faithfulness.Item(
            image=image,
            baseline=baseline,
            attributions=None,
            target=int(target),
            target_score=0.0,
            baseline_score=0.0,
            key="",
            # an empty box scores the image as re-read, in the same packed calls
            boxes=(("image", (0, 0, 0, 0)), ("hotspot", hotspot), ("control", control)),
        )
        for image, baseline, target in zip(images, baselines, targets)
    ]
    evidence = faithfulness.evaluate(engine, items, kinds=())
    return np.array([[a["ablation_score"] for a in e.ablations] for e in evidence], np.float64)


class StrategyRowFn(beam.DoFn):
    """((class, strategy), {"mean": [(sum, n)], "prototypes": [[Member]], "ablate":
    [(Member, image)]}) -> one `strategies` row. The model is loaded at the first strategy
    with members to ablate, once per worker process (shared with the attribution step)."""

    def __init__(self, settings: Settings, shared_handle: shared.Shared):
        self.settings, self.shared_handle = settings, shared_handle
        self.ablated = Metrics.counter(NAMESPACE, "strategy_ablated_rows")
        self.model_loads = Metrics.counter(NAMESPACE, "model_loads")

    def setup(self):
        self.model = None

    def _engine(self):
        if self.model is None:
            from transforms.attribute import _ProcessModel
            from transforms.files import mark_model_load

            loads = []

            def load():
                loads.append(1)
                return _ProcessModel(self.settings)

            self.model = self.shared_handle.acquire(load, tag=self.settings.model_fingerprint)
            self.model_loads.inc(len(loads))
            if loads:
                mark_model_load(self.settings.output_dir)
        return self.model.engine

    def process(self, element, models):
        (target, strategy), groups = element
        s = self.settings
        model = models[target]
        total, rows = groups["mean"][0]
        cells = (s.grid_cells, s.grid_cells)
        mean = (total / FIXED_POINT / rows).reshape(cells)
        hot = st.hotspot(mean)
        cold = st.control(mean, hot)
        hot_box, cold_box = st.fractions(hot, cells), st.fractions(cold, cells)
        prototypes = sorted(
            (m for batch in groups["prototypes"] for m in batch),
            key=lambda m: (m.distance, m.image_id),
        )
        row = {
            "target_class": target,
            "target_label": s.label(target),
            "strategy": strategy,
            "strategies": model.count,
            "rows": rows,
            "class_rows": model.rows,
            "share": rows / model.rows,
            "sampled": model.sampled,
            "eigengap": model.eigengap,
            "grid_cells": s.grid_cells,
            "mean_grid": mean.ravel().astype(np.float32).tolist(),
            "hotspot_box": hot_box,
            "hotspot_area_fraction": (hot[2] - hot[0]) * (hot[3] - hot[1]) / mean.size,
            "hotspot_mass_fraction": st.box_mass(mean, hot),
            "control_box": cold_box,
            "control_mass_fraction": st.box_mass(mean, cold),
            "prototypes": [m.image_id for m in prototypes],
            "prototype_uris": [m.image_uri for m in prototypes],
        }
        ready = sorted(
            ((m, image) for m, image in groups["ablate"] if image is not None),
            key=lambda pair: ablation_key(pair[0], s.seed),
        )
        row.update(self._ablate(ready, target, hot_box, cold_box))
        yield row

    def _ablate(self, ready, target, hot_box, cold_box) -> dict:
        if not ready:  # null evidence: nothing could be (or was asked to be) ablated
            return dict.fromkeys(ABLATION_COLUMNS, None) | {"ablation_n": 0}
        s = self.settings
        first = s.method_config.baselines[0]
        images = [image for _, image in ready]
        baselines = [
            make_baseline(first, image, key=m.content_sha256, seed=s.seed) for m, image in ready
        ]
        size = images[0].shape[:2]
        boxes = (st.to_pixels(hot_box, size), st.to_pixels(cold_box, size))
        scores = ablation_scores(self._engine(), images, baselines, [target] * len(ready), boxes)
        self.ablated.inc(len(ready))
        original, ablated, controlled = scores.mean(0)
        return {
            "ablation_n": len(ready),
            "target_mean_score": float(original),
            "ablation_score": float(ablated),
            "control_score": float(controlled),
            "ablation_drop": float(original - ablated),
            "control_drop": float(original - controlled),
        }


class DiscoverStrategies(beam.PTransform):
    """summary rows -> {"models": (class, ClassModel), "strategies": strategy rows}.

    ``shared_handle``: the attribution step's, so a worker loads the model once for both."""

    def __init__(
        self,
        settings: Settings,
        shared_handle: shared.Shared | None = None,
        records=None,
        input_pattern: str | None = None,
    ):
        """``records`` (a tfrecord.RecordKeys) with ``input_pattern``: TFRecord input, whose
        members are re-read from the shards (matched by the content hash of their image)."""
        super().__init__()
        self.settings = settings
        self.shared_handle = shared_handle or shared.Shared()
        self.records, self.input_pattern = records, input_pattern

    def expand(self, rows):
        s = self.settings
        config = s.strategy_config
        seed = s.seed
        keyed = rows | "Layouts" >> beam.FlatMap(
            lambda r: (
                [(r["target_class"], (sample_key(r, seed), r["grid"]))]
                if r.get("grid") is not None
                else []
            )
        )
        sample = keyed | "Sample" >> beam.combiners.Top.PerKey(
            config.strategy_sample, key=lambda item: item[0], reverse=True
        )
        counts = keyed | "Count" >> beam.combiners.Count.PerKey()
        models = (
            {"sample": sample, "count": counts}
            | "ByClass" >> beam.CoGroupByKey()
            | "Fit" >> beam.FlatMap(fit_class, s)
        )
        models_side = beam.pvalue.AsDict(models)
        assigned = rows | "Assign" >> beam.FlatMap(member_of, models_side)
        mean = (
            assigned
            | "LayoutOnly" >> beam.Map(lambda kv: (kv[0], kv[1][1]))
            | "MeanLayout" >> beam.CombinePerKey(MeanLayoutFn())
        )
        members = assigned | "MemberOnly" >> beam.Map(lambda kv: (kv[0], kv[1][0]))
        prototypes = members | "Prototypes" >> beam.combiners.Top.PerKey(
            st.PROTOTYPES, key=lambda m: (m.distance, m.image_id), reverse=True
        )
        if config.strategy_ablation_samples:
            chosen = (
                members
                | "ToAblate"
                >> beam.combiners.Top.PerKey(
                    config.strategy_ablation_samples,
                    key=lambda m: ablation_key(m, seed),
                    reverse=True,
                )
                | "EachMember" >> beam.FlatMap(lambda kv: [(kv[0], m) for m in kv[1]])
            )
            chosen = (
                self._reread_records(chosen)
                if self.records is not None
                else chosen | "Reread" >> beam.Map(lambda kv: (kv[0], reread_file(kv[1], s)))
            )
        else:  # --strategy_ablation_samples 0: no evidence, no model
            chosen = rows.pipeline | "NoAblation" >> beam.Create([])
        strategy_rows = (
            {
                "mean": mean,
                "prototypes": prototypes,
                "ablate": chosen,
            }
            | "ByStrategy" >> beam.CoGroupByKey()
            | "Describe" >> beam.ParDo(StrategyRowFn(s, self.shared_handle), models_side)
        )
        return {"models": models, "strategies": strategy_rows}

    def _reread_records(self, chosen):
        return _reread_records_in(self, chosen)


def _reread_records_in(transform, chosen):
    """((class, strategy), Member) -> ((class, strategy), (Member, image or None)), the
    images read again from the TFRecord shards."""
    from transforms.tfrecord import shard_paths

    s, keys = transform.settings, transform.records
    wanted = chosen | "WantedHashes" >> beam.Map(lambda kv: kv[1].content_sha256)
    found = shard_paths(chosen.pipeline, transform.input_pattern) | "FindRecords" >> beam.FlatMap(
        records_wanted, beam.pvalue.AsList(wanted), keys
    )
    by_sha = chosen | "KeyBySha" >> beam.Map(lambda kv: (kv[1].content_sha256, kv))
    return (
        {"member": by_sha, "record": found}
        | "JoinRecords" >> beam.CoGroupByKey()
        | "DecodeRecords" >> beam.FlatMap(reread_record, s)
    )


class FillStrategiesFn(beam.DoFn):
    """A published summaries part record -> the record of a new part holding the same rows
    with ``strategy`` filled from the class models (a part without a row of a clustered class
    is passed on as it is). The new part is published under a new
    name in the same staging folder; the old one stays there until the commit deletes the
    staging folder (a retried bundle publishes another copy nobody commits)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, part, models):
        if part["folder"] != SUMMARIES:
            yield part
            return
        folder = parts_dir(self.output_dir, SUMMARIES)
        path = join(folder, part["name"])
        with FileSystems.open(path, compression_type="uncompressed") as f:
            classes = pq.read_table(f, columns=["target_class"]).column("target_class")
        if not set(classes.to_pylist()) & set(models):
            yield part  # no row of a clustered class: the part is right as it is
            return
        with FileSystems.open(path, compression_type="uncompressed") as f:
            rows = pq.read_table(f).to_pylist()
        for row in rows:
            row["strategy"] = assign_row(row, models)
        name = f"{uuid.uuid4().hex}.parquet"
        publish_table(join(folder, name), pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA))
        yield {**part, "name": name}


class FillStrategies(beam.PTransform):
    """part records -> part records, summaries parts rewritten with ``strategy`` filled."""

    def __init__(self, output_dir: str, models):
        super().__init__()
        self.output_dir, self.models = output_dir, models

    def expand(self, parts):
        return parts | "Fill" >> beam.ParDo(
            FillStrategiesFn(self.output_dir), beam.pvalue.AsDict(self.models)
        )
