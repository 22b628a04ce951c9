"""Turn attributions into `summaries` rows and publish the mask, overlay and raw files."""

from __future__ import annotations

import io

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from attribution import masks
from attribution.images import pad_geometry
from attribution.methods import xrai
from transforms.files import publish
from transforms.records import ERRORS, NAMESPACE, error_row
from transforms.regions import join_boxes, region_key
from transforms.settings import Settings
from transforms.write import FAITHFULNESS_AUCS, STATISTICS


def artifact_name(image_id: str, target: int, rank: int) -> str:
    """``<image_id>`` for the first target of an image, ``<image_id>--class<k>`` for others."""
    return image_id if rank == 0 else f"{image_id}--class{target}"


def draw(image, attributions, heatmap, s: Settings) -> tuple[bytes, bytes]:
    """(mask, overlay) PNGs with the visualization options; XRAI draws its heat map and
    outlines the top regions covering --xrai_top_fraction of the image."""
    cmap = s.colormap or (masks.DIVERGING_COLORMAP if s.mask_polarity == "both" else masks.COLORMAP)
    if heatmap is not None:
        values = masks.styled_values(heatmap, clip_low=s.clip_low, clip_high=s.clip_percentile)
        return masks.styled_pngs(
            image,
            values,
            cmap=cmap,
            overlay=s.overlay,
            mask_type="outlines",
            outline=xrai.top_regions(heatmap, s.xrai_top_fraction),
        )
    values = masks.styled_values(
        attributions, polarity=s.mask_polarity, clip_low=s.clip_low, clip_high=s.clip_percentile
    )
    return masks.styled_pngs(
        image,
        values,
        cmap=cmap,
        overlay=s.overlay,
        mask_type=s.mask_type,
        top_fraction=s.xrai_top_fraction,
    )


def with_evidence(row: dict, evidence) -> dict:
    """The faithfulness columns, and each region's ablation (same boxes, same order), from
    the forward rows of ``attribution.faithfulness``; nulls where none were computed."""
    curves = evidence.curves if evidence is not None else {}
    aucs = evidence.aucs if evidence is not None else {}
    row.update(
        {
            "deletion_curve": _list(curves.get("deletion")),
            "insertion_curve": _list(curves.get("insertion")),
            "deletion_curve_random": _list(curves.get("deletion_random")),
            "insertion_curve_random": _list(curves.get("insertion_random")),
            **{name: aucs.get(name.replace("_auc", "")) for name in FAITHFULNESS_AUCS},
            "faithfulness_points": evidence.points if curves else None,
            "mufidelity": evidence.mufidelity if evidence is not None else None,
        }
    )
    # the engine's forward rows for this row (score_guided's scan) and the evidence's
    row["forward_evaluations"] += evidence.forward_rows if evidence is not None else 0
    ablations = evidence.ablations if evidence is not None else []
    for region, ablation in zip(row.get("regions") or [], ablations):
        region.update(
            ablation_score=ablation["ablation_score"], ablation_drop=ablation["ablation_drop"]
        )
    return row


def _list(values):
    return None if values is None else [float(v) for v in values]


