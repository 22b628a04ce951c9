"""The methods' names and settings, without TensorFlow (option parsing needs only these)."""

from __future__ import annotations

from dataclasses import dataclass

from attribution.baselines import BASELINES
from attribution.config import ATTRIBUTIONS, DEFAULTS, MAX_SAMPLES

EG_ALPHAS = ("random", "quadrature")
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
        return ",".join(self.baselines)


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
