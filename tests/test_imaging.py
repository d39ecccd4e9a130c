"""The one decode path: real-world-shaped files in, a (32, 32, 3) uint8 RGB array out.

    .venv/bin/pytest tests/test_imaging.py

Every file is generated here (no fixtures on disk): phone-sized JPEGs, CMYK and progressive
JPEGs, transparent PNGs, 16-bit PNGs, EXIF-rotated photos, animated GIFs, and hostile inputs
(empty, text, truncated, corrupt, decompression bombs).
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from cifarlab.errors import CifarlabError
from cifarlab.serve.imaging import DEFAULT_MAX_PIXELS, ImageError, load_image

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def solid(colour: tuple[int, ...], size: tuple[int, int] = (48, 40), mode: str = "RGB"):
    return Image.new(mode, size, colour)


def mean_rgb(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(-1, 3).mean(axis=0)


def assert_colour(arr: np.ndarray, colour: tuple[int, int, int], tol: float = 3.0) -> None:
    assert arr.shape == (32, 32, 3)
    assert arr.dtype == np.uint8
    np.testing.assert_allclose(mean_rgb(arr), colour, atol=tol)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written byte by byte, for headers Pillow will not write (16-bit RGB, huge sizes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


# --- formats and modes ---------------------------------------------------------------------


def test_large_jpeg_photo_is_centre_cropped_and_downsampled_faithfully() -> None:
    # A 3072x2048 "photo": horizontal red ramp, vertical green ramp, constant blue, plus noise.
    h, w = 2048, 3072
    rng = np.random.default_rng(0)
    xs = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    ys = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    photo = np.stack([xs, ys, np.full((h, w), 90.0)], axis=-1)
    photo = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)
    data = encode(Image.fromarray(photo), "JPEG", quality=90)

    out = load_image(data)

    # Expected: the centred 2048x2048 square, averaged over 64x64 blocks.
    square = photo[:, (w - h) // 2 : (w - h) // 2 + h].astype(np.float64)
    expected = square.reshape(32, 64, 32, 64, 3).mean(axis=(1, 3))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - expected).mean() < 4.0
    # The crop is central: the red ramp spans ~1/6..5/6 of full scale, not 0..255.
    assert 30 < out[:, 0, 0].mean() < 60
    assert 195 < out[:, -1, 0].mean() < 225


def test_wide_image_keeps_only_the_centre_square() -> None:
    strip = np.zeros((32, 96, 3), np.uint8)
    strip[:, :32] = RED
    strip[:, 32:64] = GREEN
    strip[:, 64:] = BLUE
    out = load_image(encode(Image.fromarray(strip), "PNG"))
    assert_colour(out, GREEN, tol=0.5)


def test_small_image_is_upsampled_to_32x32() -> None:
    assert_colour(load_image(encode(solid(BLUE, (8, 8)), "PNG")), BLUE, tol=0.5)


def test_rgba_png_composites_transparency_on_white() -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (*RED, 255)  # opaque red left half
    rgba[:, 16:] = (0, 0, 0, 0)  # fully transparent "black" right half
    out = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_allclose(mean_rgb(out[:, :14]), RED, atol=1)
    np.testing.assert_allclose(mean_rgb(out[:, 18:]), WHITE, atol=1)


def test_half_transparent_pixels_blend_with_white() -> None:
    out = load_image(encode(solid((0, 0, 0, 128), mode="RGBA"), "PNG"))
    assert_colour(out, (127, 127, 127), tol=1.5)


def test_cmyk_jpeg_converts_to_rgb() -> None:
    cyan = solid((255, 0, 0, 0), mode="CMYK")  # full cyan ink
    data = encode(cyan, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_colour(load_image(data), (0, 255, 255), tol=4)


def test_progressive_jpeg_decodes() -> None:
    im = Image.fromarray(np.full((600, 800, 3), (200, 100, 50), np.uint8))
    data = encode(im, "JPEG", quality=90, progressive=True)
    assert Image.open(io.BytesIO(data)).info.get("progressive")
    assert_colour(load_image(data), (200, 100, 50), tol=3)


def test_webp_decodes() -> None:
    assert_colour(load_image(encode(solid(GREEN), "WEBP", lossless=True)), GREEN, tol=0.5)


def test_avif_decodes() -> None:
    # AVIF is a supported upload format, so a Pillow without the codec is a broken install:
    # CI fails on it; elsewhere the test skips and says why.
    if not features.check("avif"):
        msg = "this Pillow has no AVIF codec (Pillow >= 11.3 wheels include it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    assert_colour(load_image(encode(solid((40, 80, 160)), "AVIF", quality=90)), (40, 80, 160), 8)


def test_16bit_grey_png_is_scaled_not_clipped() -> None:
    grey16 = np.full((40, 40), 128 * 257, np.uint16)  # mid-grey on the 16-bit scale
    data = encode(Image.fromarray(grey16), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    # Pillow's own convert("L") would clip 32896 to 255 (white).
    assert_colour(load_image(data), (128, 128, 128), tol=0.5)


def test_16bit_grey_png_keeps_the_full_range() -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16)
    out = load_image(encode(Image.fromarray(np.tile(ramp, (64, 1))), "PNG"))
    assert out[:, 0].max() < 10 and out[:, -1].min() > 245


def test_16bit_rgb_png_decodes() -> None:
    # Colour type 2 with 16 bits per channel: (0xC800, 0x6400, 0x3200) -> (200, 100, 50).
    px = struct.pack(">HHH", 0xC800, 0x6400, 0x3200)
    rows = b"".join(b"\x00" + px * 16 for _ in range(16))
    assert_colour(load_image(raw_png(16, 16, 16, 2, rows)), (200, 100, 50), tol=0.5)


def test_exif_orientation_is_applied() -> None:
    # Stored: left half red, right half blue. Orientation 6 means "rotate 90 degrees clockwise
    # to display", which puts the stored left side on top.
    stored = np.zeros((64, 64, 3), np.uint8)
    stored[:, :32] = RED
    stored[:, 32:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())

    out = load_image(data).astype(int)

    np.testing.assert_allclose(mean_rgb(out[:12]), RED, atol=12)
    np.testing.assert_allclose(mean_rgb(out[-12:]), BLUE, atol=12)
    # The left and right halves are now the same mix, not one colour each.
    np.testing.assert_allclose(mean_rgb(out[:, :16]), mean_rgb(out[:, 16:]), atol=6)


def test_gif_uses_the_first_frame() -> None:
    frames = [solid(RED).convert("P"), solid(BLUE).convert("P"), solid(GREEN).convert("P")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert_colour(load_image(data), RED, tol=1)


def test_palette_with_transparency_composites_on_white() -> None:
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, *RED] + [0] * (256 - 2) * 3)
    pal.paste(1, (0, 0, 16, 32))  # left half palette index 1 (red), right half index 0
    data = encode(pal, "PNG", transparency=0)  # index 0 is transparent
    out = load_image(data)
    np.testing.assert_allclose(mean_rgb(out[:, :14]), RED, atol=1)
    np.testing.assert_allclose(mean_rgb(out[:, 18:]), WHITE, atol=1)


def test_la_grey_with_alpha_composites_on_white() -> None:
    la = np.zeros((32, 32, 2), np.uint8)
    la[:, :16] = (60, 255)  # opaque dark grey
    la[:, 16:] = (0, 0)  # transparent
    out = load_image(encode(Image.fromarray(la, "LA"), "PNG"))
    np.testing.assert_allclose(mean_rgb(out[:, :14]), (60, 60, 60), atol=1)
    np.testing.assert_allclose(mean_rgb(out[:, 18:]), WHITE, atol=1)


@pytest.mark.parametrize(
    ("fmt", "mode", "colour"),
    [
        ("BMP", "RGB", (10, 200, 30)),
        ("TIFF", "RGB", (10, 200, 30)),
        ("TIFF", "CMYK", (0, 0, 0, 0)),  # no ink: white
        ("PNG", "L", 77),
        ("PNG", "1", 1),
    ],
)
def test_other_formats_and_modes_decode(fmt: str, mode: str, colour: object) -> None:
    im = Image.new(mode, (40, 30), colour)  # type: ignore[arg-type]
    expected = im.convert("RGB").getpixel((0, 0))
    assert_colour(load_image(encode(im, fmt)), expected, tol=0.5)  # type: ignore[arg-type]


def test_result_is_contiguous_and_writable_by_normalize() -> None:
    from cifarlab.preprocess import normalize

    out = load_image(encode(solid(RED), "PNG"))
    assert out.flags["C_CONTIGUOUS"]
    assert normalize(out[None]).shape == (1, 3, 32, 32)


# --- hostile and broken input --------------------------------------------------------------


def expect_error(data: bytes, status: int, words: str, **kwargs: int) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(data, **kwargs)
    err = info.value
    assert err.status_code == status
    assert words in str(err).lower()
    return err


def test_empty_file_is_422() -> None:
    err = expect_error(b"", 422, "empty")
    assert isinstance(err, CifarlabError)


def test_text_file_is_422() -> None:
    expect_error(b"hello, this is not an image\n" * 10, 422, "not a recognised image")


def test_unsupported_format_is_422() -> None:
    # ICO decodes in Pillow but is not on the allowlist.
    expect_error(encode(solid(RED, (32, 32)), "ICO"), 422, "not a recognised image")


def test_truncated_png_is_422() -> None:
    rng = np.random.default_rng(1)
    noisy = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    data = encode(noisy, "PNG")
    expect_error(data[: len(data) // 2], 422, "truncated or corrupt")


def test_truncated_jpeg_is_422() -> None:
    rng = np.random.default_rng(2)
    noisy = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    data = encode(noisy, "JPEG")
    expect_error(data[: len(data) // 2], 422, "truncated or corrupt")


def test_corrupt_png_data_is_422() -> None:
    data = bytearray(
        encode(Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)), "PNG")
    )
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 60] = b"\xff" * 40  # garbage in the compressed stream
    expect_error(bytes(data), 422, "corrupt")


def test_png_with_header_but_no_pixel_data_is_422() -> None:
    expect_error(raw_png(10, 10, 8, 2, b""), 422, "truncated or corrupt")
    expect_error(raw_png(10, 10, 8, 2, b"")[:33], 422, "not a recognised image")


@pytest.fixture
def no_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if any image is decoded: the pixel limit must act on the header alone."""

    def forbidden(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"decoded a {self.size} image that should have been refused")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)


