"""The run report's sections, in page order: the one list the page is built from.

Each entry is a ``Section`` (see ``pipeline.html``): its anchor, navigation title, heading and
data function; the template is ``pipeline/html/templates/report/<anchor>.html``. A new section
is a template, a data function in the module of its topic, and one line here.
"""

from __future__ import annotations

from pipeline.html import Section, Sections
from pipeline.report import confusion, core, faithfulness, strategies

SECTIONS = Sections(
    [
        Section("run", "Run", "Run", core.run_section),
        Section("findings", "Findings", "Findings", core.findings_section),
        Section(
            "strategies",
            "Strategies",
            "Strategies: what each class relies on",
            strategies.strategies_section,
        ),
        Section("errors", "Errors", "Errors", core.errors_section),
        Section("completeness", "Completeness", "Completeness", core.completeness_section),
        Section("saturation", "Saturation", "Saturation curves", core.saturation_section),
        Section(
            "heatmaps", "Heatmaps", "Where the attribution lies, per class", core.heatmaps_section
        ),
        Section("regions", "Regions", "Regions", core.regions_section),
        Section("confusion", "Confusion", "Predicted vs true class", confusion.confusion_section),
        Section(
            "faithfulness",
            "Faithfulness",
            "Faithfulness: deletion and insertion against a random order, MuFidelity",
            faithfulness.faithfulness_section,
        ),
        Section(
            "examples", "Examples", "Most and least concentrated images", core.examples_section
        ),
    ]
)
