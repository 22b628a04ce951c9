"""`python -m pipeline.report DIR`: one self-contained HTML page about a finished run.

Modules, in the order the work flows:

- ``read``: read a run folder into per-class aggregates (``read_run``, ``Run``);
- ``insights``: the findings the data supports (``findings``, ``shortcuts``);
- ``charts``: PNG charts (matplotlib, imported only when something is drawn);
- ``sources``: what the pages read besides the Parquet and the manifest: originals only from
  the run's inputs, masks and overlays only from inside the run folder;
- ``core``: the report's core sections (run, findings, errors, completeness, saturation,
  heatmaps, regions, examples), a data function each;
- ``strategies``: the Strategies section (``DIR/strategies``), the suspicion ranking the
  per-class sections follow (``--report_classes``) and a finding per suspicious strategy;
- ``confusion``, ``faithfulness``: the Confusion and Faithfulness sections;
- ``sections``: the report's sections in page order, the one list the page is built from;
- ``page``: ``render`` and ``write_report``, the sections in the shared page shell
  (``pipeline.html``, which also holds every template);
- ``methods``: the page putting several runs (methods) side by side, ``write_methods``;
- ``cli``: the command line (it imports nothing heavy before the arguments are parsed).

The names below are loaded on first use (PEP 562), so ``--help`` starts without Beam or
TensorFlow.
"""

from __future__ import annotations

from attribution.lazy import lazy_attributes

_EXPORTS = {  # submodule -> the names it defines
    "read": ("BATCH_ROWS", "ClassStats", "Example", "ReportError", "Run", "read_run"),
    "insights": ("Shortcut", "findings", "shortcuts"),
    "page": ("render", "write_report"),
    "methods": ("METHODS_NAME", "write_methods"),
    "cli": ("main",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, _EXPORTS.keys() | {"charts", "sources"})
