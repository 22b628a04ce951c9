"""The methods' names and settings, without TensorFlow (option parsing needs only these)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from attribution.baselines import BASELINES
from attribution.config import (
    ATTRIBUTIONS,
    CAMS,
    DEFAULTS,
    AttributionConfig,
    fields_from,
    parse_baselines,
)

EG_ALPHAS = ("random", "quadrature")
# expected gradients: one uniform alpha per (image, reference) pair (the default), or the
# --method rule per pair when --method is given
RANDOM_ALPHA, QUADRATURE_ALPHA = EG_ALPHAS
# one value per pixel, no path and no completeness axiom (attribution.methods.results.pixel_map)
PIXEL_MAPS = (*CAMS, "occlusion", "rise")
# the options only these methods read: in settings_hash only when that method runs
METHOD_OPTIONS = {
    "gradcam": ("layer",),
    "gradcam_plus_plus": ("layer",),
    "occlusion": ("occlusion_window", "occlusion_stride"),
    "rise": ("rise_masks", "rise_grid", "rise_p"),
}
XRAI_BASELINES = ("black", "white")
GUIDED_STEPS = 128  # Guided IG's steps when --steps is not given
PIXEL_MAP_OPTIONS = tuple(dict.fromkeys(n for names in METHOD_OPTIONS.values() for n in names))


@dataclass(frozen=True, kw_only=True)
@fields_from(
    AttributionConfig,
    (
        "attribution",
        "seed",
        "noise_sigma",
        "noise_samples",
        "max_blur_sigma",
        "guided_fraction",
        *PIXEL_MAP_OPTIONS,
    ),
)
class MethodConfig:
    """What ``attribution.methods.explain`` computes: the method and its options (defaults:
    AttributionConfig's). The options a user passes are validated by AttributionConfig;
    here only what a direct caller could get wrong that the methods do not check when they
    run (their messages name these parameters)."""

    baselines: tuple[str, ...] = parse_baselines(DEFAULTS.baseline)
    expected_gradients_alpha: str = RANDOM_ALPHA

    def __post_init__(self):
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(
                f"attribution must be one of {', '.join(ATTRIBUTIONS)}, got {self.attribution!r}"
            )
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown or not self.baselines:
            raise ValueError(f"baselines must name some of {', '.join(BASELINES)}, got {unknown}")
        if self.expected_gradients_alpha not in EG_ALPHAS:
            raise ValueError(
                f"expected_gradients_alpha must be one of {', '.join(EG_ALPHAS)}, "
                f"got {self.expected_gradients_alpha!r}"
            )
        for name, ok, rule in (  # past these the methods would average nothing or not end
            ("noise_sigma", self.noise_sigma > 0, "> 0"),
            ("noise_samples", self.noise_samples >= 1, ">= 1"),
            ("rise_masks", self.rise_masks >= 2 and not self.rise_masks % 2, "even and >= 2"),
            ("rise_grid", self.rise_grid >= 1, ">= 1"),
            ("rise_p", 0 < self.rise_p < 1, "in (0, 1)"),
        ):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

    @classmethod
    def of(cls, options, **changes) -> MethodConfig:
        """The method settings of an AttributionConfig, a Settings or an options namespace."""
        names = {f.name for f in dataclasses.fields(cls)} - {"baselines"}
        return cls(
            **{name: getattr(options, name) for name in names if hasattr(options, name)},
            baselines=parse_baselines(options.baseline),
            **changes,
        )

    @property
    def baseline_label(self) -> str:
        """What the ``baseline`` column says for this method."""
        if self.attribution == "blur_ig":
            return f"blur:{self.max_blur_sigma:g}"
        if self.attribution == "xrai":
            return ",".join(XRAI_BASELINES)
        if self.attribution == "expected_gradients":
            return "dataset"
        if self.attribution in CAMS:
            return "none"  # no reference input: the map weighs the layer's activations
        return ",".join(self.baselines)


def default_layer(layers: tuple[str, ...]) -> str:
    """The last layer with a 4-D output (Grad-CAM's usual choice: the last convolution)."""
    if not layers:
        raise ValueError("the model has no layer with a 4-D output: Grad-CAM needs one")
    return layers[-1]


def check_layer(kind: str, layers: tuple[str, ...], layer: str | None, attribution: str) -> str:
    """The layer to use; ValueError (one line) for a model whose layers cannot be reached or
    a layer that is not there or not 4-D."""
    if kind not in ("keras", "h5"):
        raise ValueError(
            f"--attribution {attribution} needs the model's layers, which a {kind} handle "
            "does not expose: pass the Keras model as a .keras file (model.save('m.keras'))"
        )
    if layer is None:
        return default_layer(layers)
    if layer not in layers:
        shown = ", ".join(layers[-5:]) or "none"
        raise ValueError(
            f"--layer {layer!r} is not a layer of the model with a 4-D output; the last "
            f"ones are: {shown}"
        )
    return layer
