"""The job's graph: read -> attribute -> summarize -> stage parts -> commit, every step with a
stable label."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.utils import shared

from pipeline.commit import CommitContext, CommitFn
from transforms.attribute import AttributeImages
from transforms.inputs import InputSpec, ReadInputs
from transforms.regions import ReadRegions
from transforms.settings import Settings
from transforms.strategies import STRATEGY_SCHEMA, DiscoverStrategies, FillStrategies
from transforms.summarize import Summarize
from transforms.write import COMPUTED, ERROR_SCHEMA, REUSED, SUMMARY_SCHEMA, WriteParts


def build(
    p: beam.Pipeline,
    settings: Settings,
    inputs: InputSpec,
    *,
    commit_context: CommitContext | None = None,
) -> None:
    """``inputs``: what the job reads (files or TFRecord, regions, rows to reuse);
    ``commit_context``: what the final Commit step records (None: no commit step)."""
    out = settings.output_dir
    regions = (  # read in the graph, never pickled into it
        p | "ReadRegions" >> ReadRegions(inputs.regions, inputs.pattern) if inputs.regions else None
    )
    read = p | "ReadImages" >> ReadInputs(inputs, settings, regions)
    model = shared.Shared()  # one model per worker process, for attribution and ablation
    attributed = read.images | "Attribute" >> AttributeImages(settings, read.regions, model)
    # the regions were joined before the model (ablation needs the boxes): rows carry them
    summarized = attributed.attributed | "Summarize" >> Summarize(settings)
    interval = settings.commit_interval
    parts = [
        summarized.rows
        | "WriteSummaries" >> WriteParts(out, "summaries", SUMMARY_SCHEMA, COMPUTED, interval)
    ]
    if read.reused is not None:
        parts.append(
            read.reused
            | "WriteReused" >> WriteParts(out, "summaries", SUMMARY_SCHEMA, REUSED, interval)
        )
    if settings.strategy_config.enabled:  # --strategies auto: strategies per class
        rows = [summarized.rows] if read.reused is None else [summarized.rows, read.reused]
        found = (
            tuple(rows)
            | "CollectRows" >> beam.Flatten()
            | "Strategies" >> DiscoverStrategies(settings, model, inputs.records, inputs.pattern)
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
    errors = (read.errors, attributed.errors, summarized.errors) | "CollectErrors" >> beam.Flatten()
    parts.append(
        errors | "WriteErrors" >> WriteParts(out, "errors", ERROR_SCHEMA, COMPUTED, interval)
    )
    if read.reverified_failed is not None:  # counted by the commit
        parts.append(read.reverified_failed)
    if commit_context is not None:
        _ = (
            tuple(parts)
            | "CollectParts" >> beam.Flatten()
            | "AllParts" >> beam.combiners.ToList()
            | "Commit" >> beam.ParDo(CommitFn(out, commit_context))
        )
