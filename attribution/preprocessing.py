"""Input preprocessing as part of the explained function (``--preprocess``).

The engine always feeds [0, 1] pixels; a model trained on other inputs gets them through
one of these transforms, applied inside the differentiable function. IG is then still taken
with respect to the [0, 1] pixels the user sees, baselines keep their meaning (black is
black) and completeness holds, because F(x) = model(preprocess(x)) is one function of x.

The modes are those of Keras Applications' ``preprocess_input`` on 0-255 pixels, written
for x = pixels / 255:

- ``none``: x (the model takes [0, 1] itself);
- ``scale255``: 255 x (models with their own rescaling layer: EfficientNet, ConvNeXt, ...);
- ``tf``: 2 x - 1, in [-1, 1] (MobileNet, Inception, Xception, ...);
- ``caffe``: RGB -> BGR, then 255 x minus the ImageNet channel means (VGG, ResNet50, ...);
- ``torch``: (x - ImageNet mean) / ImageNet std per RGB channel (DenseNet, ...).

For 1-channel (grayscale) models ``none``, ``scale255`` and ``tf`` mean the same per pixel;
``caffe`` and ``torch`` are defined per RGB channel and are refused.
"""

from __future__ import annotations

from collections.abc import Callable

PREPROCESS = ("none", "scale255", "tf", "caffe", "torch")
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # on 0-255, in B, G, R order
TORCH_MEAN = (0.485, 0.456, 0.406)  # on [0, 1], in R, G, B order
TORCH_STD = (0.229, 0.224, 0.225)
PER_CHANNEL = ("caffe", "torch")


def preprocessor(mode: str, channels: int = 3) -> Callable:
    """The transform for ``mode``: float32 [N, H, W, channels] in [0, 1] -> model input.

    Raises ValueError for an unknown mode, or a per-RGB-channel mode on a non-RGB input.
    """
    if mode not in PREPROCESS:
        raise ValueError(f"--preprocess must be one of {', '.join(PREPROCESS)}, got {mode!r}")
    if mode in PER_CHANNEL and channels != 3:
        raise ValueError(
            f"--preprocess {mode} subtracts ImageNet means per R, G, B channel, "
            f"but the model takes {channels}-channel input; for a grayscale model "
            "use --preprocess none (inputs in [0, 1]), scale255 ([0, 255]) or "
            "tf ([-1, 1])"
        )
    import tensorflow as tf  # here: option parsing imports PREPROCESS without TensorFlow

    if mode == "none":
        return lambda x: x
    if mode == "scale255":
        return lambda x: x * 255.0
    if mode == "tf":
        return lambda x: x * 2.0 - 1.0
    if mode == "caffe":
        mean = tf.constant(CAFFE_BGR_MEAN, tf.float32)
        return lambda x: x[..., ::-1] * 255.0 - mean
    mean, std = tf.constant(TORCH_MEAN, tf.float32), tf.constant(TORCH_STD, tf.float32)
    return lambda x: (x - mean) / std
