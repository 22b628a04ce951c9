"""The command line of ``python -m pipeline.compare``: check both runs, run the comparison
job, summarize, publish ``drift_summary.json`` and ``drift.html``, gate on ``--fail_on``.

Beam and pyarrow are imported after the arguments are parsed, so ``--help`` starts at once.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys

from pipeline.compare.thresholds import METRICS, check, parse_threshold
from pipeline.launch import UsageError, command_parser

TOP_IMAGES = 12
OUTPUTS = ("drift", "unmatched", "drift_summary.json", "drift.html")  # all a comparison writes
LOCK_SECONDS = 86400.0  # another host's comparison lock counts as stale after this


class CompareFailed(Exception):
    """The comparison job failed; the message is one line, and nothing was left behind."""


def parser() -> argparse.ArgumentParser:
    description = "Compare two runs of python -m pipeline image by image (matched by content hash)."
    p = command_parser("python -m pipeline.compare", description)
    p.add_argument("run_a", help="The earlier run's output folder (local or gs://).")
    p.add_argument("run_b", help="The later run's output folder.")
    p.add_argument(
        "--output_dir",
        required=True,
        help="Where drift/, unmatched/, drift_summary.json and drift.html go.",
    )
    p.add_argument(
        "--fail_on",
        action="append",
        default=[],
        help="Exit 1 when METRIC<VALUE (or >, <=, >=) holds; repeatable. Metrics: "
        + ", ".join(METRICS),
    )
    p.add_argument(
        "--max_strategy_shift",
        type=float,
        default=None,
        help="Exit 1 when a class's strategy shares moved more than this (0-1: the share of "
        "its rows that changed strategy) or a class gained a suspicious strategy; runs need "
        "DIR/strategies (python -m pipeline --strategies auto).",
    )
    p.add_argument(
        "--top", type=int, default=TOP_IMAGES, help="Most changed images shown in drift.html."
    )
    return p


def _run_record(folder: str, manifest: dict) -> dict:
    return {
        "folder": folder,
        "run_id": manifest.get("run_id"),
        "finished_at": manifest.get("finished_at"),
        "model_fingerprint": (manifest.get("model") or {}).get("fingerprint"),
        "settings_hash": manifest.get("settings_hash"),
    }


def _check_output_dir(out: str, folders: dict[str, str]) -> None:
    """UsageError, before anything is read or written, when the comparison would write into
    a run folder (--output_dir is a run, or inside one of the two) or replace one (a run lies
    in a folder the comparison deletes and rewrites: ``OUTPUT_DIR/drift`` ...); folders are
    compared resolved, so a symbolic link is no way around it."""
    from pipeline.folder import within
    from transforms.files import exists
    from transforms.layout import MANIFEST

    for name, folder in folders.items():
        if within(out, folder):
            raise UsageError(
                f"--output_dir {out} is inside run {name.upper()} {folder}: the comparison "
                f"would write into a run folder; choose a folder outside both runs"
            )
        for output in OUTPUTS:
            if within(folder, f"{out}/{output}"):
                raise UsageError(
                    f"--output_dir {out}: run {name.upper()} {folder} is in {out}/{output}, "
                    f"which the comparison replaces; choose another --output_dir"
                )
    if exists(f"{out}/{MANIFEST}"):
        raise UsageError(
            f"--output_dir {out} is a run folder (it has {MANIFEST}): the comparison does not "
            f"write into a run; choose another folder"
        )


def run(argv: list[str]) -> dict:
    """Compare, write everything, return drift_summary.json's content. UsageError for a bad
    argument, RunFolderError for a folder that is not a readable finished run, both before
    any work."""
    args, beam_args = parser().parse_known_args(argv)
    for text in args.fail_on:  # refuse a bad threshold before any work
        parse_threshold(text)
    if args.max_strategy_shift is not None and not 0 <= args.max_strategy_shift <= 1:
        raise UsageError(f"--max_strategy_shift must be in [0, 1], got {args.max_strategy_shift}")
    if args.top < 0:  # was shown as 0 silently
        raise UsageError(f"--top must be >= 0 (0 shows no image), got {args.top}")
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.compare import graph
    from pipeline.folder import make_dirs, take
    from pipeline.launch import ship_package
    from pipeline.lock import release
    from transforms.files import absolute, read_manifest

    out = absolute(args.output_dir)
    folders = {"a": absolute(args.run_a), "b": absolute(args.run_b)}
    _check_output_dir(out, folders)
    runs, records, manifests = {}, {}, {}
    for name, folder in folders.items():
        runs[name] = (folder, graph.summary_columns(folder))
        manifests[name] = read_manifest(folder)
        records[name] = _run_record(folder, manifests[name])
    options = PipelineOptions(beam_args)
    ship_package(options)
    try:
        make_dirs(out)
    except OSError as e:
        raise UsageError(
            f"--output_dir {out}: cannot create it ({e.strerror}): choose another folder"
        ) from None
    # one comparison at a time in a folder (a second one would mix its parts in): the run
    # folder's lock; a rerun, or one after a killed comparison, replaces the earlier outputs
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("compare-%Y%m%dT%H%M%SZ")
    taken = take(
        out, run_id=run_id, overwrite=True, resume=False, lock_timeout=LOCK_SECONDS, outputs=OUTPUTS
    )
    try:
        return _compare(args, out, runs, records, manifests, options)
    finally:
        release(out, taken.lock.token)


def _compare(args, out: str, runs: dict, records: dict, manifests: dict, options) -> dict:
    import apache_beam as beam

    from pipeline.compare import graph, page, strategies, summary
    from pipeline.folder import delete_tree
    from transforms.files import json_bytes, publish, read_parquet

    beam_log = logging.getLogger("apache_beam")
    level = beam_log.level
    beam_log.setLevel(logging.CRITICAL)  # a failing step's traceback: said in one line below
    try:
        with beam.Pipeline(options=options) as p:
            graph.build(p, runs, out)
    except Exception as e:  # noqa: BLE001 - whatever failed in the job: one line, no leftovers
        for name in OUTPUTS:  # the sinks' beam-temp-* folders and any part written
            delete_tree(f"{out}/{name}")
        last = (str(e).strip().splitlines() or [""])[-1][:300]
        raise CompareFailed(
            f"the comparison job failed ({type(e).__name__}: {last}); nothing was written to {out}"
        ) from None
    finally:
        beam_log.setLevel(level)
    drift = read_parquet(out, "drift")
    unmatched = read_parquet(out, "unmatched")
    metrics, classes = summary.summarize(drift, unmatched)
    strategy_drift = strategies.drift(
        runs["a"][0], runs["b"][0], manifests, args.max_strategy_shift
    )
    metrics.update(strategy_drift["metrics"])
    thresholds = check(metrics, args.fail_on + strategies.gate(args.max_strategy_shift))
    iou_sources = drift.column("iou_source").to_pylist() if drift.num_rows else []
    result = {
        "output_dir": out,
        "runs": records,
        "metrics": metrics,
        "per_class": classes,
        "iou_sources": {s: iou_sources.count(s) for s in ("raw", "grid")},
        "thresholds": thresholds,
        "passed": not any(t["violated"] for t in thresholds),
        "strategies": strategy_drift,
        "max_strategy_shift": args.max_strategy_shift,
    }
    publish(f"{out}/drift_summary.json", json_bytes(result))
    html = page.render(result, classes, summary.most_changed(drift, args.top))
    publish(f"{out}/drift.html", html.encode("utf-8"))
    return result


def _show(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 no threshold violated, 1 a threshold violated or the comparison could not
    be done or written, 2 bad arguments or a folder that is not a readable finished run."""
    logging.getLogger().setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser().parse_known_args(argv)  # --help exits here, before Beam is imported
    from transforms.files import RunFolderError

    try:
        result = run(argv)
    except (UsageError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CompareFailed, OSError) as e:  # OutputWriteError: "cannot write FILE: reason"
        print(f"error: {e}", file=sys.stderr)
        return 1
    m, out = result["metrics"], result["output_dir"]
    print(
        f"compared {m['images_compared']} images ({m['images_only_in_a']} only in A, "
        f"{m['images_only_in_b']} only in B): {m['changed_prediction_count']} changed "
        f"prediction, median grid correlation {_show(m['median_grid_correlation'])}, median "
        f"top-5% IoU {_show(m['median_top5_iou'])}. Report: {out}/drift.html"
    )
    if m.get("strategy_classes_compared") is not None:
        flagged = [c for c in result["strategies"]["classes"] if c["flagged"]]
        print(
            f"strategies: {m['strategy_classes_compared']} classes compared, largest shift "
            f"{_show(m['max_strategy_shift'])}, {m['new_suspicious_strategies']} new suspicious; "
            f"flagged: {', '.join(c['label'] for c in flagged[:10]) or 'none'}"
        )
    violated = [t for t in result["thresholds"] if t["violated"]]
    for t in violated:
        print(
            f"error: --fail_on {t['threshold']} violated: {t['metric']} is "
            f"{'undefined (nothing compared)' if t['actual'] is None else t['actual']}",
            file=sys.stderr,
        )
    return 1 if violated else 0
