"""The two reference algorithms the engine is measured against, written anew in TF.

``TutorialIG``: the TensorFlow Integrated Gradients tutorial's algorithm, one image at a time:
alphas ``linspace(0, 1, m_steps + 1)`` in batches of 32, gradients of the softmax probability
of the target class, a ``tf.function`` *without* an input signature (so, as in the tutorial,
it retraces for every new target class -- a Python int -- and every new short last batch),
the trapezoid rule as ``mean((g[:-1] + g[1:]) / 2)``. It is the *correct* version: every
gradient batch is kept and concatenated (the tutorial's known defect of stacking only the
last batch is not repeated). Traces are counted on the Python side (``trace_count``).

``CaptumStyleIG``: Captum's batching: the rows (alpha, image) of all images x all steps are
concatenated (alpha-major, as Captum's ``torch.cat`` over alphas) and cut into chunks of
``internal_batch_size`` rows; each chunk's gradients are multiplied by the rule's weights and
summed into the images' integrals; the attribution is ``(x - baseline) * integral``. Rules:
trapezoid and Gauss-Legendre, as (points, weights) pairs computed here, not imported from
the engine. One shape-polymorphic ``tf.function`` (no retrace on the short last chunk).

Both take ``fn(images [N, H, W, 3]) -> [N, C]`` and attribute ``score`` ('probability':
softmax of logits; 'logit') so they can be checked against the engine at the same rule and
steps (tests/test_benchmarks.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf


def _score(outputs: tf.Tensor, score: str) -> tf.Tensor:
    if score == "probability":
        return tf.nn.softmax(outputs, axis=-1)
    if score == "logit":
        return outputs
    raise ValueError(f"score must be 'probability' or 'logit', got {score!r}")


# --- (a) the TF tutorial, one image at a time ----------------------------------------------
class TutorialIG:
    """The TF IG tutorial, correct version. ``steps`` below means *points* (m_steps + 1)."""

    def __init__(
        self,
        fn: Callable[[tf.Tensor], tf.Tensor],
        *,
        score: str = "probability",
        batch_size: int = 32,
    ):
        self.fn = fn
        self.score = score
        self.batch_size = int(batch_size)
        self.trace_count = 0
        # As the tutorial: @tf.function with no input signature.
        self.one_batch = tf.function(self._one_batch)

    @staticmethod
    def interpolate_images(baseline, image, alphas):
        alphas_x = alphas[:, tf.newaxis, tf.newaxis, tf.newaxis]
        baseline_x = tf.expand_dims(baseline, axis=0)
        input_x = tf.expand_dims(image, axis=0)
        delta = input_x - baseline_x
        return baseline_x + alphas_x * delta

    def compute_gradients(self, images, target_class_idx):
        with tf.GradientTape() as tape:
            tape.watch(images)
            probs = _score(self.fn(images), self.score)[:, target_class_idx]
        return tape.gradient(probs, images)

    def _one_batch(self, baseline, image, alpha_batch, target_class_idx):
        self.trace_count += 1  # runs only while tracing
        interpolated = self.interpolate_images(baseline, image, alpha_batch)
        return self.compute_gradients(interpolated, target_class_idx)

    @staticmethod
    def integral_approximation(gradients):
        grads = (gradients[:-1] + gradients[1:]) / tf.constant(2.0)
        return tf.math.reduce_mean(grads, axis=0)

    def integrated_gradients(self, baseline, image, target_class_idx: int, m_steps: int = 50):
        alphas = tf.linspace(start=0.0, stop=1.0, num=m_steps + 1)
        gradient_batches = []
        for alpha in tf.range(0, len(alphas), self.batch_size):
            from_ = alpha
            to = tf.minimum(from_ + self.batch_size, len(alphas))
            alpha_batch = alphas[from_:to]
            gradient_batches.append(self.one_batch(baseline, image, alpha_batch, target_class_idx))
        total_gradients = tf.concat(gradient_batches, axis=0)  # every batch, not the last
        avg_gradients = self.integral_approximation(total_gradients)
        return (image - baseline) * avg_gradients

    def predict_target(self, image) -> int:
        """The tutorial's top-1 class: one forward pass on the image."""
        scores = _score(self.fn(tf.expand_dims(image, 0)), self.score)
        return int(tf.math.top_k(scores, k=1).indices[0, 0])

    def attribute(
        self,
        images: np.ndarray,
        baselines: np.ndarray,
        steps: int,
        targets: list[int] | None = None,
    ) -> tuple[np.ndarray, list[int]]:
        """IG of each image with ``steps`` points (m_steps = steps - 1): (attributions, targets)."""
        if steps < 2:
            raise ValueError("the tutorial's trapezoid rule needs steps >= 2 points")
        out, chosen = [], []
        for i, (image, baseline) in enumerate(zip(images, baselines)):
            image = tf.convert_to_tensor(image, tf.float32)
            baseline = tf.convert_to_tensor(baseline, tf.float32)
            target = self.predict_target(image) if targets is None else int(targets[i])
            out.append(self.integrated_gradients(baseline, image, target, steps - 1).numpy())
            chosen.append(target)
        return np.stack(out), chosen


