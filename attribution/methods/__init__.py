"""The attribution methods beside plain IG, all as paths and weights over the engine's packed
model calls (``IntegratedGradients.attribute`` for straight lines, ``.gradients`` for the rest).

- ``ig``: IG from each ``--baseline`` in a list, averaged (one baseline: the engine's IG).
- ``smoothgrad``: IG of ``noise_samples`` noisy copies x + N(0, noise_sigma^2) (sigma as a
  fraction of the model's [0, 1] input range, noise seeded by image content), averaged.
- ``expected_gradients``: baselines are ``references`` (images sampled from the input set);
  ``random`` alpha: one uniform alpha per (image, reference) pair (Erion et al.), or the
  ``quadrature`` rule per pair (IG from each reference, averaged).
- ``blur_ig``: the path from a Gaussian blur of sigma ``max_blur_sigma`` to the image.
- ``guided_ig``: the adaptive path of Guided IG from each baseline.
- ``xrai``: IG from black and white, then regions ranked by attribution density.

Every result carries a completeness check: per baseline / per copy (worst, or mean over
SmoothGrad copies), against F(blurred) for Blur IG, against the mean F(reference) for
expected gradients with random alphas (there completeness holds only in expectation).
"""

from __future__ import annotations

from attribution.lazy import lazy_attributes

_EXPORTS = {  # submodule -> the names it defines; loaded on first use (no TensorFlow for config)
    "config": (
        "ATTRIBUTIONS",
        "EG_ALPHAS",
        "GUIDED_STEPS",
        "XRAI_BASELINES",
        "MethodConfig",
        "parse_baselines",
    ),
    "explain": ("explain", "noisy_copies"),
    "results": ("Explanation",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
