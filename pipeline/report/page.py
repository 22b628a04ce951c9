"""The run report, ``DIR/report.html``: the sections of ``pipeline.report.sections`` in the
page shell of ``pipeline.html``, and ``write_report``.

The page is self-contained: charts and images are ``data:`` URIs and its
Content-Security-Policy forbids every network fetch, so it opens from disk anywhere.
"""

from __future__ import annotations

from pipeline.html import render_page
from pipeline.report.read import REPORT_CLASSES, Run, read_run
from pipeline.report.sections import SECTIONS
from transforms.files import publish
from transforms.layout import REPORT, join


def render(run: Run) -> str:
    """The report page for ``run`` as one HTML string."""
    return render_page(
        page="report",
        title=f"IG report: {run.output_dir}",
        heading="Integrated Gradients report",
        subject=run.output_dir,
        sections=SECTIONS,
        source=run,
    )


def write_report(output_dir: str, report_classes: int | None = None) -> str:
    """Write ``output_dir/report.html`` (replacing any) and return its path. The per-class
    sections draw ``report_classes`` classes (default: the run's --report_classes)."""
    run = read_run(output_dir)
    run.report_classes = report_classes or run.config("report_classes") or REPORT_CLASSES
    path = join(run.output_dir, REPORT)
    publish(path, render(run).encode("utf-8"))
    return path
