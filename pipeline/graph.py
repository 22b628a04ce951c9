"""The job's graph: read -> attribute -> summarize -> stage parts -> commit, every step with a
stable label."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.utils import shared

from pipeline.commit import CommitContext, CommitFn
from transforms.attribute import AttributeImages
from transforms.read import ReadImages
from transforms.regions import ReadRegions
from transforms.reuse import ReadWithReuse
from transforms.settings import Settings
from transforms.strategies import STRATEGY_SCHEMA, DiscoverStrategies, FillStrategies
from transforms.summarize import Summarize
from transforms.tfrecord import ReadRecords, RecordKeys
from transforms.write import COMPUTED, ERROR_SCHEMA, REUSED, SUMMARY_SCHEMA, WriteParts


def build(
    p: beam.Pipeline,
    settings: Settings,
    input_pattern: str | None,
    regions: str | None = None,
    reuse_from: str | None = None,
    records: RecordKeys | None = None,
    *,
    inputs_list: str | None = None,
    resume_parts: str | None = None,
    commit_context: CommitContext | None = None,
) -> None:
    """``regions``: a regions file, read and joined in the graph (never pickled into it);
    ``records``: TFRecord input (--input_format tfrecord) with its feature keys;
    ``inputs_list``: the launcher's list of input files (else ``input_pattern`` is matched);
    ``resume_parts``: an interrupted attempt's parts to reuse (--resume);
    ``commit_context``: what the final Commit step records (None: no commit step)."""
    out = settings.output_dir
    regions = p | "ReadRegions" >> ReadRegions(regions, input_pattern) if regions else None
    previous = [folder for folder in (reuse_from, resume_parts) if folder]
    reverified = None
    if previous:  # hash, join with the previous rows, decode only what is new
        read = p | "ReadImages" >> ReadWithReuse(
            input_pattern,
            settings,
            previous,
            regions,
            records,
            inputs_list=inputs_list,
            roots=[f for f in (reuse_from, resume_parts and settings.output_dir) if f],
        )
        images, read_errors, reused = read["images"], read["errors"], read["reused"]
        reverified = read["reverified_failed"]  # counted by the commit
        regions = read["regions"]  # with the records' boxes (--regions_from_record)
    elif records is not None:
        read = p | "ReadImages" >> ReadRecords(
            input_pattern,
            records,
            settings.image_size,
            settings.max_pixels,
            settings.channels,
            inputs_list=inputs_list,
        )
        images, read_errors, reused = read["images"], read["errors"], None
        if records.regions_from_record:
            regions = (
                read["regions"]
                if regions is None
                else ((regions, read["regions"]) | "CollectRegions" >> beam.Flatten())
            )
    else:
        decoded = p | "ReadImages" >> ReadImages(
            input_pattern,
            settings.image_size,
            settings.max_pixels,
            settings.progress_folder,
            channels=settings.channels,
            inputs_list=inputs_list,
            max_file_bytes=settings.max_file_bytes,
        )
        images, read_errors, reused = decoded.images, decoded.errors, None
    model = shared.Shared()  # one model per worker process, for attribution and ablation
    attributed = images | "Attribute" >> AttributeImages(settings, regions, model)
    # the regions were joined before the model (ablation needs the boxes): rows carry them
    summarized = attributed.attributed | "Summarize" >> Summarize(settings)
    interval = settings.commit_interval
    parts = [
        summarized.rows
        | "WriteSummaries" >> WriteParts(out, "summaries", SUMMARY_SCHEMA, COMPUTED, interval)
    ]
    if reused is not None:
        parts.append(
            reused | "WriteReused" >> WriteParts(out, "summaries", SUMMARY_SCHEMA, REUSED, interval)
        )
    if settings.strategy_config.enabled:  # issue 21: strategies per class (--strategies auto)
        rows = [summarized.rows] if reused is None else [summarized.rows, reused]
        found = (
            tuple(rows)
            | "CollectRows" >> beam.Flatten()
            | "Strategies" >> DiscoverStrategies(settings, model, records, input_pattern)
        )
        # the parts stay as written (--resume reuses them); copies with the column filled
        # are what the commit publishes
        parts = [
            tuple(parts)
            | "CollectSummaryParts" >> beam.Flatten()
            | "FillStrategies" >> FillStrategies(out, found["models"]),
            found["strategies"]
            | "WriteStrategies"
            >> WriteParts(out, "strategies", STRATEGY_SCHEMA, COMPUTED, interval),
        ]
    errors = (read_errors, attributed.errors, summarized.errors) | "CollectErrors" >> beam.Flatten()
    parts.append(
        errors | "WriteErrors" >> WriteParts(out, "errors", ERROR_SCHEMA, COMPUTED, interval)
    )
    if reverified is not None:
        parts.append(reverified)
    if commit_context is not None:
        _ = (
            tuple(parts)
            | "CollectParts" >> beam.Flatten()
            | "AllParts" >> beam.combiners.ToList()
            | "Commit" >> beam.ParDo(CommitFn(out, commit_context))
        )
