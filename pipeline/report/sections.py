"""The run report's sections, in page order: the one list the page is built from.

Each row is a ``Section`` (see ``pipeline.html``): its anchor, navigation title, heading and
data function; the template is ``pipeline/html/templates/report/<anchor>.html``. A new section
is a template, a data function in the module of its topic, and one line here.
"""

from __future__ import annotations

from pipeline.html import Section, Sections
from pipeline.report import confusion, core, faithfulness, strategies

# fmt: off
SECTIONS = Sections(
    Section(anchor, nav, heading, data)
    for anchor, nav, heading, data in (
        ("run", "Run", "Run", core.run_section),
        ("findings", "Findings", "Findings", core.findings_section),
        ("strategies", "Strategies", "Strategies: what each class relies on", strategies.strategies_section),
        ("errors", "Errors", "Errors", core.errors_section),
        ("completeness", "Completeness", "Completeness", core.completeness_section),
        ("saturation", "Saturation", "Saturation curves", core.saturation_section),
        ("heatmaps", "Heatmaps", "Where the attribution lies, per class", core.heatmaps_section),
        ("regions", "Regions", "Regions", core.regions_section),
        ("confusion", "Confusion", "Predicted vs true class", confusion.confusion_section),
        ("faithfulness", "Faithfulness", "Faithfulness: deletion and insertion against a random order, MuFidelity", faithfulness.faithfulness_section),
        ("examples", "Examples", "Most and least concentrated images", core.examples_section),
    )
)
# fmt: on
