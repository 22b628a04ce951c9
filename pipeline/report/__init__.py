"""`python -m pipeline.report DIR`: one self-contained HTML page about a finished run.

Modules, in the order the work flows:

- ``read``: read a run folder into per-class aggregates (``read_run``, ``Run``);
- ``insights``: the findings the data supports (``findings``, ``shortcuts``);
- ``charts``: PNG charts (matplotlib, imported only when something is drawn);
- ``templating``: the Jinja2 page shell shared by every page (the report, the comparison, ...),
  and how to add a section: a template plus a data function;
- ``page``: the report's sections and ``write_report``;
- ``cli``: the command line (it imports nothing heavy before the arguments are parsed).

The names below are loaded on first use (PEP 562), so ``--help`` starts without Beam or
TensorFlow.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Run": "read", "ClassStats": "read", "Example": "read", "ReportError": "read",
    "read_run": "read", "BATCH_ROWS": "read",
    "Shortcut": "insights", "findings": "insights", "shortcuts": "insights",
    "REPORT_NAME": "page", "render": "page", "write_report": "page",
    "main": "cli",
}
_SUBMODULES = ("charts", "cli", "insights", "page", "read", "templating")
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"pipeline.report.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipeline.report.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
