"""Decode image files and fit them to a model input, as in the TF IG tutorial.

``decode_image`` turns file bytes into float32 RGB in [0, 1] at the original size,
or raises ``ImageError`` saying why it cannot. ``resize_with_pad`` is
``tf.image.resize_with_pad`` (bilinear) and ``pad_geometry`` says where it puts the
content, so boxes in original pixels can be mapped onto the model input. ``model_input``
does both steps for a model: resize with pad, then grayscale for 1-channel models.

Transparent pixels are composited over ``BACKGROUND`` (white). Only the first frame of
animated files is used. Pillow's process-wide settings are read, never changed.
"""

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

from attribution.config import DEFAULTS

DEFAULT_MAX_PIXELS = DEFAULTS.max_pixels
CHANNELS = (1, 3)  # model inputs: grayscale or RGB
# tf.image.rgb_to_grayscale's weights (ITU-R BT.601 luma, as OpenCV's COLOR_RGB2GRAY)
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)
BACKGROUND = 1.0  # white, in [0, 1], behind transparent pixels
# Raster formats found in image sets, as far as this Pillow build reads them (JPEG
# includes multi-picture MPO). Anything else (EPS, PDF, ...) is refused unread.
Image.init()
FORMATS = tuple(
    f
    for f in ("AVIF", "BMP", "DIB", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")
    if f in Image.OPEN
)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# 16-bit grayscale; Pillow may also open it as 32-bit "I".
_INTEGER_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageError(Exception):
    """A file that cannot become a model input.

    ``stage`` is 'decode' or 'preprocess'; ``error_type`` a short CamelCase kind, e.g.
    'TruncatedImage', 'UnsupportedFormat', 'DecompressionBomb', 'EmptyFile'.
    """

    STAGES = ("decode", "preprocess")

    def __init__(self, stage: str, error_type: str, message: str):
        if stage not in self.STAGES:
            raise ValueError(f"stage must be one of {self.STAGES}, got {stage!r}")
        super().__init__(stage, error_type, message)  # all args, so it pickles
        self.stage = stage
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return self.message


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """bytes -> float32 [h, w, 3] RGB in [0, 1] at original size (EXIF orientation applied).

    Refuses images over ``max_pixels`` from the header, before any pixel is decoded.
    Raises ImageError for anything that is not a whole, supported image.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated files would be "
            "silently padded; leave it False"
        )
    if not data:
        raise ImageError("decode", "EmptyFile", "the file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:
        raise ImageError("decode", "DecompressionBomb", str(e)) from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(
            "decode", "UnsupportedFormat", f"not a supported image ({', '.join(FORMATS)})"
        ) from e
    except Exception as e:
        raise _decode_error(e, "bad header: ") from e
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                "decode",
                "DecompressionBomb",
                f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels}",
            )
        try:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
        except Image.DecompressionBombError as e:
            raise ImageError("decode", "DecompressionBomb", str(e)) from e
        except Exception as e:
            raise _decode_error(e) from e
        return _to_rgb(image)


def _decode_error(error: Exception, context: str = "") -> ImageError:
    """Pillow says 'truncated' when the data ends early; anything else is corrupt."""
    kind = "TruncatedImage" if "truncated" in str(error).lower() else "CorruptImage"
    return ImageError("decode", kind, f"{context}{type(error).__name__}: {error}")


def _to_rgb(image: Image.Image) -> np.ndarray:
    """A loaded Pillow image -> float32 [h, w, 3] in [0, 1], alpha composited."""
    if image.mode == "F":
        raise ImageError(
            "preprocess", "UnsupportedMode", "32-bit float pixels have no standard range"
        )
    transparency = image.info.get("transparency")
    if image.mode in _INTEGER_MODES:
        gray = np.asarray(image)
        if gray.min() < 0 or gray.max() > 65535:
            raise ImageError(
                "preprocess", "UnsupportedMode", f"mode {image.mode} values outside 0..65535"
            )
        channels = [gray.astype(np.float32) / 65535] * 3
        if transparency is not None:
            channels.append((gray != transparency).astype(np.float32))
        rgba = np.stack(channels, axis=-1)
    else:
        mode = "RGBA" if image.mode in _ALPHA_MODES or transparency is not None else "RGB"
        try:
            converted = image.convert(mode)
        except Exception as e:
            raise ImageError(
                "preprocess", "UnsupportedMode", f"cannot convert mode {image.mode} to {mode}: {e}"
            ) from e
        rgba = np.asarray(converted, dtype=np.float32) / 255
    if rgba.shape[-1] == 4:
        alpha = rgba[..., 3:]
        rgba = rgba[..., :3] * alpha + BACKGROUND * (1 - alpha)
    return np.ascontiguousarray(rgba, dtype=np.float32)


@dataclass(frozen=True)
class PadGeometry:
    """Where resize_with_pad puts the original image inside the model input.

    The content (the resized image) is ``content_size`` (h, w) pixels with its top-left
    corner at ``offset`` (top, left); the rest of the model input is zero padding.
    """

    source_size: tuple[int, int]  # (h, w) original
    target_size: tuple[int, int]  # (H, W) model input
    content_size: tuple[int, int]  # (h, w) of the resized image
    offset: tuple[int, int]  # (top, left) of the content

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the content in model-input pixels (x1, y1 exclusive)."""
        top, left = self.offset
        return (left, top, left + self.content_size[1], top + self.content_size[0])

    def box_to_model(
        self, box: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in original pixels -> same box in model-input pixels.

        Coordinates are pixel edges (the full image is (0, 0, w, h)); the result is
        clipped to the content box. Bilinear resizing with half-pixel centres maps
        edges linearly, so this is exact.
        """
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x0 > x1 or y0 > y1:
            raise ValueError(f"box must be finite (x0, y0, x1, y1) with x0<=x1, y0<=y1: {box}")
        (h, w), (ch, cw) = self.source_size, self.content_size
        cx0, cy0, cx1, cy1 = self.content_box

        def to_x(x):
            return min(max(cx0 + x * cw / w, cx0), cx1)

        def to_y(y):
            return min(max(cy0 + y * ch / h, cy0), cy1)

        return (to_x(x0), to_y(y0), to_x(x1), to_y(y1))


def _size(value, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return h, w


def pad_geometry(source_size, target_size) -> PadGeometry:
    """Geometry of tf.image.resize_with_pad from ``source_size`` to ``target_size`` (h, w).

    Follows TF's ``_resize_image_with_pad_common`` in float32, floors included (a 1x1
    image in 224x224 gets a 223x223 content box, as in TF). Where TF would resize a side
    to 0 pixels and fail (extreme aspect ratios), that side gets 1 pixel.
    """
    h, w = _size(source_size, "source_size")
    th, tw = _size(target_size, "target_size")
    f = np.float32
    ratio = max(f(w) / f(tw), f(h) / f(th))
    resized_h, resized_w = f(h) / ratio, f(w) / ratio
    content = (max(1, int(np.floor(resized_h))), max(1, int(np.floor(resized_w))))
    offset = (
        max(0, int(np.floor((f(th) - resized_h) / f(2)))),
        max(0, int(np.floor((f(tw) - resized_w) / f(2)))),
    )
    return PadGeometry((h, w), (th, tw), content, offset)


def resize_with_pad(image: np.ndarray, target_size: tuple[int, int]) -> np.ndarray:
    """float32 [h, w, C] -> float32 [H, W, C], numerically tf.image.resize_with_pad (bilinear).

    Also works where TF fails (a side that would shrink to 0 pixels): see pad_geometry.
    """
    import tensorflow as tf  # here, not at module level: decode_image does not need TF

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be [height, width, channels], got shape {image.shape}")
    geometry = pad_geometry(image.shape[:2], target_size)
    if geometry.content_size == image.shape[:2]:
        # scale 1: bilinear sampling (half-pixel centres) lands on the pixels themselves, so
        # TF's resize is the identity; skipping it saves an eager op per image (most of a
        # decode when the images already have the model's size)
        content = image
    else:
        content = tf.image.resize(image, geometry.content_size, method="bilinear").numpy()
    (top, left), (ch, cw) = geometry.offset, geometry.content_size
    padded = np.zeros(geometry.target_size + image.shape[2:], dtype=np.float32)
    padded[top : top + ch, left : left + cw] = content
    return padded


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """float32 [..., 3] RGB -> float32 [..., 1], with tf.image.rgb_to_grayscale's weights."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape[-1:] != (3,):
        raise ValueError(f"image must be [..., 3] RGB, got shape {image.shape}")
    # an elementwise sum, not a BLAS dot: see masks._gini
    return np.sum(image * GRAY_WEIGHTS, axis=-1, keepdims=True, dtype=np.float32)


def model_input(image: np.ndarray, target_size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """Decoded float32 RGB [h, w, 3] -> the model's input [H, W, channels] in [0, 1].

    Resize with pad first, then (``channels=1``) convert to gray, so the padding stays black.
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    padded = resize_with_pad(image, target_size)
    return to_grayscale(padded) if channels == 1 else padded
