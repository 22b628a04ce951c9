"""Elements that flow between the steps, and the dead-letter row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STAGES = ("read", "decode", "preprocess", "attribute", "write")
ERRORS = "errors"  # the output tag of dead-letter rows, in every step that has one
NAMESPACE = "integrated_gradients"


@dataclass
class DecodedImage:
    uri: str
    image_id: str
    width: int
    height: int
    content_sha256: str
    image: (
        np.ndarray
    )  # float32 [H, W, 3] (or [H, W, 1], gray models) at model input size, in [0, 1]
    true_class: int | None = None  # from a TFRecord's --label_key
    true_label: str | None = None


def error_row(
    uri: str, stage: str, error: BaseException | str, error_type: str | None = None
) -> dict:
    """One `errors` row: the input, where it failed, and why."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    message = str(error) if not isinstance(error, str) else error
    return {
        "image_uri": uri,
        "stage": stage,
        "error_type": error_type or type(error).__name__,
        "message": message[:2000],
    }
