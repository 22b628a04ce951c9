"""`python -m pipeline`: validate, load the model once to fail fast, run the graph, record."""
from __future__ import annotations

import dataclasses
import datetime
import logging
import shutil
import sys
import tempfile

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions, TestOptions

from attribution.models import ModelLoadError, load_model
from pipeline import graph, manifest, options
from pipeline.launch import runner_name, ship_package
from pipeline.progress import ProgressReporter
from transforms.files import TEMPORARY_PREFIX, absolute, delete_matching
from transforms.regions import check_regions
from transforms.reuse import PreviousRunError, previous_run
from transforms.settings import Settings
from transforms.tfrecord import RecordKeys


def match_inputs(pattern: str) -> list[str]:
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # noqa: BLE001 - report any filesystem failure as a usage problem
        raise options.UsageError(f"--input_pattern {pattern}: cannot list it ({e})") from None
    paths = sorted(m.path for m in found)  # files only: Beam's match skips folders
    if not paths:
        raise options.UsageError(f"--input_pattern {pattern} matches no file: check the path "
                                 f"and quote the pattern so the shell does not expand it")
    return paths


def read_labels(path: str | None) -> tuple[str, ...]:
    if not path:
        return ()
    with FileSystems.open(path) as f:
        return tuple(line.strip() for line in f.read().decode("utf-8").splitlines())


def remove_temporaries(output_dir: str) -> None:
    """Delete leftovers of writes that died between create and rename."""
    for folder in ("masks", "overlays", "raw"):
        delete_matching(f"{output_dir.rstrip('/')}/{folder}/{TEMPORARY_PREFIX}*")


def run(argv: list[str] | None = None,
        save_main_session: bool = True) -> beam.runners.runner.PipelineResult:
    """Run the job; the result carries ``manifest`` (None on a dry run)."""
    opts, pipeline_options = options.parse(sys.argv[1:] if argv is None else list(argv))
    opts.input_pattern, opts.output_dir = absolute(opts.input_pattern), absolute(opts.output_dir)
    started_at = manifest.now()
    opts.run_id = opts.run_id or datetime.datetime.fromisoformat(started_at).strftime(
        "%Y%m%dT%H%M%SZ")
    matched = match_inputs(opts.input_pattern)
    previous = None
    if opts.reuse_from:
        opts.reuse_from = absolute(opts.reuse_from)
        try:
            previous = previous_run(opts.reuse_from)
        except PreviousRunError as e:
            raise options.UsageError(str(e)) from None
    model = load_model(opts.model, image_size=options.parse_image_size(opts.image_size),
                       model_output=opts.model_output, output_key=opts.output_key,
                       preprocess=opts.preprocess)
    labels = read_labels(opts.labels)
    try:
        if opts.regions:  # streamed once to refuse a bad file now; the job reads it again
            check_regions(opts.regions, opts.input_pattern)
    except ValueError as e:
        raise options.UsageError(str(e)) from None
    if labels and len(labels) != model.num_classes:
        logging.warning("--labels has %d lines, the model has %d classes", len(labels),
                        model.num_classes)
    settings = Settings(
        model=opts.model, output_dir=opts.output_dir.rstrip("/"), image_size=model.image_size,
        num_classes=model.num_classes, model_fingerprint=model.fingerprint,
        model_output=opts.model_output, output_key=opts.output_key, score=opts.score,
        target=opts.target, method=opts.method, steps=opts.steps,
        tolerance=opts.tolerance or None, max_steps=opts.max_steps, baseline=opts.baseline,
        seed=opts.seed, batch_size=opts.batch_size, image_batch_size=opts.image_batch_size,
        max_pixels=opts.max_pixels, write_raw=opts.write_raw, grid_cells=opts.grid_cells,
        clip_percentile=opts.clip_percentile, jit_compile=opts.jit_compile, labels=labels,
        preprocess=opts.preprocess, channels=model.channels,
        artifacts=options.parse_artifacts(opts.artifacts, opts.write_raw))
    records = RecordKeys(opts.image_key, opts.id_key, opts.label_key, opts.regions_from_record,
                         labels) if options.input_format(opts) == "tfrecord" else None
    if previous and (previous.get("model", {}).get("fingerprint") != model.fingerprint
                     or previous.get("settings_hash") != settings.settings_hash):
        logging.warning("--reuse_from %s was made with another model or other settings: "
                        "every image is attributed again", opts.reuse_from)

    pipeline_options.view_as(SetupOptions).save_main_session = save_main_session
    runner = runner_name(pipeline_options)
    ship_package(pipeline_options)
    # Building a template (what a Flex Template launcher does) only stages the graph: no job
    # has run when run() returns, so there is nothing to count yet, as on a dry run.
    dry_run = bool(pipeline_options.view_as(TestOptions).dry_run
                   or pipeline_options.view_as(GoogleCloudOptions).template_location)
    show_progress = ("Direct" in runner and opts.progress_interval > 0 and not dry_run
                     and records is None)  # TFRecord: the image count is unknown up front

    progress_folder = tempfile.mkdtemp(prefix="ig-progress-") if show_progress else None
    reporter = (ProgressReporter(progress_folder, len(matched), opts.progress_interval)
                if show_progress else None)
    try:
        p = beam.Pipeline(options=pipeline_options)
        graph.build(p, dataclasses.replace(settings, progress_folder=progress_folder),
                    opts.input_pattern, opts.regions, reuse_from=opts.reuse_from,
                    records=records)
        if reporter:
            reporter.start()
        result = p.run()
        result.wait_until_finish()
    finally:
        if reporter:
            reporter.stop()
        if progress_folder:
            shutil.rmtree(progress_folder, ignore_errors=True)
    result.manifest = None
    if dry_run:
        return result
    remove_temporaries(settings.output_dir)
    record = manifest.build(
        output_dir=settings.output_dir, matched=matched,
        config={**vars(opts), **pipeline_options.get_all_options(drop_default=True),
                "resolved_image_size": list(model.image_size)},
        model={"handle": model.handle, "kind": model.kind,
               "input_size": list(model.image_size), "num_classes": model.num_classes,
               "output": model.output, "fingerprint": model.fingerprint,
               "channels": model.channels, "preprocess": model.preprocess},
        job_metrics=manifest.metrics(result), started_at=started_at,
        finished_at=manifest.now(), run_id=opts.run_id, settings_hash=settings.settings_hash,
        reuse_from=opts.reuse_from, previous=previous,
        records_read=None if records is None else manifest.metrics(result).get("matched", 0))
    manifest.write(settings.output_dir, record)
    result.manifest = record
    result.report = None if opts.no_report else _write_report(settings.output_dir)
    return result


