"""CIFAR-10-C: the 15 common corruptions at 5 severities, generated from the official test set.

    python -c "from cifarlab.corruptions import corrupt; ..."   # used by `cifarlab robustness`

Hendrycks & Dietterich (ICLR 2019) published CIFAR-10-C as arrays made by their
`make_cifar_c.py`, with a parameter table tuned for 32x32 images. We regenerate it rather than
download it (2.9 GB, and no file of it is checksummed by the authors), so the set is
reproducible from a seed and from the official test set we already verify.

Why our own code and not the `imagecorruptions` package: that package (the maintained port of
ImageNet-C) hard-codes ImageNet-C's parameters, which are tuned for 224x224 images; on 32x32
images its severities are far harsher than CIFAR-10-C's (e.g. Gaussian noise sigma 0.08-0.38
against 0.04-0.10), and it pulls in OpenCV and scikit-image for a handful of filters. So:

- the parameter tables below are CIFAR-10-C's (make_cifar_c.py), severity 1..5;
- the operations are re-expressed with numpy, scipy.ndimage and Pillow, vectorised over the
  batch where the original loops per image (same maths, not bit-identical: different
  resampling code, and ImageMagick's motion blur is replaced by the same Gaussian line kernel
  that `imagecorruptions` uses to avoid ImageMagick);
- frost needs photographs of frost: CIFAR-10-C used the first five of six textures that ship
  with the ImageNet-C code and with `imagecorruptions`. We read those files from an installed
  `imagecorruptions` distribution (`pip install imagecorruptions`, without importing it) or
  from `$CIFARLAB_FROST_DIR`; without either, `frost` raises a `CorruptionError` naming both.

Randomness comes from `numpy.random.default_rng((seed, corruption index, severity))`, so every
(corruption, severity) array is a pure function of the input images and the seed, whatever
else was generated before it. Outputs are truncated to uint8 as in the original.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from cifarlab.errors import CifarlabError
from cifarlab.jpeg import reencode

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
GENERATOR_VERSION = 1  # bump when any output changes: it is part of the cache key

Images = np.ndarray  # float64 (N, H, W, 3) in [0, 1] inside this module


class CorruptionError(CifarlabError):
    """An unknown corruption or severity, or a missing frost texture."""


# ---------------------------------------------------------------------------- helpers


def _gaussian(x: Images, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> Images:
    """Per-image spatial Gaussian blur of `(N, H, W, C)` (as skimage.filters.gaussian)."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode=mode, truncate=truncate)


