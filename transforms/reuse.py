"""Incremental runs (``--reuse_from DIR``): copy forward what a previous run already computed.

An image is identified by the sha256 of its bytes, not by its uri. ``ReadInputs``
(transforms/inputs.py) hashes every listed input (a file read, or a record's image bytes,
not decoded); ``Reuse``, the filter between hashing and decoding, joins the hashes with the
previous run's summary rows whose model fingerprint and settings hash equal this run's, and
splits:

- **reuse**: the previous rows of an identical image are copied forward with this run's
  uri, id and file names (a renamed file is reused under its new id), labels re-applied,
  region masses recomputed from the previous raw attributions, masks / overlays / raw files
  copied (read + publish, so readers never see half a file);
- **compute**: new or changed images, images the previous run failed on (errors are never
  reused), and images whose previous files are gone are read again, decoded and attributed.

Reuse verifies what it reuses: the launcher checks the previous summaries against the sizes
and sha256 its manifest lists (``check_digests``); every previous row's arithmetic is
re-checked (``recheck``; a failing row's image is computed, counted in the manifest's
``counts.reverified_failed``); previous masks, overlays and raw files are read only from the
previous run folder's own ``masks/``, ``overlays/``, ``raw/`` (``read_run_file``).

The model is loaded in a worker only when the first image needs computing, so a rerun where
nothing changed never loads it (``metrics.model_loads == 0``).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import replace
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from attribution import masks
from attribution.images import pad_geometry
from transforms.files import (
    RunFolderError,
    parquet_parts,
    parquet_schema,
    publish,
    read_manifest,
    read_run_file,
    verify_parts,
)
from transforms.layout import ARTIFACT_COLUMNS
from transforms.progress import CountsProgress
from transforms.records import NAMESPACE, ImageRef
from transforms.regions import join_boxes, region_key
from transforms.settings import Settings
from transforms.summarize import artifact_name
from transforms.write import SUMMARY_SCHEMA

COMPUTE = "compute"
REVERIFIED_FAILED = "reverified_failed"  # pipeline/commit.py counts these records
PREVIOUS, CURRENT = "previous", "current"
# Rewritten for the new run's location; every other column of a reused row is copied as is
# (labels re-applied from this run's --labels, regions recomputed).
LOCATION_COLUMNS = ("image_uri", "image_id", "mask_uri", "overlay_uri", "raw_uri")
COLUMN_OF = ARTIFACT_COLUMNS
FOLDER_OF = {column: folder for folder, column in COLUMN_OF.items()}


class PreviousRunError(ValueError):
    """--reuse_from does not name a finished run."""


def previous_run(folder: str) -> dict:
    """The previous run's manifest, read in the launcher. A run launched from a template has
    none (its launcher does not wait for the job): its published summaries are enough, since
    Beam's Parquet sink publishes them only once the write finished."""
    try:
        record = read_manifest(folder)
    except RunFolderError as e:
        if has_summaries(folder):
            logging.warning(
                "--reuse_from %s has no readable manifest.json (%s): reusing its "
                "summaries without it",
                folder,
                e,
            )
            check_summaries(folder)
            return {}
        raise PreviousRunError(
            f"--reuse_from {folder}: {e}; nor has it summaries/*.parquet"
        ) from None
    if "finished_at" not in record:
        raise PreviousRunError(f"--reuse_from {folder}: its manifest.json is not a run manifest")
    check_digests(folder, record, "--reuse_from")
    check_summaries(folder)
    return record


def check_digests(folder: str, record: dict, option: str) -> None:
    """The summaries parts match the sizes and sha256 the manifest lists, or PreviousRunError
    naming the file. A manifest of an older run lists plain names: accepted, said once (every
    reused row's arithmetic is re-checked anyway, see ``reverify``)."""
    try:
        verified = verify_parts(folder, record)
    except RunFolderError as e:
        raise PreviousRunError(f"{option} {folder}: {e}") from None
    if not verified:
        logging.warning(
            "%s %s: its manifest.json lists parts without size and sha256 (an older run): "
            "the parts were not verifiable; every reused row is re-checked",
            option,
            folder,
        )


