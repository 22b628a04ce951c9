"""The attribution engine: Integrated Gradients for any TensorFlow image classifier.

No Beam here; usable from a notebook::

    from attribution import load_model, decode_image, resize_with_pad, make_baseline
    from attribution import IntegratedGradients, Request

The names below are loaded on first use (PEP 562), so ``import attribution`` and the
TensorFlow-free submodules (``attribution.hashing``, ``attribution.quadrature``) do not pay
for importing TensorFlow until something needs it.
"""
from __future__ import annotations

import importlib

# name -> the submodule that defines it
_EXPORTS = {
    "BASELINES": "baselines", "make_baseline": "baselines",
    "ImageError": "images", "PadGeometry": "images", "decode_image": "images",
    "pad_geometry": "images", "resize_with_pad": "images",
    "Attribution": "integrated_gradients", "IntegratedGradients": "integrated_gradients",
    "Request": "integrated_gradients", "Targets": "integrated_gradients",
    "attribution_grid": "masks", "attribution_statistics": "masks", "mask_png": "masks",
    "overlay_png": "masks", "region_masses": "masks", "signed_mask_png": "masks",
    "LoadedModel": "models", "ModelLoadError": "models", "load_model": "models",
    "METHODS": "quadrature", "Rule": "quadrature", "refine": "quadrature", "rule": "quadrature",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attribution' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"attribution.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
