"""What an attribution is computed and drawn with: every default written once, validated once.

``AttributionConfig`` is the one home of these options. Each field carries its command-line
metadata (``help``, ``choices``, ``type``; the option is ``--<field name>``), from which
``pipeline.options`` generates the argparse options; ``transforms.settings.Settings`` and
``MethodConfig`` take their fields from it (``fields_from``), ``IntegratedGradients`` its
defaults from ``DEFAULTS``. ``validate`` checks every option a user passes, with messages
naming the flags; the engine checks only its own parameters. No TensorFlow here (nor
matplotlib until a colormap is checked).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from attribution import faithfulness
from attribution.baselines import BASELINES
from attribution.faithfulness import (
    DEFAULT_FRACTION,
    DEFAULT_GRID,
    DEFAULT_POINTS,
    DEFAULT_SUBSETS,
    FILLS,
)
from attribution.precision import PRECISIONS
from attribution.preprocessing import PREPROCESS
from attribution.quadrature import METHODS, SCORE_GUIDED, base
from attribution.targets import Targets

SCORES = ("probability", "logit")
MODEL_OUTPUTS = ("logits", "probabilities")
ATTRIBUTIONS = (
    "ig",
    "smoothgrad",
    "expected_gradients",
    "blur_ig",
    "guided_ig",
    "xrai",
    # class activation maps and forward-only perturbation methods
    "gradcam",
    "gradcam_plus_plus",
    "occlusion",
    "rise",
)
CAMS = ("gradcam", "gradcam_plus_plus")  # need a Keras model's layers
POLARITIES = ("abs", "positive", "negative", "both")
OVERLAYS = ("original", "grayscale", "mask_black", "none")
MASK_TYPES = ("pixels", "outlines")
# The colormaps a mask is drawn in when --colormap is not given: inferno for a magnitude, the
# diverging RdBu_r for both signs (attribution.masks draws with them).
COLORMAP, DIVERGING_COLORMAP = "inferno", "RdBu_r"

# Beyond these a run is a mistake, not a workload: points of a rule (Gauss-Legendre nodes
# for 4096 points take seconds to compute, 8192 over a minute; the trapezoid rule refines
# 17 -> 33 -> ... -> 2^k + 1), and rows or images in one model call.
MAX_RULE_POINTS = 65537
MAX_GAUSS_LEGENDRE = 4096
MAX_BATCH = 4096
MAX_SAMPLES = 1024  # --noise_samples, --baseline_samples: each sample is a whole IG
MAX_RISE_MASKS = 65536  # --rise_masks: one forward row per mask and image (32x the default)
MAX_RISE_GRID = 64  # --rise_grid: cells a side of a RISE mask (the paper uses 7)
# --rise_masks x --rise_grid^2: every mask's grid is held in float64 (256 MB here, with as much
# again while drawn; 65536 masks of 64 x 64 held 2 GB and drew 2 GB more)
MAX_RISE_CELLS = 2**25
# --grid_cells: the grid column holds G^2 shares a row, and the strategy stage's hotspot search
# takes G^4 steps a strategy (64: 0.3 s, 128: 4 s, 1000: hours); --write_raw keeps every pixel
MAX_GRID_CELLS = 64
# --max_blur_sigma: blur_ig's FFTs are 4 sigma longer than the image (1e6 pixels: 20 GB)
MAX_BLUR_SIGMA = 1024.0
MAX_NOISE_SIGMA = 1.0  # --noise_sigma: the whole [0, 1] input range; inf made every row NaN


def option(default, help: str, *, choices: tuple | None = None, type: type | None = None):
    """A field with its command-line metadata. ``type`` defaults to the default's type
    (int, float; str for text and None); a bool default makes a store_true switch."""
    metadata = {"help": help, "choices": choices, "type": type}
    return dataclasses.field(default=default, metadata=metadata)


class Options:
    """What a config of command-line options shares: built from an options namespace and
    validated; each field is ``--<name>``, its metadata made by ``option``."""

    @classmethod
    def from_options(cls, options):
        """The fields of an options namespace, validated."""
        config = cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls)})
        config.validate()
        return config

    def check_choices(self) -> None:
        """ValueError for a field set (not None) to a value outside its choices."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["choices"] and value is not None and value not in f.metadata["choices"]:
                raise ValueError(
                    f"--{f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}"
                )

    def validate(self) -> None:
        self.check_choices()


