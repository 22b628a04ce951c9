"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018) for Keras models.

For a layer with activations A [h, w, K] and the attributed score S (the job's ``--score``:
the softmax probability by default, the logit with ``--score logit``, as every other method
and the faithfulness curves read it), with g = dS/dA:

- Grad-CAM: alpha_k = mean_ij g_ijk;
- Grad-CAM++: alpha_k = sum_ij a_ijk relu(g_ijk), a = g^2 / (2 g^2 + sum_ab A_abk g^3) (the
  paper's closed form; a = 0 where the denominator is 0);

map = relu(sum_k alpha_k A_k), upsampled bilinearly to the model input (``tf.image.resize``,
as Xplique). One traced function takes any number of (image, target) rows, packed across the
images of a batch into calls of at most ``batch_size`` rows.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from attribution.methods.results import pixel_map


class Cam:
    """Grad-CAM maps of ``features`` (images -> (activations, model output)), scored as
    ``engine`` scores (softmax or not), in calls of ``engine.batch_size`` rows."""

    def __init__(self, features, engine, plus_plus: bool):
        self.features, self.engine, self.plus_plus = features, engine, plus_plus
        h, w = engine.image_size
        self._function = tf.function(
            self._impl,
            input_signature=[
                tf.TensorSpec([None, h, w, engine.channels], tf.float32),
                tf.TensorSpec([None], tf.int32),
            ],
            autograph=False,
        ).get_concrete_function()

    def _impl(self, images, targets):
        with tf.GradientTape() as tape:
            activations, outputs = self.features(images)
            outputs = tf.cast(outputs, tf.float32)
            scores = tf.nn.softmax(outputs, axis=-1) if self.engine.softmax else outputs
            picked = tf.gather(scores, targets, axis=1, batch_dims=1)
        g = tape.gradient(picked, activations)
        if g is None:  # at tracing time, once
            raise ValueError(
                "the scores do not depend on the layer's activations: pick another layer"
            )
        g = tf.cast(g, tf.float32)
        a = tf.cast(activations, tf.float32)
        if self.plus_plus:
            g2 = tf.square(g)
            denominator = 2.0 * g2 + tf.reduce_sum(a, axis=(1, 2), keepdims=True) * g2 * g
            share = tf.math.divide_no_nan(g2, denominator)
            weights = tf.reduce_sum(share * tf.nn.relu(g), axis=(1, 2), keepdims=True)
        else:
            weights = tf.reduce_mean(g, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * a, axis=-1, keepdims=True))
        upsampled = tf.image.resize(cam, self.engine.image_size, method="bilinear")
        return upsampled[..., 0], scores

    def maps(self, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([N, H, W] maps, [N, C] scores) of rows (image, target)."""
        maps, scores = [], []
        size = max(1, int(self.engine.batch_size))
        for start in range(0, len(images), size):
            self.engine.model_calls += 1  # counted with the engine's own calls
            m, s = self._function(
                tf.constant(images[start : start + size], tf.float32),
                tf.constant(targets[start : start + size], tf.int32),
            )
            maps.append(m.numpy())
            scores.append(s.numpy())
        return np.concatenate(maps), np.concatenate(scores)


def gradcam(engine, cam: Cam, images, targets):
    """One list of Attributions per image (targets by rank)."""
    image_scores = engine.scores(np.stack(images))
    rows = [(i, t) for i, s in enumerate(image_scores) for t in targets.select(s)]
    maps, _ = cam.maps(
        np.stack([images[i] for i, _ in rows]), np.array([t for _, t in rows], np.int32)
    )
    out = [[] for _ in images]
    for (i, t), heatmap in zip(rows, maps):
        out[i].append(
            pixel_map(
                key=i,
                target=t,
                image_scores=image_scores[i],
                heatmap=heatmap,
                channels=images[i].shape[-1],
                baseline_score=None,
                baseline_predicts_target=None,
                evaluations=1,
            )
        )
    return out
