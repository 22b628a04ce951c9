"""The attribution engine: Integrated Gradients for any TensorFlow image classifier.

No Beam here; usable from a notebook::

    from attribution import load_model, decode_image, resize_with_pad, make_baseline
    from attribution import IntegratedGradients, Request

The names below are loaded on first use (PEP 562), so ``import attribution`` and the
TensorFlow-free submodules (``attribution.hashing``, ``attribution.quadrature``) do not pay
for importing TensorFlow until something needs it.
"""

from __future__ import annotations

from attribution.lazy import lazy_attributes

_EXPORTS = {  # submodule -> the names it defines
    "baselines": ("BASELINES", "make_baseline"),
    "images": (
        "ImageError",
        "PadGeometry",
        "decode_image",
        "model_input",
        "pad_geometry",
        "resize_with_pad",
        "to_grayscale",
    ),
    "integrated_gradients": ("Attribution", "IntegratedGradients", "Request", "Targets"),
    "masks": (
        "attribution_grid",
        "attribution_statistics",
        "mask_png",
        "overlay_png",
        "region_masses",
        "signed_mask_png",
    ),
    "models": ("LoadedModel", "ModelLoadError", "load_model"),
    "preprocessing": ("PREPROCESS",),
    "quadrature": ("METHODS", "Rule", "refine", "rule"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
