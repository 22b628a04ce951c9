"""The methods' names and settings, without TensorFlow (option parsing needs only these)."""

from __future__ import annotations

from dataclasses import dataclass

from attribution.baselines import BASELINES
from attribution.config import (
    ATTRIBUTIONS,
    DEFAULTS,
    MAX_RISE_GRID,
    MAX_RISE_MASKS,
    MAX_SAMPLES,
)

EG_ALPHAS = ("random", "quadrature")
CAMS = ("gradcam", "gradcam_plus_plus")  # need a Keras model's layers
# one value per pixel, no path and no completeness axiom (attribution.methods.results.pixel_map)
PIXEL_MAPS = (*CAMS, "occlusion", "rise")
# the options each of issue 22's methods reads: in settings_hash only when that method runs
METHOD_OPTIONS = {
    "gradcam": ("layer",),
    "gradcam_plus_plus": ("layer",),
    "occlusion": ("occlusion_window", "occlusion_stride"),
    "rise": ("rise_masks", "rise_grid", "rise_p"),
}
XRAI_BASELINES = ("black", "white")
GUIDED_STEPS = 128  # Guided IG's steps when --steps is not given


@dataclass(frozen=True)
class MethodConfig:
    attribution: str = DEFAULTS.attribution
    baselines: tuple[str, ...] = tuple(DEFAULTS.baseline.split(","))
    seed: int = DEFAULTS.seed
    noise_sigma: float = DEFAULTS.noise_sigma
    noise_samples: int = DEFAULTS.noise_samples
    max_blur_sigma: float = DEFAULTS.max_blur_sigma
    guided_fraction: float = DEFAULTS.guided_fraction
    expected_gradients_alpha: str = "random"
    layer: str | None = DEFAULTS.layer
    occlusion_window: int = DEFAULTS.occlusion_window
    occlusion_stride: int = DEFAULTS.occlusion_stride
    rise_masks: int = DEFAULTS.rise_masks
    rise_grid: int = DEFAULTS.rise_grid
    rise_p: float = DEFAULTS.rise_p

    def __post_init__(self):
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(
                f"--attribution must be one of {', '.join(ATTRIBUTIONS)}, got {self.attribution!r}"
            )
        parse_baselines(",".join(self.baselines))
        if not self.noise_sigma > 0:
            raise ValueError(f"--noise_sigma must be > 0, got {self.noise_sigma!r}")
        if not 1 <= self.noise_samples <= MAX_SAMPLES:
            raise ValueError(
                f"--noise_samples must be from 1 to {MAX_SAMPLES}, got {self.noise_samples!r}"
            )
        if not self.max_blur_sigma > 0:
            raise ValueError(f"--max_blur_sigma must be > 0, got {self.max_blur_sigma!r}")
        if not 0 < self.guided_fraction <= 1:
            raise ValueError(f"--guided_fraction must be in (0, 1], got {self.guided_fraction!r}")
        if self.expected_gradients_alpha not in EG_ALPHAS:
            raise ValueError(f"expected_gradients_alpha must be one of {EG_ALPHAS}")
        self._check_issue22()

    def _check_issue22(self) -> None:
        """The options of gradcam, occlusion and rise (image-size limits: at model load)."""
        if self.layer is not None and self.attribution not in CAMS:
            raise ValueError(
                f"--layer is for --attribution {' or '.join(CAMS)}, not {self.attribution}"
            )
        if self.attribution in ("occlusion", "rise") and len(self.baselines) > 1:
            raise ValueError(
                f"--attribution {self.attribution} fills with one --baseline (the masked "
                f"pixels' value), got {','.join(self.baselines)}"
            )
        if self.occlusion_window < 1:
            raise ValueError(f"--occlusion_window must be >= 1 pixel, got {self.occlusion_window}")
        if not 1 <= self.occlusion_stride <= self.occlusion_window:
            raise ValueError(
                f"--occlusion_stride must be from 1 to --occlusion_window "
                f"({self.occlusion_window}: larger strides leave pixels no patch covers), "
                f"got {self.occlusion_stride}"
            )
        if not 2 <= self.rise_masks <= MAX_RISE_MASKS or self.rise_masks % 2:
            raise ValueError(
                f"--rise_masks must be an even number from 2 to {MAX_RISE_MASKS} (two halves "
                f"give split_half_correlation), got {self.rise_masks}"
            )
        if not 1 <= self.rise_grid <= MAX_RISE_GRID:
            raise ValueError(f"--rise_grid must be from 1 to {MAX_RISE_GRID}, got {self.rise_grid}")
        if not 0 < self.rise_p < 1:
            raise ValueError(f"--rise_p must be in (0, 1), got {self.rise_p}")

    @classmethod
    def of(cls, options, **changes) -> MethodConfig:
        """The method settings of an AttributionConfig, a Settings or an options namespace."""
        return cls(
            attribution=options.attribution,
            baselines=parse_baselines(options.baseline),
            seed=options.seed,
            noise_sigma=options.noise_sigma,
            noise_samples=options.noise_samples,
            max_blur_sigma=options.max_blur_sigma,
            guided_fraction=options.guided_fraction,
            **{name: getattr(options, name) for name in ISSUE22_OPTIONS},
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


ISSUE22_OPTIONS = tuple(dict.fromkeys(n for names in METHOD_OPTIONS.values() for n in names))


def parse_baselines(text: str) -> tuple[str, ...]:
    """``black,white`` -> ('black', 'white'); unknown or repeated names are refused."""
    names = tuple(part.strip() for part in str(text).split(","))
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise ValueError(
            f"--baseline must be a comma list of {', '.join(BASELINES)}, "
            f"e.g. black,white; got {text!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--baseline lists a baseline twice: {text!r}")
    return names