def check_summaries(folder: str) -> None:
    """Every summaries file of a previous run has a readable Parquet footer, or
    PreviousRunError: a corrupt file is refused in the launcher, not half way through a job."""
    for path in parquet_parts(folder, "summaries"):
        try:
            parquet_schema(path)
        except RunFolderError as e:
            raise PreviousRunError(
                f"--reuse_from {folder}: {e} (or drop --reuse_from to compute everything)"
            ) from None


def has_summaries(folder: str) -> bool:
    return bool(parquet_parts(folder, "summaries"))


# Summary columns added after rows were first written, with the value an older row gets: its
# strategy is assigned again by this run's strategy stage; the forward rows it used were not
# counted then.
LATER_COLUMNS = {"strategy": None, "forward_evaluations": None}


# The cells the split reads from a previous row (to group, order and size its rows): a row
# with any of them null or of another type (a damaged or forged part) is not reused.
KEY_CELLS = {
    "image_uri": str,
    "target_rank": int,
    "target_class": int,
    "predicted_class": int,
    "width": int,
    "height": int,
}


def key_reusable(row: dict, model_fingerprint: str, settings_hash: str):
    """Previous rows made by this model with these settings, keyed by content hash. Rows of
    an older schema (a column missing) are not reused: they could not be copied as they are;
    nor are rows missing a ``KEY_CELLS`` value (their image is computed again).
    Rows from before the methods' columns were added are plain IG rows and are completed."""
    if row.get("settings_hash") == settings_hash and "attribution" not in row:
        row = {**row, "attribution": "ig", "xrai_region_ranks": None}
    if row.get("settings_hash") == settings_hash:
        row = {**LATER_COLUMNS, **row}
    if (
        row.get("model_fingerprint") == model_fingerprint
        and row.get("settings_hash") == settings_hash
        and row.get("content_sha256")
        and all(name in row for name in SUMMARY_SCHEMA.names)
        and all(isinstance(row[name], kind) for name, kind in KEY_CELLS.items())
    ):
        yield row["content_sha256"], row


def previous_images(rows) -> dict[str, list[dict]]:
    """{previous image_uri: its rows by target_rank}, only images whose rows are complete.
    The same (uri, rank) twice (parts of two interrupted attempts, under --resume) is one
    row: both were computed from the same bytes, model and settings."""
    by_uri: dict[str, list[dict]] = {}
    seen = set()
    for row in rows:
        if (row["image_uri"], row["target_rank"]) in seen:
            continue
        seen.add((row["image_uri"], row["target_rank"]))
        by_uri.setdefault(row["image_uri"], []).append(row)
    complete = {}
    for uri, group in by_uri.items():
        group.sort(key=lambda r: r["target_rank"])
        if [r["target_rank"] for r in group] == list(range(len(group))):
            complete[uri] = group
    return complete


# The engine's absolute completeness floor (IntegratedGradients' atol): an error at most this
# small counts as converged whatever the relative error.
ATOL = 1e-6
# Stored numbers are float64 copies of what the engine compared; only float64 rounding of a
# mean over baselines separates a recomputed error from the stored one (far below this).
RECHECK_RTOL = RECHECK_ATOL = 1e-7
# Methods whose rows carry a completeness check against F(x) - F(start): IG on straight or
# curved paths. SmoothGrad explains noisy copies (its target_score is the clean image's), so
# its sum is not checked against its scores; other methods have no completeness to check.
CHECKED_METHODS = (None, "ig", "xrai", "blur_ig", "guided_ig", "expected_gradients")
SINGLE_PATH_METHODS = (None, "ig", "blur_ig", "guided_ig")