def test_header_claiming_too_many_pixels_is_413_without_decoding(no_full_decode: None) -> None:
    # 8000x8000 = 64 MP: above our 50 MP default, below Pillow's own bomb threshold.
    data = raw_png(8000, 8000, 8, 0, b"\x00" * 100)
    err = expect_error(data, 413, "8000x8000")
    assert f"{DEFAULT_MAX_PIXELS:,}" in str(err)


def test_pillow_decompression_bomb_is_413_without_decoding(no_full_decode: None) -> None:
    # 100000x100000: Pillow itself refuses this in Image.open.
    expect_error(raw_png(100_000, 100_000, 8, 0, b"\x00"), 413, "too large")


def test_highly_compressible_image_over_the_limit_is_413(no_full_decode: None) -> None:
    blank = encode(Image.new("L", (4000, 3000)), "PNG")  # 12 MP of zeros, a few KB on disk
    assert len(blank) < 100_000
    expect_error(blank, 413, "limit", max_pixels=10_000_000)


def test_max_pixels_applies_to_jpeg_before_dct_scaling(no_full_decode: None) -> None:
    data = encode(Image.new("RGB", (2000, 1500)), "JPEG")
    expect_error(data, 413, "2000x1500", max_pixels=1_000_000)


def test_global_pillow_settings_are_left_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    with pytest.raises(ImageError):
        load_image(raw_png(100_000, 100_000, 8, 0, b"\x00"))
    load_image(encode(solid(RED), "PNG"))
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


def test_no_full_decode_guard_really_catches_decoding(no_full_decode: None) -> None:
    # Keeps the three tests above honest: with the guard on, a small valid image cannot load.
    expect_error(encode(solid(RED), "PNG"), 422, "should have been refused")
