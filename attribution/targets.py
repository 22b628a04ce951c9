"""Which classes to explain (``--target``): parsed without TensorFlow, so options and
``attribution.config`` can validate it before a model is loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Targets:
    """Which classes to explain: the predicted one, a fixed class, or the top k."""

    kind: str  # 'predicted' | 'class' | 'topk'
    value: int = 1  # the class for 'class', k for 'topk'

    @classmethod
    def parse(cls, text: str | int) -> "Targets":
        text = str(text).strip()
        if text == "predicted":
            return cls("predicted")
        if re.fullmatch(r"\d+", text):
            return cls("class", int(text))
        match = re.fullmatch(r"topk:(\d+)", text)
        if match and int(match.group(1)) >= 1:
            return cls("topk", int(match.group(1)))
        raise ValueError(
            f"--target must be 'predicted', a class index, or 'topk:K' with K >= 1; got {text!r}"
        )

    def select(self, scores: np.ndarray) -> list[int]:
        """Target classes for one image, given its class scores."""
        if self.kind == "class":
            if self.value >= scores.shape[-1]:
                raise ValueError(
                    f"--target {self.value} is out of range: the model has "
                    f"{scores.shape[-1]} classes"
                )
            return [self.value]
        k = 1 if self.kind == "predicted" else min(self.value, scores.shape[-1])
        return [int(c) for c in np.argsort(-scores, kind="stable")[:k]]
