"""Decoding awkward files and padding like tf.image.resize_with_pad (attribution/images.py)."""

import io
import pickle
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from attribution.images import ImageError, decode_image, pad_geometry, resize_with_pad

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG claiming width x height, with a tiny IDAT (no real pixel data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def decode_error(data: bytes, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kwargs)
    return info.value


# --- formats and colour modes ---------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, kwargs",
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("PPM", {})]
    + ([("WEBP", {"lossless": True})] if features.check("webp") else []),
)
def test_lossless_formats_round_trip_exactly(fmt, kwargs):
    out = decode_image(encode(Image.fromarray(PIXELS), fmt, **kwargs))
    assert out.dtype == np.float32 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, PIXELS / np.float32(255))


def test_jpeg_is_close_to_its_source():
    out = decode_image(encode(Image.new("RGB", (16, 8), (200, 40, 90)), "JPEG", quality=95))
    assert out.shape == (8, 16, 3)
    np.testing.assert_allclose(
        out, np.broadcast_to([200 / 255, 40 / 255, 90 / 255], out.shape), atol=0.03
    )


def test_grayscale_becomes_three_equal_channels():
    gray = PIXELS[..., 0]
    out = decode_image(encode(Image.fromarray(gray, "L"), "PNG"))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray / np.float32(255))


def test_sixteen_bit_png_uses_the_16_bit_range():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    np.testing.assert_allclose(out[0, :, 0], values[0] / 65535, atol=1e-7)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_sixteen_bit_png_transparency_key_is_white():
    values = np.array([[0, 1000]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(values), "PNG", transparency=0))
    np.testing.assert_allclose(out[0, 0], [1, 1, 1])
    np.testing.assert_allclose(out[0, 1], [1000 / 65535] * 3, atol=1e-7)


def test_32_bit_integer_tiff_in_16_bit_range_is_scaled_and_beyond_is_refused():
    values = np.array([[0, 65535]], dtype=np.int32)
    np.testing.assert_allclose(
        decode_image(encode(Image.fromarray(values, "I"), "TIFF"))[0, :, 0], [0, 1]
    )
    error = decode_error(encode(Image.fromarray(values * 2, "I"), "TIFF"))
    assert (error.stage, error.error_type) == ("preprocess", "UnsupportedMode")


def test_float_tiff_is_refused_not_guessed():
    error = decode_error(encode(Image.fromarray(np.full((2, 2), 0.5, np.float32), "F"), "TIFF"))
    assert (error.stage, error.error_type) == ("preprocess", "UnsupportedMode")


def test_rgba_is_composited_on_white():
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 51]]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_allclose(out[0], [[1, 0, 0], [1, 1, 1], [0.8, 0.8, 0.8]], atol=1e-6)


def test_gray_alpha_is_composited_on_white():
    la = np.array([[[0, 255], [0, 0], [100, 255]]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    np.testing.assert_allclose(out[0, :, 0], [0, 1, 100 / 255], atol=1e-6)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 255, 0, 255, 0])  # index 0 blue, index 1 green
    image.putpixel((1, 0), 1)
    data = encode(image, "PNG", transparency=0)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    np.testing.assert_allclose(decode_image(data)[0], [[1, 1, 1], [0, 1, 0]])


def test_cmyk_jpeg_red_comes_out_red():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert "adobe" in Image.open(io.BytesIO(data)).info  # Adobe (inverted) CMYK
    r, g, b = decode_image(data).reshape(-1, 3).mean(axis=0)
    assert r > 0.9 and g < 0.1 and b < 0.1


@pytest.mark.parametrize("orientation, marker_at", [(6, (0, -1)), (8, (-1, 0))])
def test_exif_orientation_is_applied(orientation, marker_at):
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)  # 32 wide, 16 high
    pixels[:4, :4] = 255  # marker in the top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif))
    assert out.shape == (32, 16, 3)  # displayed portrait
    row, col = marker_at  # 6: rotate clockwise -> top-right; 8: counter-clockwise -> bottom-left
    assert out[row, col].min() > 0.8
    assert out[-1 - row, -1 - col].max() < 0.2


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    np.testing.assert_allclose(decode_image(data)[0, 0], [1, 0, 0])


@pytest.mark.skipif(not features.check("webp"), reason="Pillow without WebP")
def test_lossy_webp_decodes():
    out = decode_image(encode(Image.new("RGB", (9, 5), (10, 200, 30)), "WEBP", quality=90))
    assert out.shape == (5, 9, 3)
    np.testing.assert_allclose(out[2, 4], [10 / 255, 200 / 255, 30 / 255], atol=0.05)


def test_one_pixel_and_extreme_aspect_ratios_decode():
    assert decode_image(encode(Image.new("RGB", (1, 1), (0, 255, 0)), "PNG")).shape == (1, 1, 3)
    assert decode_image(encode(Image.new("L", (1000, 1)), "PNG")).shape == (1, 1000, 3)


# --- files that must fail, with a reason ----------------------------------------------


def test_empty_file():
    error = decode_error(b"")
    assert (error.stage, error.error_type) == ("decode", "EmptyFile")


@pytest.mark.parametrize(
    "data",
    [
        b"this is a text file named photo.jpg\n",
        RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # EPS: never handed to Ghostscript
    ],
    ids=["text", "random", "eps"],
)
def test_non_images_are_unsupported(data):
    error = decode_error(data)
    assert (error.stage, error.error_type) == ("decode", "UnsupportedFormat")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF"])