def _gather_shift(x: Images, dy: np.ndarray, dx: np.ndarray) -> Images:
    """`out[n, r, c] = x[n, r - dy[n], c - dx[n]]` with edge pixels repeated (per-image shift)."""
    n, h, w = x.shape[:3]
    rows = np.clip(np.arange(h)[None, :] - dy[:, None], 0, h - 1)  # (N, H)
    cols = np.clip(np.arange(w)[None, :] - dx[:, None], 0, w - 1)  # (N, W)
    return x[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _motion_blur(x: Images, radius: float, sigma: float, angles: np.ndarray) -> Images:
    """ImageMagick-style motion blur: a one-sided Gaussian line kernel at a per-image angle."""
    width = int(2 * radius + 1) if radius else 3
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    rad = np.deg2rad(angles)
    out = np.zeros_like(x)
    for i in range(width):
        dy = -np.ceil(i * np.sin(rad) - 0.5).astype(np.int64)
        dx = -np.ceil(i * np.cos(rad) - 0.5).astype(np.int64)
        out += kernel[i] * _gather_shift(x, dy, dx)
    return out


def _clipped_zoom(x: Images, factor: float) -> Images:
    """Zoom the centre of each image by `factor` (bilinear) and crop back to the input size.

    Same sampling grid as `scipy.ndimage.zoom(order=1)` on the centre crop (output pixel j of
    an n-pixel zoom reads input (j * (ch - 1) / (n - 1))), but as two gathers over the batch:
    scipy's generic spline code took ~30x longer on `(N, H, W, C)` arrays.
    """
    h = x.shape[1]
    ch = math.ceil(h / factor)
    top = (h - ch) // 2
    n_out = round(ch * factor)
    trim = (n_out - h) // 2
    pos = np.arange(trim, trim + h) * (ch - 1) / max(n_out - 1, 1) + top  # (H,) input coords
    lo = np.clip(np.floor(pos).astype(np.int64), 0, h - 1)
    hi = np.clip(lo + 1, 0, h - 1)
    frac = (pos - lo)[None, :, None, None]
    rows = x[:, lo] * (1 - frac) + x[:, hi] * frac  # (N, H, W, C) interpolated along rows
    frac_c = (pos - lo)[None, None, :, None]
    return rows[:, :, lo] * (1 - frac_c) + rows[:, :, hi] * frac_c


def _plasma_fractal(rng: np.random.Generator, n: int, size: int, decay: float) -> np.ndarray:
    """Diamond-square height maps `(n, size, size)` in [0, 1], one per image (batched)."""
    m = np.zeros((n, size, size))
    step, wibble = size, 100.0

    def mean_plus_noise(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[:, 0:size:step, 0:size:step]
        sq = corners + np.roll(corners, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half:size:step, half:size:step] = mean_plus_noise(sq)
        dr = m[:, half:size:step, half:size:step]
        ul = m[:, 0:size:step, 0:size:step]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        m[:, 0:size:step, half:size:step] = mean_plus_noise(lt)
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        m[:, half:size:step, 0:size:step] = mean_plus_noise(tt)
        step //= 2
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """An anti-aliased disk (defocus) kernel, 17x17 for the small radii CIFAR-10-C uses."""
    r = np.arange(-8, 9) if radius <= 8 else np.arange(-math.ceil(radius), math.ceil(radius) + 1)
    yy, xx = np.meshgrid(r, r)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    # 3x3 Gaussian anti-aliasing with mirrored borders (OpenCV's GaussianBlur default).
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    return ndimage.correlate(disk, np.outer(g, g), mode="mirror")


def _gray(x: Images) -> np.ndarray:
    """ITU-R 601 luma `(N, H, W, 1)`, the weights of OpenCV's RGB2GRAY."""
    return (x @ np.array([0.299, 0.587, 0.114]))[..., None]


def frost_dir() -> Path:
    """Folder holding frost1.png .. frost5.jpg (see the module docstring)."""
    env = os.environ.get("CIFARLAB_FROST_DIR")
    if env:
        return Path(env)
    from importlib import metadata

    try:
        dist = metadata.distribution("imagecorruptions")
    except metadata.PackageNotFoundError:
        raise CorruptionError(
            "the frost corruption needs the frost photographs of ImageNet-C: "
            "`pip install imagecorruptions` (its files are read, the package is not imported), "
            "or set CIFARLAB_FROST_DIR to a folder with frost1.png..frost5.jpg"
        ) from None
    return Path(str(dist.locate_file("imagecorruptions/frost")))


@cache
def _frost_textures() -> tuple[np.ndarray, ...]:
    """The five textures scaled by 0.2 (as make_cifar_c.py), float RGB in [0, 255]."""
    folder = frost_dir()
    out = []
    for name in FROST_FILES:
        path = folder / name
        if not path.is_file():
            raise CorruptionError(f"frost texture {path} is missing; reinstall imagecorruptions")
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            size = (round(rgb.width * 0.2), round(rgb.height * 0.2))
            small = rgb.resize(size, Image.Resampling.BILINEAR)
            out.append(np.asarray(small, dtype=np.float64))
    return tuple(out)


# ---------------------------------------------------------------------------- corruptions
# Each takes float images in [0, 1], a severity parameter tuple/number and a generator, and
# returns float images in [0, 1] (CIFAR-10-C's parameter table is in `PARAMS`).


def gaussian_noise(x: Images, c: float, rng: np.random.Generator) -> Images:
    return x + rng.normal(scale=c, size=x.shape)


def shot_noise(x: Images, c: float, rng: np.random.Generator) -> Images:
    return rng.poisson(x * c) / c


def impulse_noise(x: Images, c: float, rng: np.random.Generator) -> Images:
    # Salt and pepper on each channel value independently, half salt, half pepper.
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float64), x)