@dataclass(frozen=True)
class AttributionConfig(Options):
    model_output: str = option("logits", "What the model returns.", choices=MODEL_OUTPUTS)
    preprocess: str = option(
        "none",
        "What the model expects instead of [0,1] pixels, as Keras Applications' "
        "preprocess_input: scale255 = [0,255], tf = [-1,1], caffe = BGR minus "
        "ImageNet means, torch = ImageNet mean/std. Applied inside the explained "
        "function: attributions stay on the [0,1] pixels.",
        choices=PREPROCESS,
    )
    output_key: str | None = option(
        None, "Output name to use when the model's signature returns several."
    )
    score: str = option(
        "probability",
        "What is attributed: softmax probability (as the TF tutorial) or the logit.",
        choices=SCORES,
    )
    target: str = option(
        "predicted", "predicted | a class index | topk:K (one output row per target)."
    )
    method: str = option(
        "gausslegendre",
        "Quadrature rule; score_guided places a trapezoid rule's points by a forward scan "
        "of the path's scores (15 to 63 forward rows an image: more where the curve moves).",
        choices=METHODS,
    )
    steps: int = option(16, "Points of the initial rule.")
    tolerance: float = option(
        0.01, "Relative completeness error to reach by refining; 0 disables refinement."
    )
    max_steps: int = option(256, "Most points refinement may use.")
    baseline: str = option(
        "black",
        f"Path start, one of {', '.join(BASELINES)} or a comma list (black,white: "
        "the mean of the IGs from each); uniform_noise is seeded per image content.",
    )
    seed: int = option(0, "Seed for the noise baseline.")
    batch_size: int = option(32, "(image, alpha) rows per model call, packed across images.")
    image_batch_size: int = option(16, "Most images handed to the engine at once.")
    max_pixels: int = option(
        50_000_000, "Refuse images larger than this (decompression bombs), from the header."
    )
    grid_cells: int = option(14, "Cells a side of the attribution grid.")
    clip_percentile: float = option(99.0, "Mask clipping percentile.")
    jit_compile: bool = option(
        False, "XLA-compile the gradient step (GPU option; measured slower on CPU)."
    )
    precision: str = option(
        "float32",
        "What a .keras model computes in (Keras mixed precision: bfloat16/float16 "
        "compute, float32 weights); scores and completeness stay float32/float64.",
        choices=PRECISIONS,
    )
    attribution: str = option(
        "ig",
        "Method: ig, smoothgrad (IG of noisy copies), expected_gradients (baselines "
        "sampled from the inputs), blur_ig, guided_ig, xrai (ranked regions), gradcam, "
        "gradcam_plus_plus (Keras models), occlusion, rise (forward passes only).",
        choices=ATTRIBUTIONS,
    )
    noise_sigma: float = option(
        0.1, "smoothgrad: noise standard deviation, a fraction of the [0, 1] input range."
    )
    noise_samples: int = option(8, "smoothgrad: noisy copies per image.")
    baseline_samples: int = option(
        16, "expected_gradients: baseline images sampled (seeded) from the input set."
    )
    max_blur_sigma: float = option(
        20.0, "blur_ig: sigma (pixels) of the blurred image the path starts from."
    )
    guided_fraction: float = option(
        0.1, "guided_ig: fraction of features moved per step (128 steps unless --steps)."
    )
    xrai_top_fraction: float = option(
        0.3,
        "xrai (and --mask_type outlines): share of the image the outlined top regions cover.",
    )
    mask_polarity: str = option(
        "abs",
        "Mask of |attribution| (abs), only positive or negative evidence, or both "
        "signs on a diverging colormap.",
        choices=POLARITIES,
    )
    clip_low: float = option(0.0, "Percentile of the mask values drawn as the colormap's low end.")
    clip_high: float | None = option(
        None,
        "Percentile drawn as the colormap's high end (default: --clip_percentile).",
        type=float,
    )
    colormap: str | None = option(
        None,
        f"Any matplotlib colormap (default: {COLORMAP}; {DIVERGING_COLORMAP} for "
        "--mask_polarity both).",
    )
    overlay: str = option(
        "original",
        "What the overlay draws the mask on: the image, its grayscale, the image "
        "masked to black by the attribution, or nothing (the mask alone).",
        choices=OVERLAYS,
    )
    mask_type: str = option(
        "pixels",
        "Overlay colours every pixel, or outlines the top --xrai_top_fraction.",
        choices=MASK_TYPES,
    )
    faithfulness: str = option(
        "deletion,insertion",
        "Forward-only checks per row: deletion and/or insertion curves in attribution "
        "order against a seeded random order, mufidelity (comma list), or 'none'.",
    )
    faithfulness_points: int = option(
        DEFAULT_POINTS, "Points of each deletion/insertion curve, evenly spaced from 0% to 100%."
    )
    # MuFidelity and the fill of removed pixels (attribution/faithfulness.py)
    deletion_fill: str = option(
        "baseline",
        "What a removed pixel becomes in the deletion/insertion curves and MuFidelity: the "
        "row's baseline (insertion starts from the blurred image), the blurred image, or "
        "road (Rong et al. 2022: noisy linear imputation from its neighbours).",
        choices=FILLS,
    )
    mufidelity_subsets: int = option(
        DEFAULT_SUBSETS,
        "mufidelity: random subsets per row (one model row each), seeded per image.",
    )
    mufidelity_fraction: float = option(
        DEFAULT_FRACTION, "mufidelity: share of the image each subset removes, in (0, 1)."
    )
    mufidelity_grid: int = option(
        DEFAULT_GRID,
        "mufidelity: subsets are cells of a GRID x GRID grid (as Xplique's grid_size); "
        "0 draws single pixels (the paper's original).",
    )
    # Grad-CAM, occlusion and RISE
    layer: str | None = option(
        None,
        "gradcam, gradcam_plus_plus: the layer whose activations are weighted "
        "(default: the last layer with a 4-D output).",
    )
    occlusion_window: int = option(
        8, "occlusion: side of the square patch, in pixels of the model input."
    )
    occlusion_stride: int = option(4, "occlusion: pixels between two patches.")
    rise_masks: int = option(2000, "rise: random masks per image (seeded: reruns reproduce).")
    rise_grid: int = option(7, "rise: cells a side of the random grid each mask is drawn on.")
    rise_p: float = option(0.5, "rise: probability that a grid cell is kept.")

    def validate(self) -> None:
        """Every check these options need before a model is loaded; ValueError says what to
        pass instead (pipeline.options turns it into a usage error, exit 2)."""
        self.check_choices()
        self._check_rule()
        if self.score == "logit" and self.model_output == "probabilities":
            raise ValueError(
                "--score logit needs a model that outputs logits; with "
                "--model_output probabilities use --score probability"
            )
        Targets.parse(self.target)
        faithfulness.parse_kinds(self.faithfulness)
        faithfulness.fractions(self.faithfulness_points)
        faithfulness.check_mufidelity(
            self.mufidelity_subsets, self.mufidelity_fraction, self.mufidelity_grid
        )
        self._check_methods()
        self._check_drawing()

    def _check_rule(self) -> None:
        """The quadrature rule, its refinement and the call sizes."""
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        points = MAX_GAUSS_LEGENDRE if self.method == "gausslegendre" else MAX_RULE_POINTS
        for name, limit in (
            ("steps", points),
            ("max_steps", points),
            ("batch_size", MAX_BATCH),
            ("image_batch_size", MAX_BATCH),
        ):
            if getattr(self, name) > limit:
                raise ValueError(
                    f"--{name} must be <= {limit}"
                    + (" with --method gausslegendre" if limit == MAX_GAUSS_LEGENDRE else "")
                    + f", got {getattr(self, name)}"
                )
        if base(self.method) == "riemann_trapezoid" and self.steps < 2:
            raise ValueError(f"--steps must be >= 2 for {self.method} (it uses both ends)")
        if self.method == SCORE_GUIDED and self.attribution == "blur_ig":
            raise ValueError(
                "--method score_guided places points on straight paths by a scan of their "
                "scores; blur_ig's path is not one: use another --method with blur_ig"
            )
        if not 0 <= self.tolerance < float("inf"):  # nan failed every worker's engine
            raise ValueError(
                f"--tolerance must be >= 0 (0 disables refinement) and finite, got {self.tolerance}"
            )
        if self.tolerance > 0 and self.max_steps < self.steps:
            raise ValueError(f"--max_steps ({self.max_steps}) must be >= --steps ({self.steps})")
        for name in ("batch_size", "image_batch_size", "max_pixels", "grid_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.grid_cells > MAX_GRID_CELLS:
            raise ValueError(
                f"--grid_cells must be <= {MAX_GRID_CELLS} (the grid column holds its square "
                f"a row and the strategy search grows with its 4th power; --write_raw keeps "
                f"every pixel), got {self.grid_cells}"
            )

    def _check_methods(self) -> None:
        """The options of --attribution's methods (image-size limits: at model load)."""
        baselines = parse_baselines(self.baseline)
        if self.seed < 0:  # NumPy's generators (strategies, --randomize) refuse it mid-run
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        for name, limit, unit in (
            ("noise_sigma", MAX_NOISE_SIGMA, " (the whole [0, 1] input range)"),
            ("max_blur_sigma", MAX_BLUR_SIGMA, " pixels"),
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"--{name} must be > 0, got {value!r}")
            if value > limit:
                raise ValueError(f"--{name} must be at most {limit:g}{unit}, got {value!r}")
        for name in ("noise_samples", "baseline_samples"):
            if not 1 <= getattr(self, name) <= MAX_SAMPLES:
                raise ValueError(
                    f"--{name} must be from 1 to {MAX_SAMPLES}, got {getattr(self, name)!r}"
                )
        for name in ("guided_fraction", "xrai_top_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"--{name} must be in (0, 1], got {getattr(self, name)!r}")
        if self.layer is not None and self.attribution not in CAMS:
            raise ValueError(
                f"--layer is for --attribution {' or '.join(CAMS)}, not {self.attribution}"
            )
        if self.attribution in ("occlusion", "rise") and len(baselines) > 1:
            raise ValueError(
                f"--attribution {self.attribution} fills with one --baseline (the masked "
                f"pixels' value), got {','.join(baselines)}"
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
        if self.rise_masks * self.rise_grid**2 > MAX_RISE_CELLS:
            raise ValueError(
                f"--rise_masks x --rise_grid^2 must be at most {MAX_RISE_CELLS} (each mask's "
                f"grid is held in memory), got {self.rise_masks} x {self.rise_grid}^2: pass "
                f"fewer masks or a coarser grid"
            )
        if not 0 < self.rise_p < 1:
            raise ValueError(f"--rise_p must be in (0, 1), got {self.rise_p}")

    def _check_drawing(self) -> None:
        """The mask's clipping and colormap."""
        if not 0 < self.clip_percentile <= 100:
            raise ValueError(f"--clip_percentile must be in (0, 100], got {self.clip_percentile}")
        high = self.clip_percentile if self.clip_high is None else self.clip_high
        if not 0 <= self.clip_low < high <= 100:
            raise ValueError(
                f"--clip_low and --clip_high must satisfy 0 <= low < high <= 100, "
                f"got {self.clip_low} and {high}"
            )
        if self.colormap is not None:
            import matplotlib

            if self.colormap not in matplotlib.colormaps:
                raise ValueError(
                    f"--colormap {self.colormap!r} is not a matplotlib colormap; try "
                    f"{COLORMAP}, viridis, gray or {DIVERGING_COLORMAP}"
                )


DEFAULTS = AttributionConfig()


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


def fields_from(source, names=None, *, exclude: tuple[str, ...] = ()):
    """A class decorator, applied before ``@dataclass``: the class gets the fields of the
    dataclass ``source`` (those in ``names``, or all, less ``exclude``) it does not declare
    itself, with their type and default. A value that copies options (the Beam-side Settings,
    the engine's MethodConfig) so takes each default from its one declaration; a field whose
    copy has another form (a parsed tuple for a comma list) is declared in the class body."""

    def add(cls):
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for f in dataclasses.fields(source):
            if (names is None or f.name in names) and f.name not in exclude + tuple(annotations):
                annotations[f.name] = f.type
                setattr(cls, f.name, f.default)
        cls.__annotations__ = annotations
        return cls

    return add
