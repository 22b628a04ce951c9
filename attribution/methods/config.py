"""The methods' names and settings, without TensorFlow (option parsing needs only these)."""

from __future__ import annotations

from dataclasses import dataclass

from attribution.baselines import BASELINES

ATTRIBUTIONS = ("ig", "smoothgrad", "expected_gradients", "blur_ig", "guided_ig", "xrai")
EG_ALPHAS = ("random", "quadrature")
XRAI_BASELINES = ("black", "white")
GUIDED_STEPS = 128  # Guided IG's steps when --steps is not given


@dataclass(frozen=True)
class MethodConfig:
    attribution: str = "ig"
    baselines: tuple[str, ...] = ("black",)
    seed: int = 0
    noise_sigma: float = 0.1
    noise_samples: int = 8
    max_blur_sigma: float = 20.0
    guided_fraction: float = 0.1
    expected_gradients_alpha: str = "random"

    def __post_init__(self):
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(
                f"--attribution must be one of {', '.join(ATTRIBUTIONS)}, got {self.attribution!r}"
            )
        parse_baselines(",".join(self.baselines))
        if not self.noise_sigma > 0:
            raise ValueError(f"--noise_sigma must be > 0, got {self.noise_sigma!r}")
        if self.noise_samples < 1:
            raise ValueError(f"--noise_samples must be >= 1, got {self.noise_samples!r}")
        if not self.max_blur_sigma > 0:
            raise ValueError(f"--max_blur_sigma must be > 0, got {self.max_blur_sigma!r}")
        if not 0 < self.guided_fraction <= 1:
            raise ValueError(f"--guided_fraction must be in (0, 1], got {self.guided_fraction!r}")
        if self.expected_gradients_alpha not in EG_ALPHAS:
            raise ValueError(f"expected_gradients_alpha must be one of {EG_ALPHAS}")

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
