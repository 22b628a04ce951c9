"""The command line of ``python -m pipeline.report``."""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description="Write DIR/report.html, a self-contained HTML report of a pipeline run.",
    )
    p.add_argument("output_dir", metavar="DIR", help="the --output_dir of a finished run")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 written, 2 the folder is not a readable run folder."""
    args = parser().parse_args(argv)
    from pipeline.report.page import write_report
    from transforms.files import RunFolderError

    try:
        path = write_report(args.output_dir)
    except RunFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
