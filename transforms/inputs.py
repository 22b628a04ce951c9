"""The job's one read step: image files or TFRecord shards -> images to attribute, `errors`
rows, every image's regions and, under ``--reuse_from`` / ``--resume``, the rows copied
forward.

Every input goes the same way: **list** (one per image id, ``DuplicateId`` rows for the
rest) -> [**hash** -> **reuse** (transforms/reuse.py: the inputs a previous run already
attributed leave here as rows copied forward)] -> **decode**. Hashing and reuse are only in
the graph when there are previous rows to reuse. Files and records differ only in the DoFns
that list, hash and decode them (transforms/read.py, transforms/tfrecord.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam

from transforms.read import DecodeFn, HashFn, ListedInputs
from transforms.records import ERRORS
from transforms.reuse import Reuse
from transforms.settings import Settings
from transforms.tfrecord import (
    DecodeRecordsFn,
    HashRecordsFn,
    RecordKeys,
    header_regions,
    unique_records,
)


@dataclass(frozen=True)
class InputSpec:
    """What a job reads."""

    pattern: str | None = None  # matched in the graph when there is no inputs_list
    inputs_list: str | None = None  # the launcher's list of the inputs (Parquet, ``uri``)
    records: RecordKeys | None = None  # TFRecord input (--input_format tfrecord); None: files
    regions: str | None = None  # --regions: a file of named boxes per image
    reuse_from: str | None = None  # --reuse_from: a previous run folder
    resume_parts: str | None = None  # --resume: the interrupted attempt's part files

    @property
    def previous(self) -> list[str]:
        """The folders whose summary rows may be copied forward."""
        return [folder for folder in (self.reuse_from, self.resume_parts) if folder]

    def roots(self, output_dir: str) -> list[str]:
        """The run folders previous masks, overlays and raw files may be copied from: the
        previous run's, and under --resume this run's own."""
        return [folder for folder in (self.reuse_from, self.resume_parts and output_dir) if folder]


class Inputs(NamedTuple):
    """What ``ReadInputs`` returns (None where the job has no such output)."""

    images: beam.PCollection  # DecodedImage, to attribute
    errors: beam.PCollection  # `errors` rows of listing, hashing and decoding
    regions: beam.PCollection | None  # (region key, (index, name, box)) of every image
    reused: beam.PCollection | None  # summary rows copied forward
    reverified_failed: beam.PCollection | None  # previous rows failing their re-check


class ReadInputs(beam.PTransform):
    """PBegin -> ``Inputs``, for image files and TFRecord shards alike.

    ``regions``: the rows of ``spec.regions``, read by the caller (``ReadRegions``), None
    without --regions; the result's ``regions`` adds the records' own boxes under
    --regions_from_record."""

    def __init__(self, spec: InputSpec, settings: Settings, regions=None):
        super().__init__()
        self.spec, self.settings, self.regions = spec, settings, regions

    def expand(self, pbegin):
        spec, s = self.spec, self.settings
        if spec.records is None:
            listed = pbegin | "List" >> ListedInputs(spec.pattern, spec.inputs_list)
            inputs = listed.uris
            hash_fn = HashFn(s.progress_folder, s.max_file_bytes)
            decode_fn = DecodeFn(
                s.image_size, s.max_pixels, s.progress_folder, s.channels, s.max_file_bytes
            )
        else:
            listed = unique_records(pbegin, spec.pattern, spec.records, spec.inputs_list)
            inputs = listed.records
            hash_fn = HashRecordsFn(spec.records)
            decode_fn = DecodeRecordsFn(spec.records, s.image_size, s.max_pixels, s.channels)
        errors = [listed[ERRORS]]
        regions = self.regions
        if spec.records is not None and spec.records.regions_from_record:
            boxes = inputs | "RecordRegions" >> beam.FlatMap(header_regions)
            if regions is not None:
                boxes = (regions, boxes) | "CollectRegions" >> beam.Flatten()
            regions = boxes
        reused = None
        if spec.previous:
            hashed = inputs | "Hash" >> beam.ParDo(hash_fn).with_outputs(ERRORS, main="hashes")
            errors.append(hashed[ERRORS])
            reused = hashed.hashes | "Reuse" >> Reuse(
                s, spec.previous, spec.roots(s.output_dir), regions
            )
            inputs = reused.compute
        decoded = inputs | "Decode" >> beam.ParDo(decode_fn).with_outputs(ERRORS, main="images")
        errors.append(decoded[ERRORS])
        return Inputs(
            images=decoded.images,
            errors=tuple(errors) | "CollectReadErrors" >> beam.Flatten(),
            regions=regions,
            reused=None if reused is None else reused.rows,
            reverified_failed=None if reused is None else reused.reverified_failed,
        )