def defocus_blur(x: Images, c: tuple[float, float], rng: np.random.Generator) -> Images:
    k = _disk_kernel(*c)
    return ndimage.correlate(x, k[None, :, :, None], mode="mirror")


def glass_blur(x: Images, c: tuple[float, int, int], rng: np.random.Generator) -> Images:
    sigma, delta, iterations = c
    n, h, w = x.shape[:3]
    u = (np.clip(_gaussian(x, sigma), 0, 1) * 255).astype(np.uint8)
    ar = np.arange(n)
    # Local pixel shuffling: the original visits pixels in this order and swaps each with a
    # neighbour at offsets in [-delta, delta); the loop runs over positions, all images at once.
    for _ in range(iterations):
        for r in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                d = rng.integers(-delta, delta, size=(2, n))
                r2, c2 = r + d[1], col + d[0]
                a = u[ar, r, col].copy()
                u[ar, r, col] = u[ar, r2, c2]
                u[ar, r2, c2] = a
    return _gaussian(u / 255.0, sigma)


def motion_blur(x: Images, c: tuple[float, float], rng: np.random.Generator) -> Images:
    return _motion_blur(x, c[0], c[1], rng.uniform(-45, 45, size=len(x)))


def zoom_blur(x: Images, c: np.ndarray, rng: np.random.Generator) -> Images:
    out = np.zeros_like(x)
    for factor in c:
        out += _clipped_zoom(x, float(factor))
    return (x + out) / (len(c) + 1)


def snow(x: Images, c: tuple[float, ...], rng: np.random.Generator) -> Images:
    loc, scale, zoom, threshold, radius, sigma, keep = c
    layer = rng.normal(loc=loc, scale=scale, size=(*x.shape[:3], 1))
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    # The original blurs a uint8 PNG of the layer: quantise the same way.
    layer = np.floor(np.clip(layer, 0, 1) * 255) / 255
    layer = _motion_blur(layer, radius, sigma, rng.uniform(-135, -45, size=len(x)))
    x = keep * x + (1 - keep) * np.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2, axes=(1, 2))


def frost(x: Images, c: tuple[float, float], rng: np.random.Generator) -> Images:
    textures = _frost_textures()
    n, h, w = x.shape[:3]
    out = np.empty_like(x)
    which = np.asarray(rng.integers(0, len(textures), size=n))
    for i in range(n):
        t: np.ndarray = textures[int(which[i])]
        top = int(rng.integers(0, t.shape[0] - h))
        left = int(rng.integers(0, t.shape[1] - w))
        out[i] = c[0] * x[i] * 255 + c[1] * t[top : top + h, left : left + w]
    return out / 255


def fog(x: Images, c: tuple[float, float], rng: np.random.Generator) -> Images:
    size = x.shape[1]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + c[0] * _plasma_fractal(rng, len(x), size, c[1])[..., None]
    return x * peak / (peak + c[0])


def brightness(x: Images, c: float, rng: np.random.Generator) -> Images:
    # In HSV, every channel is V times a factor of H and S; raising V to clip(V + c) keeps H
    # and S, so it scales the RGB values by V'/V (a black pixel becomes grey V').
    v = x.max(axis=3, keepdims=True)
    v_new = np.clip(v + c, 0, 1)
    scaled = x * np.divide(v_new, v, out=np.zeros_like(v), where=v > 0)
    return np.where(v > 0, scaled, v_new)