@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_truncated_files_are_errors_never_padded(fmt, fraction):
    data = encode(Image.fromarray(PIXELS).convert("P" if fmt == "GIF" else "RGB"), fmt)
    error = decode_error(data[: int(len(data) * fraction)])
    assert (error.stage, error.error_type) == ("decode", "TruncatedImage")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.skipif(not features.check("webp"), reason="Pillow without WebP")
def test_truncated_webp_is_an_error():
    data = encode(Image.fromarray(PIXELS), "WEBP")
    assert decode_error(data[: len(data) // 2]).stage == "decode"


def test_corrupt_png_data_is_an_error():
    data = bytearray(encode(Image.fromarray(PIXELS), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 64] = bytes(64)  # zero the start of the zlib stream
    assert decode_error(bytes(data)).error_type == "CorruptImage"


def test_refuses_to_decode_when_truncated_loading_is_switched_on(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(encode(Image.fromarray(PIXELS), "PNG"))


@pytest.mark.parametrize("side", [60_000, 8_000])  # over Pillow's own limit; over ours only
def test_decompression_bomb_is_refused_from_the_header(side):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    error = decode_error(png_header_only(side, side))
    assert time.perf_counter() - start < 1
    assert (error.stage, error.error_type) == ("decode", "DecompressionBomb")
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def test_max_pixels_is_per_call():
    data = encode(Image.fromarray(PIXELS), "PNG")  # 768 pixels
    assert decode_error(data, max_pixels=767).error_type == "DecompressionBomb"
    assert decode_image(data, max_pixels=768).shape == (24, 32, 3)


def test_pillows_own_bomb_error_is_mapped(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    error = decode_error(encode(Image.fromarray(PIXELS), "PNG"), max_pixels=10**9)
    assert error.error_type == "DecompressionBomb"


def test_image_error_pickles_and_checks_its_stage():
    error = pickle.loads(pickle.dumps(ImageError("decode", "EmptyFile", "the file is empty")))
    assert (error.stage, error.error_type, error.message) == (
        "decode",
        "EmptyFile",
        "the file is empty",
    )
    assert str(error) == "the file is empty"
    with pytest.raises(ValueError, match="stage"):
        ImageError("read", "EmptyFile", "x")


# --- resize_with_pad and its geometry -------------------------------------------------

SHAPES = [
    ((5, 7), (224, 224)),  # upscale
    ((300, 400), (224, 224)),  # downscale
    ((10, 300), (64, 64)),  # wide
    ((300, 10), (64, 64)),  # tall
    ((1, 1), (224, 224)),  # TF's float32 floors give a 223x223 content box here
    ((37, 53), (32, 48)),  # non-square target
    ((224, 224), (224, 224)),  # identity
]


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.mark.parametrize("source, target", SHAPES)
def test_resize_with_pad_matches_tensorflow(tf, source, target):
    image = RNG.random(source + (3,), dtype=np.float32)
    expected = tf.image.resize_with_pad(image, *target).numpy()
    out = resize_with_pad(image, target)
    assert out.dtype == np.float32 and out.shape == target + (3,)
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "source, target", SHAPES + [((1, 1000), (224, 224)), ((3, 1000), (224, 224))]
)
def test_geometry_is_where_the_content_lands(tf, source, target):
    geometry = pad_geometry(source, target)
    x0, y0, x1, y1 = geometry.content_box
    out = resize_with_pad(np.ones(source + (3,), np.float32), target)
    rows, cols = np.nonzero(out[..., 0])
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)
    assert geometry.box_to_model((0, 0, source[1], source[0])) == (x0, y0, x1, y1)


def test_extreme_aspect_ratio_keeps_one_pixel_where_tensorflow_fails():
    geometry = pad_geometry((1, 1000), (224, 224))
    assert geometry.content_size == (1, 224) and geometry.offset == (111, 0)


def test_box_to_model_scales_offsets_and_clips():
    geometry = pad_geometry((100, 200), (224, 224))  # content 112x224 at top 56
    assert (geometry.content_size, geometry.offset) == ((112, 224), (56, 0))
    assert geometry.box_to_model((50, 25, 150, 75)) == (56.0, 84.0, 168.0, 140.0)
    assert geometry.box_to_model((-10, -10, 500, 500)) == (0, 56, 224, 168)
    with pytest.raises(ValueError):
        geometry.box_to_model((10, 0, 5, 5))


@pytest.mark.parametrize(
    "source, target", [((0, 5), (224, 224)), ((5, 5), (224,)), ((5, 5), (-1, 3))]
)
def test_pad_geometry_rejects_bad_sizes(source, target):
    with pytest.raises(ValueError):
        pad_geometry(source, target)


def test_resize_with_pad_rejects_non_images():
    with pytest.raises(ValueError, match="height, width, channels"):
        resize_with_pad(np.zeros((4, 4), np.float32), (8, 8))


@pytest.mark.parametrize("shape", [(16, 16, 3), (16, 8, 3), (5, 16, 1)])
def test_an_image_needing_no_scaling_is_tfs_resize_with_pad_bit_for_bit(shape):
    """The model's size already (or only padding needed): the resize is skipped, and the result
    is still exactly TF's."""
    import tensorflow as tf

    image = np.random.default_rng(3).random(shape, dtype=np.float32)
    expected = tf.image.resize_with_pad(image, 16, 16).numpy()
    result = resize_with_pad(image, (16, 16))
    assert result.dtype == np.float32 and result.shape == expected.shape
    assert np.array_equal(result, expected)
    assert not np.shares_memory(result, image)
