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
    labels: tuple[str, ...] = field(default=(), repr=False)
    artifacts: tuple[str, ...] = ("masks", "overlays")  # --artifacts: per-image files
    progress_folder: str | None = None  # local runners: where finished images are tallied
    preprocess: str = "none"  # --preprocess: part of the explained function
    channels: int = 3  # the model's input channels (1: grayscale), from its signature
    max_file_bytes: int = 256 * 1024 * 1024  # inputs larger than this are refused unread
    commit_interval: float = 60.0  # seconds a worker may hold finished rows before staging them

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    @functools.cached_property
    def settings_hash(self) -> str:
        """Hash of everything that decides a row and its files besides the image and the model.

        Rows of a previous run are reused only when this hash matches (docs/audits.md). It
        covers the attribution (method, rule sizes, baseline, seed, score, target policy,
        input size, model output) and what is drawn from it (``grid_cells``: the grid column;
        ``clip_percentile``: the mask and overlay PNGs). Left out on purpose: labels (relabelled
        on reuse), regions (recomputed on reuse), write_raw (reuse needs the raw file when
        asked), max_pixels (checked on reuse), and batch sizes / jit_compile (how the same
        numbers are computed, equal to float rounding). ``preprocess`` counts only when it is
        not 'none', so hashes of runs made before the option existed stay valid.

        Computed once per Settings value (the job's, pickled to the workers with it), not once
        per row: hashing the whole value, 1001 ImageNet labels included, took ~10 ms a row.
        """
        keys = ("model_output", "output_key", "score", "target", "method", "steps", "tolerance",
                "max_steps", "baseline", "seed", "image_size", "grid_cells", "clip_percentile")
        values = {k: getattr(self, k) for k in keys}  # a tuple dumps as a list, as before
        if self.preprocess != "none":
            values["preprocess"] = self.preprocess
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
