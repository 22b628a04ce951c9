"""The job's graph: read -> attribute -> summarize -> write, every step with a stable label."""
from __future__ import annotations

import apache_beam as beam

from pipeline.progress import TallyFn
from transforms.attribute import AttributeImages
from transforms.read import ReadImages
from transforms.regions import Regions
from transforms.settings import Settings
from transforms.summarize import Summarize
from transforms.write import ERROR_SCHEMA, SUMMARY_SCHEMA, WriteParquet


def build(p: beam.Pipeline, settings: Settings, input_pattern: str,
          progress_folder: str | None = None, regions: Regions | None = None) -> None:
    out = settings.output_dir
    decoded = p | "ReadImages" >> ReadImages(input_pattern, settings.image_size,
                                             settings.max_pixels)
    attributed = decoded.images | "Attribute" >> AttributeImages(settings)
    summarized = attributed.attributed | "Summarize" >> Summarize(settings, regions)
    _ = summarized.rows | "WriteSummaries" >> WriteParquet(out, "summaries", SUMMARY_SCHEMA)
    errors = ((decoded.errors, attributed.errors, summarized.errors)
              | "CollectErrors" >> beam.Flatten())
    _ = errors | "WriteErrors" >> WriteParquet(out, "errors", ERROR_SCHEMA)
    if progress_folder:
        _ = ((attributed.attributed, errors)
             | "CollectFinished" >> beam.Flatten()
             | "Progress" >> beam.ParDo(TallyFn(progress_folder)))
