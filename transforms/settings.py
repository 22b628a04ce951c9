"""What a run attributes with: one picklable value shared by the launcher and the workers."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field

from attribution.config import DEFAULTS
from attribution.methods.config import METHOD_OPTIONS  # no TensorFlow
from attribution.strategies import StrategyConfig


@dataclass(frozen=True)
class Settings:
    model: str
    output_dir: str
    image_size: tuple[int, int]
    num_classes: int
    model_fingerprint: str
    model_output: str = DEFAULTS.model_output
    output_key: str | None = DEFAULTS.output_key
    score: str = DEFAULTS.score
    target: str = DEFAULTS.target
    method: str = DEFAULTS.method
    steps: int = DEFAULTS.steps
    tolerance: float | None = DEFAULTS.tolerance
    max_steps: int = DEFAULTS.max_steps
    baseline: str = DEFAULTS.baseline
    seed: int = DEFAULTS.seed
    batch_size: int = DEFAULTS.batch_size
    image_batch_size: int = DEFAULTS.image_batch_size
    max_pixels: int = DEFAULTS.max_pixels
    write_raw: bool = False
    grid_cells: int = DEFAULTS.grid_cells
    clip_percentile: float = DEFAULTS.clip_percentile
    jit_compile: bool = DEFAULTS.jit_compile
    precision: str = DEFAULTS.precision  # what the model computes in (attribution.precision)
    labels: tuple[str, ...] = field(default=(), repr=False)
    artifacts: tuple[str, ...] = ("masks", "overlays")  # --artifacts: per-image files
    progress_folder: str | None = None  # local runners: where finished images are tallied
    preprocess: str = DEFAULTS.preprocess  # --preprocess: part of the explained function
    channels: int = 3  # the model's input channels (1: grayscale), from its signature
    max_file_bytes: int = 256 * 1024 * 1024  # inputs larger than this are refused unread
    commit_interval: float = 60.0  # seconds a worker may hold finished rows before staging them
    # the curves of --faithfulness; () for --faithfulness none
    faithfulness: tuple[str, ...] = tuple(DEFAULTS.faithfulness.split(","))
    faithfulness_points: int = DEFAULTS.faithfulness_points
    deletion_fill: str = DEFAULTS.deletion_fill  # issue 22: removed pixels' fill; MuFidelity
    mufidelity_subsets: int = DEFAULTS.mufidelity_subsets
    mufidelity_fraction: float = DEFAULTS.mufidelity_fraction
    mufidelity_grid: int = DEFAULTS.mufidelity_grid
    randomize: str | None = None  # pipeline.sanity: a randomization stage applied on load
    # methods and visualization (issue 12); defaults are plain IG and the tutorial's mask
    attribution: str = DEFAULTS.attribution
    noise_sigma: float = DEFAULTS.noise_sigma
    noise_samples: int = DEFAULTS.noise_samples
    baseline_samples: int = DEFAULTS.baseline_samples
    expected_gradients_alpha: str = "random"  # 'quadrature' when --method is given
    max_blur_sigma: float = DEFAULTS.max_blur_sigma
    guided_fraction: float = DEFAULTS.guided_fraction
    xrai_top_fraction: float = DEFAULTS.xrai_top_fraction
    mask_polarity: str = DEFAULTS.mask_polarity
    clip_low: float = DEFAULTS.clip_low
    colormap: str | None = DEFAULTS.colormap
    overlay: str = DEFAULTS.overlay
    mask_type: str = DEFAULTS.mask_type
    # Grad-CAM, occlusion and RISE: in settings_hash only when their --attribution runs
    layer: str | None = DEFAULTS.layer  # gradcam: resolved to a name when the job starts
    occlusion_window: int = DEFAULTS.occlusion_window
    occlusion_stride: int = DEFAULTS.occlusion_stride
    rise_masks: int = DEFAULTS.rise_masks
    rise_grid: int = DEFAULTS.rise_grid
    rise_p: float = DEFAULTS.rise_p
    # the strategy stage: not in settings_hash, the column is recomputed every run
    strategy_config: StrategyConfig = StrategyConfig()

    @property
    def method_config(self):
        """The engine-side ``attribution.methods.MethodConfig`` (imported here: this module
        stays importable without TensorFlow)."""
        from attribution.methods import MethodConfig

        return MethodConfig.of(self, expected_gradients_alpha=self.expected_gradients_alpha)

    @property
    def default_style(self) -> bool:
        """The tutorial's mask and overlay (drawn exactly as before issue 12)."""
        return all(
            getattr(self, name) == _default(name)
            for name in ("mask_polarity", "clip_low", "colormap", "overlay", "mask_type")
        )

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    @functools.cached_property
    def settings_hash(self) -> str:
        """Hash of everything that decides a row and its files besides the image and the model.

        Rows of a previous run are reused only when this hash matches (docs/audits.md). It
        covers the attribution (method, rule sizes, baseline, seed, score, target policy,
        input size, model output; the faithfulness checks, their fill and MuFidelity's subsets
        when not at their defaults, and a sanity stage) and what is drawn from it (``grid_cells``: the grid column;
        ``clip_percentile``: the mask and overlay PNGs; the method and visualization options
        of METHOD_KEYS when not at their defaults). Left out on purpose: labels (relabelled
        on reuse), regions (recomputed on reuse), write_raw (reuse needs the raw file when
        asked), max_pixels (checked on reuse), and batch sizes / jit_compile (how the same
        numbers are computed, equal to float rounding). ``preprocess`` counts only when it is
        not 'none', and ``precision`` only when not 'float32', so hashes of runs made before
        these options existed stay valid.

        Computed once per Settings value (the job's, pickled to the workers with it), not once
        per row: hashing the whole value, 1001 ImageNet labels included, took ~10 ms a row.
        """
        keys = (
            "model_output",
            "output_key",
            "score",
            "target",
            "method",
            "steps",
            "tolerance",
            "max_steps",
            "baseline",
            "seed",
            "image_size",
            "grid_cells",
            "clip_percentile",
        )
        values = {k: getattr(self, k) for k in keys}  # a tuple dumps as a list, as before
        if self.preprocess != _default("preprocess"):
            values["preprocess"] = self.preprocess
        # issue 12's options count only when they differ from their defaults, so hashes of
        # plain IG runs (and --reuse_from across the upgrade) stay as they were
        for name in METHOD_KEYS:
            if getattr(self, name) != _default(name):
                values[name] = getattr(self, name)
        # the faithfulness settings and a sanity stage count only when not the default, as
        # preprocess (rows made before them lack their columns and are not reused anyway)
        if tuple(self.faithfulness) != _default("faithfulness"):
            values["faithfulness"] = list(self.faithfulness)
        if self.faithfulness_points != _default("faithfulness_points"):
            values["faithfulness_points"] = self.faithfulness_points
        for name in FAITHFULNESS_KEYS:  # issue 22's, likewise only when not the default
            if getattr(self, name) != _default(name):
                values[name] = getattr(self, name)
        if self.randomize is not None:
            values["randomize"] = self.randomize
        for name in METHOD_OPTIONS.get(self.attribution, ()):  # only the running method's
            values[name] = getattr(self, name)
        if self.precision != _default(
            "precision"
        ):  # bfloat16/float16 change the numbers, not rounding
            values["precision"] = self.precision
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _default(name: str):
    """A Settings field's default (attribution.config's): options at their default stay out
    of settings_hash, so hashes made before the option existed stay valid."""
    return Settings.__dataclass_fields__[name].default


FAITHFULNESS_KEYS = (
    "deletion_fill",
    "mufidelity_subsets",
    "mufidelity_fraction",
    "mufidelity_grid",
)
METHOD_KEYS = (
    "attribution",
    "noise_sigma",
    "noise_samples",
    "baseline_samples",
    "expected_gradients_alpha",
    "max_blur_sigma",
    "guided_fraction",
    "xrai_top_fraction",
    "mask_polarity",
    "clip_low",
    "colormap",
    "overlay",
    "mask_type",
)
