"""`python -m pipeline`, in four steps: ``prepare`` (validate, load the model once to fail fast,
make the settings), ``take`` the run folder, ``execute`` (list the inputs once, run the graph,
whose last stage commits the folder) and read the ``outcome``, which ``main`` reports."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import traceback
from typing import NoReturn

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    TestOptions,
)

from attribution.models import LoadedModel, ModelLoadError, load_model
from pipeline import folder, graph, lock, manifest, options
from pipeline.commit import CommitContext
from pipeline.console import WorkerLog, worker_processes
from pipeline.launch import (
    Interrupted,
    interruptible,
    received,
    runner_name,
    ship_package,
    stop_children,
)
from pipeline.progress import ProgressReporter
from transforms.files import WRITE_ERROR, OutputWriteError, absolute
from transforms.inputs import InputSpec
from transforms.job_config import input_format
from transforms.layout import inputs_path
from transforms.read import listed_uri
from transforms.regions import check_regions, names_any, pattern_root
from transforms.reuse import PreviousRunError, previous_run
from transforms.settings import Settings
from transforms.tfrecord import RecordKeys

INTERRUPTED = "interrupted: nothing was committed; rerun with --resume"


class RunFailed(Exception):
    """The job started and did not end committed (a failed write, a crashed step); the
    message is one line naming what failed."""


@dataclasses.dataclass
class RunResult:
    """What ``run()`` returns: the committed manifest (None on a dry run or template build),
    the report's path (None when not written) and Beam's PipelineResult."""

    manifest: dict | None
    report: str | None
    beam_result: beam.runners.runner.PipelineResult | None


def match_inputs(pattern: str, exclude: str | None = None) -> list[str]:
    """What ``pattern`` names, without anything under ``exclude`` (the output folder: a run
    never reads its own outputs, or another run's in that folder, as inputs). Local patterns
    are walked here (``_match_local``), others matched by Beam's filesystems."""
    try:
        if "://" in pattern:
            paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
        else:
            paths = _match_local(pattern)
    except Exception as e:  # noqa: BLE001 - report any filesystem failure as a usage problem
        raise options.UsageError(f"--input_pattern {pattern}: cannot list it ({e})") from None
    if exclude and paths and not (paths := _outside(paths, exclude)):
        raise options.UsageError(
            f"--input_pattern {pattern}: every file it matches is in --output_dir {exclude} "
            f"(a run never reads its own folder): write the run to another folder"
        )
    paths = _listed(paths, pattern)
    if not paths:
        raise options.UsageError(
            f"--input_pattern {pattern} matches no file: check the path "
            f"and quote the pattern so the shell does not expand it"
        )
    return paths


def _listed(paths: list[str], pattern: str) -> list[str]:
    """The uris of ``paths`` (a name that is not UTF-8 with its bytes written ``\\xNN``),
    sorted; UsageError when two files would list as one uri (such a name and one spelled with
    those four characters), so that neither is left out of the run."""
    uris: dict[str, str] = {}
    for path in paths:
        uri = listed_uri(path)
        if uris.setdefault(uri, path) != path:
            raise options.UsageError(
                f"--input_pattern {pattern}: two files list as '{uri}' (a name that is not "
                f"UTF-8, its bytes written \\xNN, and one spelled with those characters): "
                f"rename one of them"
            )
    return sorted(uris)


def _outside(paths: list[str], folder: str) -> list[str]:
    """``paths`` without ``folder`` and what lies under it, also when a path reaches it
    through a symbolic link on the way (``in/**`` where ``in`` links to the folder holding
    the run folder): each path's folder is resolved (once per folder), its name is not."""
    folder = folder.rstrip("/")
    real = folder if "://" in folder else os.path.realpath(folder)
    resolved: dict[str, str] = {}

    def under(path: str) -> bool:
        if path == folder or path.startswith(folder + "/"):
            return True
        if "://" in path:
            return False
        parent, name = os.path.split(path)
        if parent not in resolved:
            resolved[parent] = os.path.realpath(parent)
        found = os.path.join(resolved[parent], name)
        return found == real or found.startswith(real + "/")

    return [p for p in paths if not under(p)]


def _pattern_regex(pattern: str) -> re.Pattern:
    """What ``pattern`` matches, as a regular expression over whole paths. Beam's ``*`` stops
    at a backslash too (a Windows separator); here it is a character a POSIX file name may
    hold, so ``dir/*`` lists every file in dir."""
    return re.compile(FileSystem.translate_pattern(pattern).replace(r"[^/\\]*", "[^/]*"))


def check_listed(listed: list[str], pattern: str, output_dir: str) -> None:
    """--resume reads the interrupted attempt's staged list, a file in the run folder: each
    entry must be one the pattern covers, outside the folder, or UsageError (an edited list
    would make the run read any file the job can, an image shown in its overlay)."""
    regex = None if not re.search(r"[*?\[]", pattern) else _pattern_regex(pattern)
    kept = set(_outside(listed, output_dir))
    for uri in listed:
        if uri not in kept or not (uri == pattern if regex is None else regex.match(uri)):
            raise options.UsageError(
                f"--resume: {inputs_path(output_dir)} lists {uri!r}, which --input_pattern "
                f"{pattern} does not cover (or which is in the run folder): the list was "
                f"changed; pass --overwrite to start again"
            )


def _match_local(pattern: str) -> list[str]:
    """Every local entry ``pattern`` names (Beam's pattern syntax: ``*`` within a folder,
    ``**`` across folders), in one walk that goes no deeper than the pattern reaches. Beam's
    own match lists only what it can stat as a file; this also lists a link to nothing, a
    link loop and (unless ``**`` walks into it) a folder, so each becomes an error row saying
    what it is and every entry the pattern names is accounted for."""
    if not re.search(r"[*?\[]", pattern):  # one path
        return [pattern] if os.path.lexists(pattern) else []
    regex = _pattern_regex(pattern)
    root = os.path.dirname(re.match(r"[^*?\[]*", pattern).group(0)) or "."
    walks_folders = "**" in pattern
    levels = pattern[len(root) :].strip("/").count("/")  # folders below root it reaches
    out = []
    for where, dirs, files in os.walk(root):
        relative = os.path.relpath(where, root)
        depth = 0 if relative == "." else relative.count(os.sep) + 1
        listed = files + [d for d in dirs if not walks_folders or os.path.islink(f"{where}/{d}")]
        out.extend(p for p in (os.path.join(where, n) for n in listed) if regex.match(p))
        if not walks_folders and depth >= levels:
            dirs[:] = []  # deeper entries cannot match
    return sorted(out)


def read_labels(path: str | None) -> tuple[str, ...]:
    if not path:
        return ()
    try:
        with FileSystems.open(path) as f:
            data = f.read()
    except Exception as e:  # noqa: BLE001 - a labels file we cannot open is a usage problem
        raise options.UsageError(f"--labels {path}: cannot read it ({e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise options.UsageError(
            f"--labels {path}: not UTF-8 text (byte {e.start}): save it as UTF-8, one label a line"
        ) from None
    return tuple(line.strip() for line in text.splitlines())


def _write_error(error: BaseException) -> str | None:
    """The one-line 'cannot write FILE: reason' inside a failed job's error, if any."""
    match = re.search(rf"{WRITE_ERROR} (\S+): ([^\n'\"\[]*)", str(error))
    return f"{WRITE_ERROR} {match.group(1)}: {match.group(2).strip()}" if match else None


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What ``prepare`` checked and made, before the folder is touched."""

    opts: argparse.Namespace  # the options, the paths in them made absolute
    pipeline_options: PipelineOptions
    runner: str
    dry_run: bool  # a dry run or a template build: the graph is built, no job runs
    started_at: str
    model: LoadedModel  # loaded in the launcher to fail fast; each worker loads its own
    settings: Settings
    definition: dict  # what defines the run (attempt_definition); --resume compares it
    records: RecordKeys | None  # TFRecord input's feature keys; None for image files
    matched: list[str]  # what --input_pattern matches now (outside --output_dir)
    previous: dict | None  # the manifest of --reuse_from's run


@dataclasses.dataclass(frozen=True)
class Claim:
    """What ``take`` returns: the run's id and the folder's lock (None on a dry run, which
    leaves the folder alone)."""

    run_id: str
    taken: folder.Taken | None


@dataclasses.dataclass(frozen=True)
class Job:
    """What ``_run_job`` runs: the prepared run in its folder, how many inputs the staged list
    holds (the progress line's total) and what the commit records."""

    prepared: Prepared
    claim: Claim
    inputs: int
    context: CommitContext


def run(argv: list[str] | None = None, save_main_session: bool = True) -> RunResult:
    """Run the job: prepare, take the folder, execute, read the outcome; see RunResult."""
    prepared = prepare(argv, save_main_session)
    claim = take(prepared)
    result = execute(prepared, claim)
    return outcome(prepared, claim, result)


def prepare(argv: list[str] | None, save_main_session: bool) -> Prepared:
    """Everything checked before the folder is touched: the options, the labels file, the
    inputs, --reuse_from's run, the regions file, the model (loaded once here so a bad one
    fails before any work), the settings and Beam's options. A problem raises UsageError
    (or ModelLoadError)."""
    opts, pipeline_options = options.parse(sys.argv[1:] if argv is None else list(argv))
    opts.input_pattern, opts.output_dir = absolute(opts.input_pattern), absolute(opts.output_dir)
    folder.check_writable(opts.output_dir)  # before the model loads: nothing is left behind
    folder.refuse_links(opts.output_dir)  # before --resume reads the folder's manifest
    started_at = manifest.now()
    labels = read_labels(opts.labels)
    matched = match_inputs(opts.input_pattern, exclude=opts.output_dir)
    previous = None
    if opts.reuse_from:
        opts.reuse_from = absolute(opts.reuse_from)
        previous = _previous_run(opts.reuse_from)
    _check_regions(opts, matched)
    model = _load(opts)
    options.validate_with_model(opts, model.num_classes, model.image_size, model)
    if labels and len(labels) != model.num_classes:
        logging.warning(
            "--labels has %d lines, the model has %d classes", len(labels), model.num_classes
        )
    settings = options.settings_from_options(opts, model, labels)
    opts.steps, opts.max_steps = settings.steps, settings.max_steps  # the manifest records these
    records = (
        RecordKeys(opts.image_key, opts.id_key, opts.label_key, opts.regions_from_record, labels)
        if input_format(opts) == "tfrecord"
        else None
    )
    if previous:
        _warn_if_not_reusable(opts.reuse_from, previous, model.fingerprint, settings.settings_hash)
    pipeline_options.view_as(SetupOptions).save_main_session = save_main_session
    ship_package(pipeline_options)
    return Prepared(
        opts=opts,
        pipeline_options=pipeline_options,
        runner=runner_name(pipeline_options),
        # Building a template only stages the graph: no job runs, the folder is not touched.
        dry_run=bool(
            pipeline_options.view_as(TestOptions).dry_run
            or pipeline_options.view_as(GoogleCloudOptions).template_location
        ),
        started_at=started_at,
        model=model,
        settings=settings,
        definition=attempt_definition(opts, model.fingerprint, settings),
        records=records,
        matched=matched,
        previous=previous,
    )


def _previous_run(reuse_from: str) -> dict:
    """The manifest of --reuse_from's run, or UsageError saying why it cannot be reused."""
    try:
        return previous_run(reuse_from)
    except PreviousRunError as e:
        raise options.UsageError(str(e)) from None


def _warn_if_not_reusable(
    reuse_from: str, previous: dict, fingerprint: str, settings_hash: str
) -> None:
    """A --reuse_from run made with another model or other settings lends no row: said once."""
    if (
        previous.get("model", {}).get("fingerprint") != fingerprint
        or previous.get("settings_hash") != settings_hash
    ):
        logging.warning(
            "--reuse_from %s was made with another model or other settings: "
            "every image is attributed again",
            reuse_from,
        )


def _check_regions(opts, matched: list[str]) -> None:
    """--regions is streamed once to refuse a bad file now (the job reads it again); a file
    none of whose boxes names a matched image is named in a warning."""
    if not opts.regions:
        return
    try:
        boxes = check_regions(opts.regions, opts.input_pattern)
        if (
            boxes
            and input_format(opts) == "files"  # records are named in the job
            and not names_any(opts.regions, opts.input_pattern, matched)
        ):
            logging.warning(
                "--regions %s: none of its %d boxes names an image --input_pattern "
                "matched (image is a full path, or relative to %s): no row gets regions",
                opts.regions,
                boxes,
                pattern_root(opts.input_pattern),
            )
    except ValueError as e:
        raise options.UsageError(str(e)) from None


def _load(opts) -> LoadedModel:
    """The model --model names, or ModelLoadError (UsageError when --image_size is what is
    wrong, not the model)."""
    try:
        return load_model(
            opts.model,
            image_size=options.parse_image_size(opts.image_size),
            model_output=opts.model_output,
            output_key=opts.output_key,
            preprocess=opts.preprocess,
            precision=opts.precision,
        )
    except ModelLoadError as e:
        if opts.image_size is not None and "--image_size" in str(e):
            raise options.UsageError(str(e)) from None
        raise


def take(prepared: Prepared) -> Claim:
    """The run's id and the folder locked for it (folder.take), or UsageError saying why
    not. --resume first checks that it finishes the same run, and keeps that run's id
    unless --run_id names one. A dry run takes nothing."""
    opts = prepared.opts
    stamp = datetime.datetime.fromisoformat(prepared.started_at).strftime("%Y%m%dT%H%M%SZ")
    if prepared.dry_run:
        return Claim(opts.run_id or stamp, None)
    crashed = None
    if opts.resume:
        check_same_run(opts.output_dir, prepared.definition)
        check_listed(folder.read_list(opts.output_dir) or [], opts.input_pattern, opts.output_dir)
        crashed = lock.read(opts.output_dir)
    run_id = opts.run_id
    if run_id is None and crashed is not None and crashed.run_id != "unknown":
        run_id = crashed.run_id  # --resume finishes that run, under its name
    run_id = run_id or stamp
    taken = folder.take(
        opts.output_dir,
        run_id=run_id,
        overwrite=opts.overwrite,
        resume=opts.resume,
        lock_timeout=opts.lock_timeout,
        local="Direct" in prepared.runner,
    )
    return Claim(run_id, taken)


def execute(prepared: Prepared, claim: Claim) -> beam.runners.runner.PipelineResult:
    """List the inputs, run the graph (its last stage commits the folder) and wait for it.
    Whatever stops it releases the lock and raises what ``main`` reports
    (``_release_and_raise``)."""
    try:
        inputs, not_in_run = _list_inputs(prepared, claim.taken)
        context = _commit_context(prepared, claim, not_in_run)
        return _run_job(Job(prepared, claim, len(inputs), context))
    except BaseException as e:  # noqa: BLE001 - released, then raised again as main reports it
        _release_and_raise(e, prepared.opts.output_dir, claim.taken)


def _list_inputs(prepared: Prepared, taken: folder.Taken | None) -> tuple[list[str], int]:
    """The inputs this attempt reads, and how many files matched now are not among them.
    The pattern's matches are staged for the job (folder.write_list); --resume reads the
    interrupted attempt's list instead, the same inputs. A dry run stages nothing."""
    if taken is not None and taken.listed:
        return taken.listed, not_in_list(prepared.matched, taken.listed)
    if taken is not None:
        folder.write_list(prepared.opts.output_dir, prepared.matched, prepared.definition)
    return prepared.matched, 0


def _commit_context(prepared: Prepared, claim: Claim, not_in_run: int) -> CommitContext:
    """What the commit records in the manifest besides the parts it publishes."""
    opts, model, settings = prepared.opts, prepared.model, prepared.settings
    previous = prepared.previous
    return CommitContext(
        config={
            # Beam's options as given, then ours as resolved (absolute --input_pattern,
            # --output_dir, --reuse_from): the report matches originals against the pattern
            **prepared.pipeline_options.get_all_options(drop_default=True),
            **vars(opts),
            "run_id": claim.run_id,
            "resolved_image_size": list(model.image_size),
        },
        model={
            "handle": model.handle,
            "kind": model.kind,
            "input_size": list(model.image_size),
            "num_classes": model.num_classes,
            "output": model.output,
            "fingerprint": model.fingerprint,
            "channels": model.channels,
            "preprocess": model.preprocess,
        },
        started_at=prepared.started_at,
        run_id=claim.run_id,
        settings_hash=settings.settings_hash,
        reuse_from=opts.reuse_from,
        previous={k: previous.get(k) for k in ("run_id", "finished_at")} if previous else None,
        resumed=bool(opts.resume),
        not_in_run=not_in_run,
        definition=prepared.definition,
        no_report=bool(opts.no_report),
        records=prepared.records is not None,
        strategies=settings.strategy_config.enabled,
        lock_token=claim.taken.lock.token if claim.taken else None,
    )


def _release_and_raise(
    error: BaseException, output_dir: str, taken: folder.Taken | None
) -> NoReturn:
    """After ``error`` stopped the job: stop the workers if interrupted (none writes into the
    folder once the lock is released), release the lock, and raise what ``main`` reports:
    Interrupted, the UsageError or KeyboardInterrupt itself, or RunFailed in one line."""
    signum = received()
    if signum is not None or isinstance(error, KeyboardInterrupt):
        stop_children()
    if taken is not None:
        lock.release(output_dir, taken.lock.token)
    if signum is not None:
        raise Interrupted(signum) from None
    if isinstance(error, (options.UsageError, KeyboardInterrupt)):
        raise error
    # a dry run takes no folder: nothing to resume
    then = "rerun with --resume" if taken is not None else "a dry run writes nothing: rerun it"
    line = _write_error(error)
    if line:
        raise RunFailed(
            f"{line}; the run was not committed: free space or fix the permission, then {then}"
        ) from None
    raise RunFailed(
        f"the job failed ({type(error).__name__}: "
        f"{(str(error).strip().splitlines() or [''])[-1][:300]}); the run was "
        f"not committed: {then}"
    ) from error


def outcome(
    prepared: Prepared, claim: Claim, result: beam.runners.runner.PipelineResult
) -> RunResult:
    """The committed manifest with Beam's counters added, or RunFailed when the job ended
    without committing this run; a dry run has no manifest."""
    if prepared.dry_run:
        return RunResult(None, None, result)
    output_dir = prepared.opts.output_dir
    record = manifest.read(output_dir)
    if record is None or record.get("run_id") != claim.run_id:
        raise RunFailed(
            f"the job ended without committing {output_dir}/manifest.json: rerun with --resume"
        )
    record = _add_counters(output_dir, record, result, prepared.records is not None)
    return RunResult(record, record.get("report"), result)


# What defines a run, in the order --resume names a difference: an option that changed is
# named with both values; settings_hash catches any other setting that shapes the rows.
DEFINING = (
    "input_pattern",
    "input_format",
    "image_key",
    "id_key",
    "label_key",
    "regions_from_record",
    "regions",
    "model",
    "target",
    "artifacts",
    "attribution",
    "method",
    "settings_hash",
)


def attempt_definition(opts, fingerprint: str, settings: Settings) -> dict:
    """The options that define this run, as recorded with its input list (--resume compares)."""
    return {
        "input_pattern": opts.input_pattern,
        "input_format": input_format(opts),
        "image_key": opts.image_key,
        "id_key": opts.id_key,
        "label_key": opts.label_key,
        "regions_from_record": bool(opts.regions_from_record),
        "regions": absolute(opts.regions) if opts.regions else None,
        "model": fingerprint,
        "target": opts.target,
        "artifacts": ",".join(settings.artifacts),
        "attribution": opts.attribution,
        "method": opts.method,
        "settings_hash": settings.settings_hash,
    }


def check_same_run(output_dir: str, definition: dict) -> None:
    """--resume finishes the same run or refuses (UsageError naming the option, both values)."""
    recorded = folder.read_definition(output_dir)
    if recorded is None:  # no staged list (or one cut short): a committed run's, if any
        committed = manifest.read(output_dir)
        recorded = committed.get("definition") if isinstance(committed, dict) else None
        if not isinstance(recorded, dict) or not recorded:
            return  # nothing recorded what the run was: it is listed afresh
    fix = "rerun the interrupted command with --resume, or pass --overwrite to start again"
    if not recorded:
        raise options.UsageError(
            f"--resume: {inputs_path(output_dir)} does not record what defines the interrupted "
            f"run (written by an older version): pass --overwrite to start again"
        )
    for key in DEFINING:
        if recorded.get(key) != definition[key]:
            name = (
                "--model (fingerprint)"
                if key == "model"
                else "the settings (settings_hash)"
                if key == "settings_hash"
                else f"--{key}"
            )
            raise options.UsageError(
                f"--resume: {name} is {definition[key]!r}, the interrupted run had "
                f"{recorded.get(key)!r}: {fix}"
            )


def not_in_list(matched: list[str], listed: list[str], shown: int = 5) -> int:
    """--resume: how many files the pattern matches now that the interrupted run's list does
    not hold (they are not read); named in one line."""
    extra = sorted(set(matched) - set(listed))
    if extra:
        logging.warning(
            "--resume: %d file(s) matched now are not in the interrupted run's list and are "
            "not read (counts.not_in_run): %s%s",
            len(extra),
            ", ".join(extra[:shown]),
            f" and {len(extra) - shown} more" if len(extra) > shown else "",
        )
    return len(extra)


def _run_job(job: Job) -> beam.runners.runner.PipelineResult:
    """Build the graph, run it and wait, with the progress line and the workers' log."""
    prepared, opts = job.prepared, job.prepared.opts
    show_progress = (
        "Direct" in prepared.runner
        and opts.progress_interval > 0
        and not prepared.dry_run
        and prepared.records is None
    )  # TFRecord: the image count is unknown up front
    progress_folder = tempfile.mkdtemp(prefix="ig-progress-") if show_progress else None
    workers = WorkerLog(
        prepared.settings.output_dir,
        worker_processes(prepared.pipeline_options) and not prepared.dry_run,
    )
    reporter = (
        ProgressReporter(
            progress_folder, job.inputs, opts.progress_interval, stream=workers.console
        )
        if show_progress
        else None
    )
    try:
        p = beam.Pipeline(options=prepared.pipeline_options)
        graph.build(
            p,
            dataclasses.replace(prepared.settings, progress_folder=progress_folder),
            InputSpec(
                pattern=opts.input_pattern,
                inputs_list=inputs_path(opts.output_dir),
                records=prepared.records,
                regions=opts.regions,
                reuse_from=opts.reuse_from,
                resume_parts=job.claim.taken.resume_parts if job.claim.taken else None,
            ),
            commit_context=job.context,
        )
        if reporter:
            reporter.start()
        result = p.run()
        result.wait_until_finish()
    finally:
        if reporter:
            reporter.stop()
        workers.close()
        if progress_folder:
            shutil.rmtree(progress_folder, ignore_errors=True)
    return result


def _add_counters(output_dir: str, record: dict, result, tfrecord: bool) -> dict:
    """Beam's counters, when this launcher waited for the job, join the metrics the commit
    recorded from the data (those stay as they are)."""
    try:
        counters = manifest.metrics(result)
    except Exception:  # noqa: BLE001 - a runner without metrics: the commit's are enough
        return record
    extra = {k: v for k, v in counters.items() if k not in record["metrics"]}
    if tfrecord and "matched" in counters:
        # The commit could only count the records it found; the job's counter says how many
        # were read: every one must be in summaries or errors.
        counts = record["counts"]
        record["complete"] = bool(
            record["complete"] and counters["matched"] == counts["attributed"] + counts["failed"]
        )
        counts["matched"] = counters["matched"]
        extra = extra or {"matched": counters["matched"]}
    if extra:
        record["metrics"].update(extra)
        manifest.write(output_dir, record)
    return record


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok, 1 too many failures (or every input failed), outputs incomplete or
    a failed write, 2 bad options or a folder that cannot be used, 3 the model cannot load
    or scores a black image non-finite, 130 Ctrl-C, 143 SIGTERM (the folder left for
    --resume)."""
    logging.getLogger().setLevel(logging.WARNING)
    # A failed bundle is logged by Beam with its traceback on every attempt; main prints the
    # failure once, as one line (with the traceback only when it is not a failed write).
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    try:
        with interruptible():
            result = run(argv)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the folder is left for --resume
        print(INTERRUPTED, file=sys.stderr)
        return e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT
    except options.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModelLoadError as e:
        print(f"error: the model cannot load, nothing was read: {e}", file=sys.stderr)
        return 3
    except (RunFailed, OutputWriteError) as e:
        if e.__cause__ is not None:  # not a failed write: a bug or a broken step, show where
            traceback.print_exception(e.__cause__, file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1
    record = result.manifest
    if record is None:
        print("dry run: the job graph was built and not submitted")
        return 0
    counts = record["counts"]
    out = record["config"]["output_dir"]
    print(
        f"attributed {counts['attributed']} of {counts['matched']} images "
        f"({counts['rows']} rows), {counts['failed']} failed; model loaded "
        f"{record['metrics']['model_loads']} time(s). Outputs in {out} "
        f"(manifest: {out.rstrip('/')}/manifest.json)"
    )
    if record.get("reuse_from") or record.get("resumed"):
        source = record.get("reuse_from") or "the interrupted attempt (--resume)"
        print(f"reused {counts['reused']} image(s) from {source}, computed {counts['computed']}")
    if result.report:
        print(f"report: {result.report}")
    if record.get("report_error"):
        print(
            f"error: {record['report_error']}; the data is committed: rerun "
            f"`python -m pipeline.report {out}` once the cause is fixed",
            file=sys.stderr,
        )
        return 1
    if not record["complete"]:
        print(f"error: outputs do not account for every matched input: {counts}", file=sys.stderr)
        return 1
    if counts["matched"] and counts["failed"] == counts["matched"]:
        print(
            f"error: every one of the {counts['matched']} matched inputs failed, whatever "
            f"--max_failure_fraction says: see {out.rstrip('/')}/errors/",
            file=sys.stderr,
        )
        return 1
    fraction = counts["failed"] / counts["matched"] if counts["matched"] else 0.0
    limit = record["config"]["max_failure_fraction"]
    if fraction > limit:
        print(
            f"error: {fraction:.1%} of inputs failed, more than --max_failure_fraction "
            f"{limit}: see {out.rstrip('/')}/errors/",
            file=sys.stderr,
        )
        return 1
    return 0
