"""What a run attributes with: one picklable value shared by the launcher and the workers."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    model: str
    output_dir: str
    image_size: tuple[int, int]
    num_classes: int
    model_fingerprint: str
    model_output: str = "logits"
    output_key: str | None = None
    score: str = "probability"
    target: str = "predicted"
    method: str = "gausslegendre"
    steps: int = 16
    tolerance: float | None = 0.01
    max_steps: int = 256
    baseline: str = "black"
    seed: int = 0
    batch_size: int = 32
    image_batch_size: int = 16
    max_pixels: int = 50_000_000
    write_raw: bool = False
    grid_cells: int = 14
    clip_percentile: float = 99.0
    jit_compile: bool = False
    precision: str = "float32"  # what the model computes in (attribution.precision)
    labels: tuple[str, ...] = field(default=(), repr=False)
    artifacts: tuple[str, ...] = ("masks", "overlays")  # --artifacts: per-image files
    progress_folder: str | None = None  # local runners: where finished images are tallied
    preprocess: str = "none"  # --preprocess: part of the explained function
    channels: int = 3  # the model's input channels (1: grayscale), from its signature
    max_file_bytes: int = 256 * 1024 * 1024  # inputs larger than this are refused unread
    commit_interval: float = 60.0  # seconds a worker may hold finished rows before staging them
    faithfulness: tuple[str, ...] = ("deletion", "insertion")  # () for --faithfulness none
    faithfulness_points: int = 16
    randomize: str | None = None  # pipeline.sanity: a randomization stage applied on load
    # methods and visualization (issue 12); defaults are plain IG and the tutorial's mask
    attribution: str = "ig"
    noise_sigma: float = 0.1
    noise_samples: int = 8
    baseline_samples: int = 16
    expected_gradients_alpha: str = "random"  # 'quadrature' when --method is given
    max_blur_sigma: float = 20.0
    guided_fraction: float = 0.1
    xrai_top_fraction: float = 0.3
    mask_polarity: str = "abs"
    clip_low: float = 0.0
    colormap: str | None = None
    overlay: str = "original"
    mask_type: str = "pixels"

    @property
    def method_config(self):
        """The engine-side ``attribution.methods.MethodConfig`` (imported here: this module
        stays importable without TensorFlow)."""
        from attribution.methods import MethodConfig, parse_baselines

        return MethodConfig(
            attribution=self.attribution,
            baselines=parse_baselines(self.baseline),
            seed=self.seed,
            noise_sigma=self.noise_sigma,
            noise_samples=self.noise_samples,
            max_blur_sigma=self.max_blur_sigma,
            guided_fraction=self.guided_fraction,
            expected_gradients_alpha=self.expected_gradients_alpha,
        )

    @property
    def default_style(self) -> bool:
        """The tutorial's mask and overlay (drawn exactly as before issue 12)."""
        return (self.mask_polarity, self.clip_low, self.colormap, self.overlay, self.mask_type) == (
            "abs",
            0.0,
            None,
            "original",
            "pixels",
        )

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    @functools.cached_property
    def settings_hash(self) -> str:
        """Hash of everything that decides a row and its files besides the image and the model.

        Rows of a previous run are reused only when this hash matches (docs/audits.md). It
        covers the attribution (method, rule sizes, baseline, seed, score, target policy,
        input size, model output; the faithfulness curves and a sanity stage) and what is drawn from it (``grid_cells``: the grid column;
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
        if self.preprocess != "none":
            values["preprocess"] = self.preprocess
        # issue 12's options count only when they differ from their defaults, so hashes of
        # plain IG runs (and --reuse_from across the upgrade) stay as they were
        for name in METHOD_KEYS:
            if getattr(self, name) != Settings.__dataclass_fields__[name].default:
                values[name] = getattr(self, name)
        # the faithfulness settings and a sanity stage count only when not the default, as
        # preprocess (rows made before them lack their columns and are not reused anyway)
        if tuple(self.faithfulness) != ("deletion", "insertion"):
            values["faithfulness"] = list(self.faithfulness)
        if self.faithfulness_points != 16:
            values["faithfulness_points"] = self.faithfulness_points
        if self.randomize is not None:
            values["randomize"] = self.randomize
        if self.precision != "float32":  # bfloat16/float16 change the numbers, not rounding
            values["precision"] = self.precision
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


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
