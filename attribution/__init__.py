"""The attribution engine: Integrated Gradients for any TensorFlow image classifier.

No Beam here; usable from a notebook::

    from attribution import load_model, decode_image, resize_with_pad, make_baseline
    from attribution import IntegratedGradients, Request
"""
from attribution.baselines import BASELINES, make_baseline
from attribution.images import ImageError, PadGeometry, decode_image, pad_geometry, resize_with_pad
from attribution.images import model_input, to_grayscale
from attribution.preprocessing import PREPROCESS
from attribution.integrated_gradients import Attribution, IntegratedGradients, Request, Targets
from attribution.masks import (attribution_grid, attribution_statistics, mask_png, overlay_png,
                               region_masses, signed_mask_png)
from attribution.models import LoadedModel, ModelLoadError, load_model
from attribution.quadrature import METHODS, Rule, refine, rule

__all__ = [
    "Attribution", "BASELINES", "ImageError", "IntegratedGradients", "LoadedModel", "METHODS",
    "ModelLoadError", "PadGeometry", "Request", "Rule", "Targets", "attribution_grid",
    "attribution_statistics", "decode_image", "load_model", "make_baseline", "mask_png",
    "overlay_png", "pad_geometry", "refine", "region_masses", "resize_with_pad", "rule",
    "signed_mask_png", "model_input", "to_grayscale", "PREPROCESS",
]