def recheck(row: dict, tolerance: float | None) -> str | None:
    """Why a previous row's arithmetic does not hold (None when it does): attribution_sum
    against target_score - baseline_score and the stored completeness_error (equal for one
    path, an upper bound when the row averages several baselines), the relative error of one
    path, and ``converged`` against the error and ``--tolerance``."""
    if row.get("attribution") not in CHECKED_METHODS:
        return None
    numbers = [
        row.get(k)
        for k in ("attribution_sum", "target_score", "baseline_score", "completeness_error")
    ]
    relative = row.get("relative_completeness_error")
    if any(v is None or not math.isfinite(v) for v in numbers) or relative is None:
        return "a score, sum or error is missing or not finite"
    total, fx, fb, error = numbers
    if error < 0 or not relative >= 0:
        return "a negative or NaN completeness error"
    found = abs(total - (fx - fb))
    slack = RECHECK_ATOL + RECHECK_RTOL * max(abs(total), abs(fx), abs(fb), error)
    if found > error + slack:
        return (
            f"attribution_sum {total!r} is {found!r} from target_score - baseline_score, "
            f"completeness_error says {error!r}"
        )
    one_path = row.get("method") == "random_alpha" or (
        row["attribution"] in SINGLE_PATH_METHODS and "," not in (row.get("baseline") or "")
    )
    if one_path:
        delta = abs(fx - fb)
        expected = found / delta if delta > 0 else (0.0 if found == 0 else math.inf)
        if abs(found - error) > slack:
            return f"completeness_error {error!r}, the row's numbers give {found!r}"
        if not math.isclose(relative, expected, rel_tol=RECHECK_RTOL, abs_tol=RECHECK_ATOL):
            return f"relative_completeness_error {relative!r}, the row's numbers give {expected!r}"
    if row.get("converged") and not (
        error <= ATOL + slack or (tolerance is not None and relative <= tolerance)
    ):
        return f"converged, yet error {error!r} / relative {relative!r} exceed --tolerance"
    return None


