"""What a run attributes with: one picklable value shared by the launcher and the workers."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


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

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    @property
    def settings_hash(self) -> str:
        """Hash of everything that decides an attribution besides the image and the model."""
        keys = ("model_output", "output_key", "score", "target", "method", "steps", "tolerance",
                "max_steps", "baseline", "seed", "image_size")
        values = {k: asdict(self)[k] for k in keys}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
