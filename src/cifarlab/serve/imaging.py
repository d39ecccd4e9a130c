"""Decode an uploaded image file into one CIFAR-sized RGB array: the single decode path.

    cifarlab predict cat.jpg   # the CLI; /predict and /predict/batch decode the same way

`load_image(data)` turns the bytes of any common image file into a uint8 `(32, 32, 3)` RGB
array, ready for `cifarlab.preprocess.normalize`. The CLI `cifarlab predict` and the API's
`/predict` and `/predict/batch` both call it, so a file gives the same answer either way.
Pillow only (no torch), so the serving image stays slim.

What it does, in order, and why:

1. **Format allowlist.** PNG, JPEG (including CMYK, progressive and MPO camera files), WebP,
   GIF, BMP, TIFF and AVIF. Other Pillow plugins (EPS, which would run Ghostscript; PSD; ICO;
   scientific formats) are refused with 422: they are rare for photos and widen the attack
   surface.
2. **Pixel limit before decoding.** `Image.open` only reads the header, so the declared
   width x height is compared with `max_pixels` (default 50 million: a 48 MP phone photo
   passes) before any pixel is decoded; larger gives 413. Pillow's own decompression-bomb
   error (above twice `Image.MAX_IMAGE_PIXELS`) also maps to 413. Global Pillow settings are
   never changed, so other code in the process is unaffected.
3. **Full decode.** JPEGs are decoded with DCT scaling (`Image.draft`) to no less than 4x the
   target size: a 3000x2000 photo decodes at 375x250, which is much faster and is itself a
   good anti-aliasing filter. A truncated or corrupt file gives 422 (Pillow's
   `LOAD_TRUNCATED_IMAGES` is left off). Animated GIF/WebP/multi-page TIFF: the first frame.
4. **EXIF orientation** is applied (`ImageOps.exif_transpose`), so a phone photo taken
   upright is classified upright. A broken EXIF block is ignored rather than fatal.
5. **Any mode to RGB.** Transparency (RGBA, LA, PA, P or L or RGB with a transparent colour) is
   composited onto **white**: cut-out objects and icons are made to be seen on a white page,
   while dropping alpha would expose arbitrary colours under transparent pixels. 16-bit
   greyscale (`I;16*`) is scaled to 8 bits (v / 257, rounded), not clipped as Pillow's
   `convert("L")` would; 16-bit RGB PNGs are reduced to their high byte by Pillow. 32-bit
   integer (`I`) images are treated as 16-bit when any value exceeds 255, else as 8-bit;
   float (`F`) images as 0-1 when their maximum is at most 1, else as 0-255. CMYK, YCbCr, 1-bit
   and palette images use Pillow's conversions. Embedded ICC profiles are not applied.
6. **Centre crop, then resize.** The largest centred square is cropped and resized to 32x32
   with bicubic filtering (`reducing_gap=3`, antialiased). CIFAR-10 images are square, with
   the object roughly centred; squashing a 3:2 photo instead would distort shapes the network
   learned (a cat would look 1.5x wider), while the crop loses only the sides.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarlab.constants import IMAGE_SIZE
from cifarlab.errors import CifarlabError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000  # declared width x height; a 48 MP phone photo fits
# Pillow plugin names; JPEG also covers MPO (multi-picture camera JPEGs).
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
_SUPPORTED_TEXT = "PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF"
_DRAFT_FACTOR = 4  # JPEG DCT scaling keeps at least 4x the output size per side
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageError(CifarlabError):
    """An uploaded file that cannot be used as an image.

    `status_code` is the HTTP status the API answers with: 413 when the image is too large
    (declared pixel count or a decompression bomb), 422 for everything else (empty, not an
    image, unsupported format or mode, truncated or corrupt).
    """

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


def load_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> uint8 `(32, 32, 3)` RGB array (see the module docstring).

    Raises `ImageError` (with `status_code` 413 or 422) for anything that is not a usable
    image; never another exception type for bad input.
    """
    if not data:
        raise ImageError("the file is empty (0 bytes); send a PNG, JPEG or other image file")
    try:
        im = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"the image is too large to decode safely ({exc}); send an image of at most "
            f"{max_pixels:,} pixels",
            status_code=413,
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"the file is not a recognised image ({len(data):,} bytes); send a "
            f"{_SUPPORTED_TEXT} file"
        ) from None
    except Exception as exc:
        # A header that parses far enough to pick a plugin and then breaks it.
        raise ImageError(
            f"the image header is corrupt ({_describe(exc)}); re-save the file"
        ) from None

    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError(f"the image has no pixels ({width}x{height}); send a real image")
        if width * height > max_pixels:
            # Checked on the header alone: nothing has been decoded yet.
            raise ImageError(
                f"the image is {width}x{height} = {width * height:,} pixels, more than the "
                f"limit of {max_pixels:,}; downscale it before sending",
                status_code=413,
            )
        if im.format == "JPEG" or im.format == "MPO":
            side = IMAGE_SIZE * _DRAFT_FACTOR
            im.draft(None, (side, side))
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise ImageError(f"the image is too large to decode safely ({exc})", 413) from None
        except Exception as exc:
            # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error
            # and more on damaged data; all mean the same thing to the sender.
            raise ImageError(
                f"the {im.format} image is truncated or corrupt ({_describe(exc)}); "
                "re-save or re-export the file"
            ) from None
        fmt = im.format
        try:
            rgb = _to_rgb(_apply_exif_orientation(im))
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(
                f"cannot convert the {fmt} image (mode {im.mode}) to RGB ({_describe(exc)}); "
                "save it as an 8-bit RGB PNG or JPEG"
            ) from None
        # Inside the `with`: closing the file also frees an image that was not copied.
        return _centre_crop_resize(rgb)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:
        # Orientation is a nicety; a damaged EXIF block should not reject a decodable photo.
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_wide_to_uint8(np.asarray(im), mode)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    # 1, L, P (opaque), CMYK, YCbCr, LAB, HSV: Pillow's own conversions.
    return im.convert("RGB")


def _wide_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer or float greyscale -> uint8 with the full range preserved."""
    if arr.size == 0:
        raise ImageError(f"the {mode} image has no pixels; send a real image")
    values = arr.astype(np.float64)
    if mode == "F":
        if not np.isfinite(values).all():
            raise ImageError("the float image contains NaN or infinite values; re-export it")
        scaled = values * 255.0 if values.max() <= 1.0 else values
    elif mode == "I" and values.max() <= 255:
        scaled = values  # an 8-bit image stored in 32-bit integers
    else:
        scaled = values / 257.0  # 65535 -> 255 exactly
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _centre_crop_resize(im: Image.Image) -> np.ndarray:
    width, height = im.size
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    small = im.resize(
        (IMAGE_SIZE, IMAGE_SIZE),
        Image.Resampling.BICUBIC,
        box=(left, top, left + side, top + side),
        # Shrinks by an integer factor with a box filter first, then bicubic for the last
        # <= 3x: nearly the quality of a full bicubic pass at a fraction of the cost.
        reducing_gap=3.0,
    )
    out = np.asarray(small, dtype=np.uint8)
    if out.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ImageError(f"decoding produced shape {out.shape}, expected (32, 32, 3)")
    return np.ascontiguousarray(out)
