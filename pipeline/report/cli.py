"""The command line of ``python -m pipeline.report``."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.launch import Parser
from transforms.layout import REPORT


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m pipeline.report",
        description="Write DIR/report.html, a self-contained HTML report of a pipeline run; "
        "with several DIRs, a page putting their methods side by side (--output).",
    )
    p.add_argument(
        "output_dir", metavar="DIR", nargs="+", help="the --output_dir of a finished run"
    )
    p.add_argument(
        "--output",
        default=None,
        help="with several DIRs: where the side-by-side page is written",
    )
    p.add_argument(
        "--report_classes",
        type=int,
        default=None,
        help="classes the per-class sections draw, most suspicious strategies first "
        "(default: the run's --report_classes, 24)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 written, 1 the page could not be written, 2 a folder is not a readable
    run folder or --output cannot be a page. Each failure is one line."""
    args = parser().parse_args(argv)
    if len(args.output_dir) == 1 and args.output is not None:
        print(
            f"error: --output is for the side-by-side page of several DIRs; one run's report "
            f"is always {os.path.join(args.output_dir[0], REPORT)}: drop --output",
            file=sys.stderr,
        )
        return 2
    if args.report_classes is not None and args.report_classes < 1:
        print(f"error: --report_classes must be >= 1, got {args.report_classes}", file=sys.stderr)
        return 2
    from pipeline.report.methods import METHODS_NAME, write_methods
    from pipeline.report.page import write_report
    from transforms.files import OutputWriteError, RunFolderError

    args.output = args.output or METHODS_NAME
    if len(args.output_dir) > 1 and "://" not in args.output and os.path.isdir(args.output):
        print(
            f"error: --output {args.output} is a folder: name the page's file, e.g. "
            f"{os.path.join(args.output, METHODS_NAME)}",
            file=sys.stderr,
        )
        return 2
    from pipeline.folder import within

    inside = [d for d in args.output_dir if len(args.output_dir) > 1 and within(args.output, d)]
    if inside:  # it replaced whatever file it named there: a run's manifest.json, a part
        print(
            f"error: --output {args.output} is inside {inside[0]}, a run folder the page reads: "
            f"name a file outside the runs, e.g. {METHODS_NAME}",
            file=sys.stderr,
        )
        return 2

    try:
        if len(args.output_dir) > 1:
            path = write_methods(args.output_dir, args.output)
        else:
            path = write_report(args.output_dir[0], args.report_classes)
    except RunFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OutputWriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"report: {path}")
    return 0