class SplitFn(beam.DoFn):
    """(sha256, {previous: rows, current: refs}) -> (ImageRef, rows) to reuse, or the ref to
    compute (tagged COMPUTE). Deleted images (no current ref) produce nothing. Rows whose
    arithmetic fails ``recheck`` are not reused: the image is computed and each failed row is
    reported (tagged REVERIFIED_FAILED, counted by the commit in counts.reverified_failed)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.failed_recheck = Metrics.counter(NAMESPACE, "reverified_failed")

    def process(self, element):
        _, groups = element
        refs = sorted(groups[CURRENT], key=lambda r: r.uri)
        if not refs:
            return
        candidates = previous_images(groups[PREVIOUS])
        checked = {}
        for uri, rows in candidates.items():
            failed = [(r, why) for r in rows if (why := recheck(r, self.settings.tolerance))]
            for row, why in failed:
                self.failed_recheck.inc()
                logging.warning(
                    "a previous row of %s (target rank %s) fails its re-check (%s): computed again",
                    row["image_uri"],
                    row["target_rank"],
                    why,
                )
                yield beam.pvalue.TaggedOutput(
                    REVERIFIED_FAILED,
                    {
                        "kind": REVERIFIED_FAILED,
                        "uri": row["image_uri"],
                        "rank": row["target_rank"],
                    },
                )
            if not failed:
                checked[uri] = rows
        first = checked[min(checked)] if checked else None
        for ref in refs:
            rows = checked.get(ref.uri, first)  # same uri first, else a renamed copy
            if rows is not None and self._usable(ref, rows):
                yield ref, rows
            else:
                yield beam.pvalue.TaggedOutput(COMPUTE, ref)

    def _usable(self, ref: ImageRef, rows: list[dict]) -> bool:
        s = self.settings
        if rows[0]["width"] * rows[0]["height"] > s.max_pixels:
            return False  # this run refuses it: let Decode say so in errors
        needs = [COLUMN_OF[a] for a in s.artifacts if a != "raw"]
        if s.write_raw or "raw" in s.artifacts or ref.boxes is not None:
            needs.append("raw_uri")
        return all(r[column] for r in rows for column in needs)


def reused_row(
    row: dict, ref: ImageRef, settings: Settings, raw=None, boxes=None
) -> tuple[dict, dict[str, str]]:
    """The previous ``row`` moved to this run: (new row, {new file: previous file})."""
    out = settings.output_dir.rstrip("/")
    name = artifact_name(ref.image_id, row["target_class"], row["target_rank"])
    new = {column: row[column] for column in SUMMARY_SCHEMA.names}
    raw_wanted = settings.write_raw or "raw" in settings.artifacts
    new.update(
        image_uri=ref.uri,
        image_id=ref.image_id,
        mask_uri=f"{out}/masks/{name}.png" if "masks" in settings.artifacts else None,
        overlay_uri=(f"{out}/overlays/{name}.png" if "overlays" in settings.artifacts else None),
        raw_uri=f"{out}/raw/{name}.npy" if raw_wanted else None,
        target_label=settings.label(row["target_class"]),
        predicted_label=settings.label(row["predicted_class"]),
        regions=None,
        strategy=None,  # assigned again by this run's strategy stage (--strategies auto)
    )
    if ref.record is not None:  # TFRecord: the label is the record's, not the previous row's
        new.update(true_class=ref.record.true_class, true_label=ref.record.true_label)
    copies = {
        new[column]: row[column] for column in ("mask_uri", "overlay_uri", "raw_uri") if new[column]
    }
    if boxes is not None:  # as SummarizeFn: boxes in original pixels mapped to model input
        geometry = pad_geometry((row["height"], row["width"]), raw.shape[:2])
        new["regions"] = masks.region_masses(
            raw, [(n, geometry.box_to_model(box)) for n, box in boxes]
        )
        carry_ablations(new["regions"], row.get("regions"))
    return new, copies


def carry_ablations(regions: list[dict], previous: list[dict] | None) -> None:
    """Ablation needs the model, which a reused image never loads: keep the previous run's
    ablation of a region with the same name and the same area and mass (the same box); any
    other region's ablation is null."""
    same = {(r["name"], r["area_fraction"], r["mass_fraction"]): r for r in previous or []}
    for region in regions:
        old = same.get((region["name"], region["area_fraction"], region["mass_fraction"]), {})
        region["ablation_score"] = old.get("ablation_score")
        region["ablation_drop"] = old.get("ablation_drop")


class CopyForwardFn(CountsProgress, beam.DoFn):
    """(ImageRef, previous rows) -> this run's rows, files copied first. When a previous file
    is gone the image is sent to COMPUTE instead; other storage errors propagate so the
    runner retries the bundle (publishing is idempotent)."""

    def __init__(self, settings: Settings, roots: list[str]):
        self.settings, self.roots = settings, list(roots)
        self.progress_folder = settings.progress_folder
        self.reused = Metrics.counter(NAMESPACE, "reused")
        self.reused_rows = Metrics.counter(NAMESPACE, "reused_rows")
        self.copied = Metrics.counter(NAMESPACE, "files_copied")
        self.missing = Metrics.counter(NAMESPACE, "reuse_files_missing")

    def process(self, element):
        ref, rows = element
        boxes = ref.boxes
        s = self.settings
        keys = tuple(COLUMN_OF[a] for a in s.artifacts if a != "raw") + (
            ("raw_uri",) if s.write_raw or "raw" in s.artifacts or boxes is not None else ()
        )
        sources = list(dict.fromkeys((k, row[k]) for row in rows for k in keys))
        try:
            contents = {
                path: read_run_file(self.roots, FOLDER_OF[k], path, s.max_file_bytes)
                for k, path in sources
            }
        except RunFolderError as e:  # outside the previous folders, a link, too large, gone
            logging.warning("%s: a previous file is not copied (%s): computed again", ref.uri, e)
            self.missing.inc()
            yield beam.pvalue.TaggedOutput(COMPUTE, ref)
            return
        try:
            rows_out, copies = [], {}
            for row in rows:
                raw = np.load(io.BytesIO(contents[row["raw_uri"]])) if boxes is not None else None
                new, files = reused_row(row, ref, self.settings, raw, boxes)
                rows_out.append(new)
                copies.update(files)
        except Exception:  # noqa: BLE001 - e.g. an unreadable raw file: compute it afresh
            self.missing.inc()
            yield beam.pvalue.TaggedOutput(COMPUTE, ref)
            return
        for target, source in copies.items():
            publish(target, contents[source])
        self.copied.inc(len(copies))
        self.reused.inc()
        self.progress()
        self.reused_rows.inc(len(rows_out))
        yield from rows_out