def _write_report(output_dir: str) -> str | None:
    """The HTML report; a failure to draw it is logged, never fails the finished run."""
    from pipeline.report import write_report
    try:
        return write_report(output_dir)
    except Exception:  # noqa: BLE001 - the run's outputs are complete without the report
        logging.exception("could not write the report for %s", output_dir)
        return None


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok, 1 too many failures or outputs incomplete, 2 bad options,
    3 the model cannot load."""
    logging.getLogger().setLevel(logging.WARNING)
    try:
        result = run(argv)
    except options.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModelLoadError as e:
        print(f"error: the model cannot load, nothing was read: {e}", file=sys.stderr)
        return 3
    record = result.manifest
    if record is None:
        print("dry run: the job graph was built and not submitted")
        return 0
    counts = record["counts"]
    out = record["config"]["output_dir"]
    print(f"attributed {counts['attributed']} of {counts['matched']} images "
          f"({counts['rows']} rows), {counts['failed']} failed; model loaded "
          f"{record['metrics']['model_loads']} time(s). Outputs in {out} "
          f"(manifest: {out.rstrip('/')}/manifest.json)")
    if record.get("reuse_from"):
        print(f"reused {counts['reused']} image(s) from {record['reuse_from']}, computed "
              f"{counts['computed']}")
    if getattr(result, "report", None):
        print(f"report: {result.report}")
    if not record["complete"]:
        print(f"error: outputs do not account for every matched input: {counts}",
              file=sys.stderr)
        return 1
    fraction = counts["failed"] / counts["matched"] if counts["matched"] else 0.0
    limit = record["config"]["max_failure_fraction"]
    if fraction > limit:
        print(f"error: {fraction:.1%} of inputs failed, more than --max_failure_fraction "
              f"{limit}: see {out.rstrip('/')}/errors/", file=sys.stderr)
        return 1
    return 0
