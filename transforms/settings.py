"""What a run attributes with: one picklable value shared by the launcher and the workers.

``Settings`` carries every AttributionConfig field and the JobConfig fields the workers read,
generated from those configs (``fields_from``: each default is declared once, there), plus
the loaded model's facts and what the launcher resolves. Its body declares only those facts
and the fields whose Beam-side form differs from the option's (comma lists parsed to tuples).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field

from attribution import quadrature
from attribution.config import DEFAULTS, AttributionConfig, fields_from
from attribution.methods.config import METHOD_OPTIONS, RANDOM_ALPHA, MethodConfig
from attribution.strategies import StrategyConfig
from transforms.job_config import JOB_DEFAULTS, JobConfig, artifacts

WORKER_JOB_OPTIONS = ("write_raw", "max_file_bytes", "commit_interval", "randomize")


@dataclass(frozen=True)
@fields_from(AttributionConfig, exclude=("clip_high",))  # clip_high: folded into clip_percentile
@fields_from(JobConfig, WORKER_JOB_OPTIONS)
class Settings:
    """Besides the generated option fields: ``tolerance`` is None when refinement is off
    (--tolerance 0), ``clip_percentile`` is --clip_high when given, ``layer`` is gradcam's
    layer resolved to a name when the job starts."""

    model: str
    output_dir: str
    image_size: tuple[int, int]
    num_classes: int
    model_fingerprint: str
    channels: int = 3  # the model's input channels (1: grayscale), from its signature
    labels: tuple[str, ...] = field(default=(), repr=False)
    progress_folder: str | None = None  # local runners: where finished images are tallied
    # --artifacts, with --write_raw's raw
    artifacts: tuple[str, ...] = artifacts(JOB_DEFAULTS.artifacts, JOB_DEFAULTS.write_raw)
    # the curves of --faithfulness; () for --faithfulness none
    faithfulness: tuple[str, ...] = tuple(DEFAULTS.faithfulness.split(","))
    # expected gradients' alphas: 'quadrature' when --method is given
    expected_gradients_alpha: str = RANDOM_ALPHA
    # the strategy stage: not in settings_hash, the column is recomputed every run
    strategy_config: StrategyConfig = StrategyConfig()

    @property
    def method_config(self) -> MethodConfig:
        """The engine-side ``attribution.methods.MethodConfig``."""
        return MethodConfig.of(self)

    @property
    def default_style(self) -> bool:
        """The tutorial's mask and overlay: every drawing option at its default."""
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
        these options existed stay valid. A rule whose placement changed since its first rows
        adds its version (``attribution.quadrature.RULE_VERSIONS``), so rows an older placement
        computed are never lent to this one.

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
        values = {k: getattr(self, k) for k in keys}  # image_size, a tuple, dumps as a list
        if self.preprocess != _default("preprocess"):
            values["preprocess"] = self.preprocess
        # the method and drawing options count only when they differ from their defaults,
        # so hashes of plain IG runs stay valid (--reuse_from of runs made before them)
        for name in METHOD_KEYS:
            if getattr(self, name) != _default(name):
                values[name] = getattr(self, name)
        # the faithfulness settings and a sanity stage count only when not the default, as
        # preprocess (rows made before them lack their columns and are not reused anyway)
        if tuple(self.faithfulness) != _default("faithfulness"):
            values["faithfulness"] = list(self.faithfulness)
        if self.faithfulness_points != _default("faithfulness_points"):
            values["faithfulness_points"] = self.faithfulness_points
        for name in FAITHFULNESS_KEYS:  # likewise only when not the default
            if getattr(self, name) != _default(name):
                values[name] = getattr(self, name)
        if self.randomize is not None:
            values["randomize"] = self.randomize
        for name in METHOD_OPTIONS.get(self.attribution, ()):  # only the running method's
            values[name] = getattr(self, name)
        if self.precision != _default("precision"):  # bfloat16/float16 change the numbers
            values["precision"] = self.precision
        if quadrature.RULE_VERSIONS.get(self.method, 0):  # a rule changed since its first rows
            values["rule_version"] = quadrature.RULE_VERSIONS[self.method]
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
