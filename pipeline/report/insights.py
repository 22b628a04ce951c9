"""What the data supports saying about a run, in plain text, most important first.

Names are set between backticks; the page shows them as code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attribution.methods.config import PIXEL_MAPS
from pipeline.report.read import ClassStats, Run

MIN_ROWS = 5  # rows with regions a class needs before a finding speaks about it
# A class "clearly" puts the largest share on a region when it beats the other classes'
# mean by both this margin (absolute share) and this ratio. The margin is small because
# the telling regions are often small (a watermark of 1% of the image holding 18% of the
# attribution); the ratio carries the weight.
SHORTCUT_MARGIN = 0.05
SHORTCUT_RATIO = 3.0


@dataclass(frozen=True)
class Shortcut:
    """A class that puts clearly more positive attribution on a region than the others."""

    region: str
    class_id: int
    label: str
    share: float
    others: float  # mean share of the other classes


def shortcuts(run: Run) -> list[Shortcut]:
    """Per region name, the class whose mean share clearly beats the other classes' mean
    (by SHORTCUT_MARGIN and SHORTCUT_RATIO), among classes with MIN_ROWS rows with it."""
    found = []
    for name in run.region_names():
        shares = {
            c: s.region_share(name)
            for c, s in run.classes.items()
            if s.region_rows[name] >= MIN_ROWS
        }
        if len(shares) < 2:
            continue
        top = max(shares, key=lambda c: (shares[c], -c))
        others = float(np.mean([v for c, v in shares.items() if c != top]))
        if shares[top] - others >= SHORTCUT_MARGIN and shares[top] >= SHORTCUT_RATIO * others:
            found.append(Shortcut(name, top, run.classes[top].label, shares[top], others))
    return found


def findings(run: Run) -> list[str]:
    """Plain-text findings the data supports, most important first; `x` marks names.
    Faithfulness failures lead (pipeline/evidence.py); a shortcut quotes its ablation; a
    suspicious strategy (pipeline/strategies.py) is one finding each."""
    from pipeline import evidence
    from pipeline.report.strategies import strategy_findings

    table = evidence.read_summaries(run.output_dir, evidence.COLUMNS)
    failed, held = evidence.split_findings(table)
    return [
        *failed,
        *strategy_findings(run),
        *_shortcut_findings(run, table),
        *held,
        *_region_findings(run),
        *_completeness_findings(run),
        *_failure_findings(run),
    ]


def _shortcut_findings(run: Run, table=None) -> list[str]:
    from pipeline.evidence import ablation_sentence

    out = []
    for s in shortcuts(run):
        stats = run.classes[s.class_id]
        area = stats.area_share(s.region)
        covers = f" (the region covers {area:.1%} of the image)" if area else ""
        ratio = f"{s.share / s.others:.0f}x" if s.others > 0 else "far more than"
        out.append(
            f"class `{s.label}` puts {s.share:.0%} of its positive attribution on region "
            f"`{s.region}`{covers}, {ratio} the other classes' {s.others:.0%} on "
            f"average, and its peak falls there in {stats.hit_rate(s.region):.0%} of "
            f"images: check whether `{s.region}` is a shortcut the model uses for "
            f"`{s.label}`"
        )
        ablation = ablation_sentence(table, s.label, s.region) if table is not None else None
        if ablation:
            out[-1] += f"; {ablation}"
    return out


def _region_findings(run: Run) -> list[str]:
    out = []
    for class_id in run.shown_classes():
        s = run.classes[class_id]
        names = sorted(
            (n for n in s.region_rows if s.region_rows[n] >= MIN_ROWS),
            key=lambda n: (-s.region_share(n), n),
        )
        if not names:
            continue
        first, *rest = names
        out.append(
            ", ".join(
                [
                    f"class `{s.label}`: {s.region_share(first):.0%} of positive attribution falls on "
                    f"region `{first}` {_peak(s, first)}",
                    *(f"{s.region_share(n):.0%} on `{n}` {_peak(s, n)}" for n in rest),
                ]
            )
        )
    return out


def _peak(s: ClassStats, name: str) -> str:
    return f"(peak there in {s.hit_rate(name):.0%} of images)"


def _completeness_findings(run: Run) -> list[str]:
    if not run.rows:
        return ["No row was attributed: there is nothing to say about attributions."]
    if run.config("attribution") in PIXEL_MAPS:
        return [
            f"--attribution {run.config('attribution')} has no completeness axiom: its rows "
            "carry no completeness check (read the faithfulness curves instead)."
        ]
    out = []
    tolerance = run.config("tolerance")
    target = f"the completeness tolerance {tolerance:g}" if tolerance else "completeness"
    if run.unconverged:
        # which rule converges in fewer rows depends on the model (the demo's: trapezoid):
        # more points is the advice that holds for every rule
        advice = f"raise --max_steps (this run: {run.config('max_steps')})"
        out.append(
            f"{run.unconverged} of {run.rows} rows ({run.unconverged / run.rows:.1%}) "
            f"did not converge to {target}: their attributions do not add up to the "
            f"score change; {advice}"
        )
    finite = run.relative_errors[np.isfinite(run.relative_errors)]
    if finite.size:
        summary = (
            f"median relative completeness error {np.median(finite):.2g}, max {finite.max():.2g}"
        )
        out.append(
            f"All {run.rows} rows converged to {target} ({summary})."
            if not run.unconverged
            else f"Across all rows: {summary}."
        )
    if finite.size < run.rows:
        out.append(
            f"{run.rows - finite.size} rows have no finite relative completeness "
            f"error (the target score equals the baseline score)."
        )
    return out


def _failure_findings(run: Run) -> list[str]:
    counts = run.manifest.get("counts") or {}
    matched = counts.get("matched")
    failed = counts.get("failed", run.error_count)
    out = []
    if not failed:
        out.append("No input failed.")
    else:
        of = f" of {matched} inputs ({failed / matched:.1%})" if matched else " inputs"
        kinds = ", ".join(
            f"{kind} at {stage} ({n})" for (stage, kind), n in run.error_kinds.most_common(3)
        )
        out.append(f"{failed}{of} failed" + (f"; most common: {kinds}" if kinds else "") + ".")
    if run.manifest.get("complete") is False:
        out.append(
            f"The outputs do not account for every matched input (missing "
            f"{counts.get('missing', '?')}, in both summaries and errors "
            f"{counts.get('in_both', '?')}): the run did not finish cleanly."
        )
    return out