class Reused(NamedTuple):
    """What ``Reuse`` returns."""

    compute: beam.PCollection  # each input to decode: a file's uri or a TFRecord Record
    rows: beam.PCollection  # summary rows copied forward
    reverified_failed: beam.PCollection  # previous rows failing ``recheck`` (for the commit)


class Reuse(beam.PTransform):
    """The filter between hashing and decoding: (sha256, ImageRef) of this run's inputs ->
    ``Reused``: the inputs to decode (new, changed, previously failed, or whose previous
    files are gone), and the summary rows copied forward for the others.

    ``folders``: previous run folders (their ``summaries/`` are read), or folders of part
    files (``--resume``: an interrupted attempt's parts); ``roots``: the run folders whose
    masks/, overlays/ and raw/ previous files may be copied from; ``regions``: the boxes
    of every input (``(region key, (index, name, box))``), carried by each ref through the
    join so a reused row's region masses are recomputed."""

    def __init__(self, settings: Settings, folders: list[str], roots: list[str], regions=None):
        super().__init__()
        self.settings, self.regions = settings, regions
        self.previous = [f"{f.rstrip('/')}/summaries/*.parquet" for f in folders]
        self.roots = list(roots)

    def expand(self, hashes):
        s = self.settings
        if self.regions is not None:
            hashes = join_boxes(
                hashes | "KeyByUri" >> beam.Map(lambda pair: (region_key(pair[1].uri), pair)),
                self.regions,
            ) | "WithBoxes" >> beam.Map(
                lambda joined: (
                    joined[0][0],
                    replace(joined[0][1], boxes=tuple(joined[1]) if joined[1] else None),
                )
            )
        reads = [
            hashes.pipeline | f"ReadPrevious{i or ''}" >> beam.io.ReadFromParquet(pattern)
            for i, pattern in enumerate(self.previous)
            if FileSystems.match([pattern])[0].metadata_list
        ]
        if not reads:  # the previous run attributed nothing
            previous = hashes.pipeline | "ReadPrevious" >> beam.Create([])
        elif len(reads) == 1:
            previous = reads[0]
        else:
            previous = tuple(reads) | "CollectPrevious" >> beam.Flatten()
        keyed = previous | "KeyPrevious" >> beam.FlatMap(
            key_reusable, s.model_fingerprint, s.settings_hash
        )
        split = (
            {PREVIOUS: keyed, CURRENT: hashes}
            | "JoinByContent" >> beam.CoGroupByKey()
            | "Split"
            >> beam.ParDo(SplitFn(s)).with_outputs(COMPUTE, REVERIFIED_FAILED, main="reuse")
        )
        copied = split.reuse | "CopyForward" >> beam.ParDo(
            CopyForwardFn(s, self.roots)
        ).with_outputs(COMPUTE, main="rows")
        compute = (
            (split[COMPUTE], copied[COMPUTE])
            | "ToCompute" >> beam.Flatten()
            | "Sources" >> beam.Map(lambda ref: ref.source)
        )
        return Reused(compute, copied.rows, split[REVERIFIED_FAILED])