def contrast(x: Images, c: float, rng: np.random.Generator) -> Images:
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix A with A @ [x, y, 1] = dst for the three (x, y) points in src."""
    a = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(a, dst).T


def elastic_transform(x: Images, c: tuple[float, float, float], rng: np.random.Generator) -> Images:
    alpha, sigma, affine = c
    n, h, w = x.shape[:3]
    centre = np.array([w, h], dtype=np.float64) // 2
    side = min(h, w) // 3
    pts1 = np.array(
        [centre + side, [centre[0] + side, centre[1] - side], centre - side], dtype=np.float64
    )
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty_like(x)
    for i in range(n):
        pts2 = pts1 + rng.uniform(-affine, affine, size=pts1.shape)
        # Output pixel p samples the input at A^-1 p (how a forward warp is resampled).
        inv = _affine_from_points(pts2, pts1)
        sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
        sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
        warped = np.stack(
            [
                ndimage.map_coordinates(x[i, :, :, ch], [sy, sx], order=1, mode="mirror")
                for ch in range(3)
            ],
            axis=-1,
        )
        dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect", truncate=3)
        dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect", truncate=3)
        coords = [yy + alpha * dy, xx + alpha * dx]
        out[i] = np.stack(
            [
                ndimage.map_coordinates(warped[:, :, ch], coords, order=1, mode="reflect")
                for ch in range(3)
            ],
            axis=-1,
        )
    return out


def pixelate(x: Images, c: float, rng: np.random.Generator) -> Images:
    u = (np.clip(x, 0, 1) * 255).astype(np.uint8)
    h, w = u.shape[1:3]
    small = (int(w * c), int(h * c))
    out = np.empty_like(u)
    for i in range(len(u)):
        im = Image.fromarray(u[i]).resize(small, Image.Resampling.BOX)
        im = im.resize((w, h), Image.Resampling.BOX)
        out[i] = np.asarray(im)
    return out / 255.0


def jpeg_compression(x: Images, c: int, rng: np.random.Generator) -> Images:
    return reencode((np.clip(x, 0, 1) * 255).astype(np.uint8), c) / 255.0


# CIFAR-10-C's parameters per severity 1..5 (make_cifar_c.py, Hendrycks & Dietterich 2019).
PARAMS: dict[str, list[object]] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # noise sigma
    "shot_noise": [500, 250, 100, 75, 50],  # photons per unit intensity
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # fraction of values hit
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # radius, alias
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],  # radius, sigma (px)
    "zoom_blur": [np.arange(1, 1 + s, 0.01) for s in (0.06, 0.11, 0.16, 0.21, 0.26)],
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # image, frost weight
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # strength, fractal decay
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],  # added to HSV value
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],  # factor towards the per-image mean
    "elastic_transform": [  # displacement alpha, smoothing sigma, affine jitter (px)
        (32 * 0, 32 * 0, 32 * 0.08),
        (32 * 0.05, 32 * 0.2, 32 * 0.07),
        (32 * 0.08, 32 * 0.06, 32 * 0.06),
        (32 * 0.1, 32 * 0.04, 32 * 0.05),
        (32 * 0.1, 32 * 0.03, 32 * 0.03),
    ],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],  # downscale factor
    "jpeg_compression": [80, 65, 58, 50, 40],  # Pillow quality
}

_FUNCS: dict[str, Callable[..., Images]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """uint8 `(N, 32, 32, 3)` -> the same images with corruption `name` at `severity` (1..5)."""
    if name not in _FUNCS:
        raise CorruptionError(
            f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}"
        )
    if severity not in SEVERITIES:
        raise CorruptionError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise CorruptionError(
            f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}"
        )
    rng = np.random.default_rng((seed, CORRUPTIONS.index(name), severity))
    x = images.astype(np.float64) / 255.0
    y = _FUNCS[name](x, PARAMS[name][severity - 1], rng)
    # np.uint8(float) in the original truncates; clip first so nothing wraps around.
    return (np.clip(y, 0, 1) * 255).astype(np.uint8)