class SummarizeFn(beam.DoFn):
    """(DecodedImage, [Attribution], [Evidence]) or that with its boxes after the regions
    join -> one row per target; files written first."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.written = Metrics.counter(NAMESPACE, "files_written")
        self.failed = Metrics.counter(NAMESPACE, "failed")

    def process(self, element):
        joined = isinstance(element[0], tuple)  # after the regions join
        head, boxes = element if joined else (element, None)
        image, results, *more = head
        evidence = more[0] if more else [None] * len(results)
        files: dict[str, bytes] = {}
        try:
            rows = [
                with_evidence(self._summarize(image, r, rank, files, boxes), e)
                for rank, (r, e) in enumerate(zip(results, evidence))
            ]
        except Exception as e:  # noqa: BLE001 - an image that cannot be drawn is a dead letter
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(image.uri, "write", e))
            return
        # Storage errors are not the image's fault: they propagate so the runner retries the
        # bundle (publishing is idempotent) instead of dead-lettering every image.
        for path, data in files.items():
            publish(path, data)
        self.written.inc(len(files))
        yield from rows

    def _summarize(self, image, result, rank, files, boxes=None):
        s = self.settings
        out = s.output_dir.rstrip("/")
        name = artifact_name(image.image_id, result.target, rank)
        a = result.attributions
        mask_uri = overlay_uri = raw_uri = None
        heatmap = getattr(result, "xrai_heatmap", None)
        if heatmap is None and s.default_style:
            # --artifacts: which per-image files to write; both share the mask's colours
            mask, overlay = masks.mask_and_overlay_pngs(
                image.image,
                a,
                clip_percentile=s.clip_percentile,
                mask="masks" in s.artifacts,
                overlay="overlays" in s.artifacts,
            )
            if mask is not None:
                mask_uri = f"{out}/masks/{name}.png"
                files[mask_uri] = mask
            if overlay is not None:
                overlay_uri = f"{out}/overlays/{name}.png"
                files[overlay_uri] = overlay
        elif "masks" in s.artifacts or "overlays" in s.artifacts:  # the drawing options, XRAI
            mask, overlay = draw(image.image, a, heatmap, s)
            if "masks" in s.artifacts:
                mask_uri = f"{out}/masks/{name}.png"
                files[mask_uri] = mask
            if "overlays" in s.artifacts:
                overlay_uri = f"{out}/overlays/{name}.png"
                files[overlay_uri] = overlay
        if s.write_raw or "raw" in s.artifacts:
            raw_uri = f"{out}/raw/{name}.npy"
            buffer = io.BytesIO()
            np.save(buffer, a.astype(np.float32))
            files[raw_uri] = buffer.getvalue()
        stats = masks.attribution_statistics(a)
        regions = None
        if boxes is not None:
            geometry = pad_geometry((image.height, image.width), a.shape[:2])
            regions = masks.region_masses(
                a, [(name, geometry.box_to_model(box)) for name, box in boxes]
            )
        return {
            "image_uri": image.uri,
            "image_id": image.image_id,
            "width": image.width,
            "height": image.height,
            "content_sha256": image.content_sha256,
            "target_class": result.target,
            "target_rank": rank,
            "target_label": s.label(result.target),
            "predicted_class": result.predicted_class,
            "predicted_label": s.label(result.predicted_class),
            "predicted_score": result.predicted_score,
            "target_score": result.target_score,
            "baseline_score": result.baseline_score,
            "baseline_predicts_target": result.baseline_predicts_target,
            "attribution_sum": result.attribution_sum,
            "completeness_error": result.completeness_error,
            "relative_completeness_error": result.relative_completeness_error,
            "converged": result.converged,
            "steps": result.steps,
            "gradient_evaluations": result.gradient_evaluations,
            "forward_evaluations": int(getattr(result, "forward_evaluations", 0)),
            "method": result.method,
            "baseline": getattr(result, "baseline", s.baseline),
            "score": s.score,
            "attribution": getattr(result, "attribution", s.attribution),
            "xrai_region_ranks": getattr(result, "xrai_region_ranks", None),
            "split_half_correlation": getattr(result, "split_half_correlation", None),
            "mask_uri": mask_uri,
            "overlay_uri": overlay_uri,
            "raw_uri": raw_uri,
            "model_fingerprint": s.model_fingerprint,
            "settings_hash": s.settings_hash,
            **{k: float(stats[k]) for k in STATISTICS},
            "peak_x": int(stats["peak_x"]),
            "peak_y": int(stats["peak_y"]),
            "grid_cells": s.grid_cells,
            "grid": masks.attribution_grid(a, s.grid_cells).ravel().tolist(),
            "path_alphas": result.path_alphas.tolist(),
            "path_scores": result.path_scores.tolist(),
            "regions": regions,
            "true_class": getattr(image, "true_class", None),
            "true_label": getattr(image, "true_label", None),
        }


class Summarize(beam.PTransform):
    """(DecodedImage, [Attribution]) -> (summary rows, errors).

    ``regions``: a PCollection of (region key, (index, name, box)) (transforms/regions.py),
    joined with the images by normalised uri in the graph, so the job graph stays the same
    size whatever the number of boxes."""

    def __init__(self, settings: Settings, regions=None):
        super().__init__()
        self.settings, self.regions = settings, regions

    def expand(self, attributed):
        if self.regions is not None:
            keyed = attributed | "KeyByUri" >> beam.Map(
                lambda element: (region_key(element[0].uri), element)
            )
            attributed = join_boxes(keyed, self.regions)
        return attributed | "Summarize" >> beam.ParDo(SummarizeFn(self.settings)).with_outputs(
            ERRORS, main="rows"
        )
