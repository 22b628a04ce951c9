"""Elements that flow between the steps, and the dead-letter row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transforms.tfrecord import Record

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


@dataclass(frozen=True)
class ImageRef:
    """An input hashed but not decoded (``--reuse_from``, ``--resume``): all that goes
    through the join with the previous rows."""

    uri: str
    image_id: str
    content_sha256: str
    boxes: tuple | None = None  # its --regions boxes, joined in the graph by uri
    record: Record | None = None  # TFRecord input: the record (image bytes) to compute from

    @property
    def source(self):
        """What decoding reads: the record of TFRecord input, else the file's uri."""
        return self.uri if self.record is None else self.record


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
