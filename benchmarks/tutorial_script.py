"""The TF tutorial's IG as a user would run it, as one process (start to exit is timed):
``python -m benchmarks.tutorial_script MODEL 'PNG_PATTERN' POINTS OUT_DIR``. Loads the model,
decodes the PNGs, explains each image's predicted class with TutorialIG (trapezoid, POINTS
points = m_steps + 1, batches of 32), saves each attribution as OUT_DIR/<i>.npy and prints
``RESULT {"errors": [...]}`` (relative completeness errors, for equal-error comparisons)."""

from __future__ import annotations

import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from attribution.models import load_model  # noqa: E402
from benchmarks.baselines import TutorialIG  # noqa: E402


def main(argv: list[str]) -> int:
    handle, pattern, points, out = argv[0], argv[1], int(argv[2]), argv[3]
    model = load_model(handle)
    tutorial = TutorialIG(model.fn, batch_size=32)
    os.makedirs(out, exist_ok=True)
    errors = []
    for i, path in enumerate(sorted(glob.glob(pattern))):
        image = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        baseline = np.zeros_like(image)
        attributions, (target,) = tutorial.attribute(image[None], baseline[None], points)
        np.save(os.path.join(out, f"{i}.npy"), attributions[0])
        scores = tf.nn.softmax(model.fn(np.stack([image, baseline]))).numpy().astype(np.float64)
        delta = scores[0, target] - scores[1, target]
        errors.append(abs(float(attributions[0].astype(np.float64).sum()) - delta) / abs(delta))
    print("RESULT " + json.dumps({"errors": errors, "traces": tutorial.trace_count}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