# --- (b) Captum-style batching --------------------------------------------------------------
def trapezoid(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Captum's riemann_trapezoid: ``steps`` points linspace(0, 1), end weights halved."""
    if steps < 2:
        raise ValueError("the trapezoid rule needs steps >= 2")
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
    return alphas, weights


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Captum's gausslegendre: numpy's nodes and weights on [-1, 1] mapped to [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(int(steps))
    return (nodes + 1) / 2, weights / 2


RULES = {"riemann_trapezoid": trapezoid, "gausslegendre": gauss_legendre}


class CaptumStyleIG:
    """All images x steps as one list of rows, cut into chunks of ``internal_batch_size``."""

    def __init__(
        self,
        fn: Callable[[tf.Tensor], tf.Tensor],
        *,
        image_size: tuple[int, int],
        method: str,
        steps: int,
        internal_batch_size: int = 32,
        score: str = "probability",
    ):
        if method not in RULES:
            raise ValueError(f"method must be one of {sorted(RULES)}, got {method!r}")
        self.fn, self.score = fn, score
        self.alphas, self.weights = RULES[method](steps)
        self.internal_batch_size = int(internal_batch_size)
        self.trace_count = 0
        h, w = image_size
        image = tf.TensorSpec([None, h, w, 3], tf.float32)
        row = tf.TensorSpec([None], tf.float32)
        index = tf.TensorSpec([None], tf.int32)
        self._chunk = tf.function(
            self._chunk_impl,
            input_signature=[image, image, index, row, row, index, tf.TensorSpec([], tf.int32)],
        )

    def _chunk_impl(self, images, baselines, image_index, alphas, weights, targets, n):
        self.trace_count += 1
        x = tf.gather(images, image_index)
        b = tf.gather(baselines, image_index)
        path = b + alphas[:, None, None, None] * (x - b)
        with tf.GradientTape() as tape:
            tape.watch(path)
            scores = tf.gather(_score(self.fn(path), self.score), targets, axis=1, batch_dims=1)
        grads = tape.gradient(scores, path) * weights[:, None, None, None]
        return tf.math.unsorted_segment_sum(grads, image_index, n)

    def attribute(
        self, images: np.ndarray, baselines: np.ndarray, targets: list[int]
    ) -> np.ndarray:
        images = tf.convert_to_tensor(images, tf.float32)
        baselines = tf.convert_to_tensor(baselines, tf.float32)
        n = int(images.shape[0])
        steps = len(self.alphas)
        # Captum's order: torch.cat over alphas of the scaled inputs of all images.
        image_index = np.tile(np.arange(n, dtype=np.int32), steps)
        alphas = np.repeat(self.alphas, n).astype(np.float32)
        weights = np.repeat(self.weights, n).astype(np.float32)
        target_rows = np.tile(np.asarray(targets, np.int32), steps)
        total = tf.zeros_like(images)
        size = self.internal_batch_size
        for start in range(0, len(alphas), size):
            chunk = slice(start, start + size)
            total += self._chunk(
                images,
                baselines,
                image_index[chunk],
                alphas[chunk],
                weights[chunk],
                target_rows[chunk],
                tf.constant(n),
            )
        return ((images - baselines) * total).numpy()
