"""The job's graph: read -> attribute -> summarize -> write, every step with a stable label."""
from __future__ import annotations

import apache_beam as beam

from transforms.attribute import AttributeImages
from transforms.read import ReadImages
from transforms.regions import ReadRegions
from transforms.reuse import ReadWithReuse
from transforms.settings import Settings
from transforms.summarize import Summarize
from transforms.tfrecord import ReadRecords, RecordKeys
from transforms.write import ERROR_SCHEMA, SUMMARY_SCHEMA, WriteParquet


def build(p: beam.Pipeline, settings: Settings, input_pattern: str,
          regions: str | None = None, reuse_from: str | None = None,
          records: RecordKeys | None = None) -> None:
    """``regions``: a regions file, read and joined in the graph (never pickled into it);
    ``records``: TFRecord input (--input_format tfrecord) with its feature keys."""
    out = settings.output_dir
    regions = p | "ReadRegions" >> ReadRegions(regions, input_pattern) if regions else None
    if reuse_from:  # hash, join with the previous run's rows, decode only what is new
        read = p | "ReadImages" >> ReadWithReuse(input_pattern, settings, reuse_from, regions,
                                                 records)
        images, read_errors, reused = read["images"], read["errors"], read["reused"]
        regions = read["regions"]  # with the records' boxes (--regions_from_record)
    elif records is not None:
        read = p | "ReadImages" >> ReadRecords(input_pattern, records, settings.image_size,
                                               settings.max_pixels, settings.channels)
        images, read_errors, reused = read["images"], read["errors"], None
        if records.regions_from_record:
            regions = read["regions"] if regions is None else (
                (regions, read["regions"]) | "CollectRegions" >> beam.Flatten())
    else:
        decoded = p | "ReadImages" >> ReadImages(input_pattern, settings.image_size,
                                                 settings.max_pixels, settings.progress_folder,
                                                 channels=settings.channels)
        images, read_errors, reused = decoded.images, decoded.errors, None
    attributed = images | "Attribute" >> AttributeImages(settings)
    summarized = attributed.attributed | "Summarize" >> Summarize(settings, regions)
    rows = summarized.rows if reused is None else (
        (summarized.rows, reused) | "CollectRows" >> beam.Flatten())
    _ = rows | "WriteSummaries" >> WriteParquet(out, "summaries", SUMMARY_SCHEMA)
    errors = ((read_errors, attributed.errors, summarized.errors)
              | "CollectErrors" >> beam.Flatten())
    _ = errors | "WriteErrors" >> WriteParquet(out, "errors", ERROR_SCHEMA)
