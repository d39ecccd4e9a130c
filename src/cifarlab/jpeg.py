"""JPEG re-encoding of uint8 image batches with Pillow: the one place that does it.

    python -c "from cifarlab.jpeg import reencode; ..."

Real users upload JPEG photos, not CIFAR's lossless pixels. Training (`FastConfig.jpeg_copies`)
and the robustness sweep (`cifarlab robustness`) both re-encode through this module, so what
the model is trained on and what it is measured on come from the same encoder.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def reencode_one(image: np.ndarray, quality: int) -> np.ndarray:
    """One uint8 `(H, W, 3)` image -> JPEG at `quality` (1..95) -> decoded uint8 `(H, W, 3)`."""
    buf = io.BytesIO()
    # Pillow's defaults (4:2:0 chroma subsampling, standard tables) are what browsers and
    # phones produce for an upload; keeping them makes the test copies realistic.
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def reencode(images: np.ndarray, quality: int | np.ndarray) -> np.ndarray:
    """uint8 `(N, H, W, 3)` re-encoded at one quality, or one quality per image."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    q = np.broadcast_to(np.asarray(quality, dtype=np.int64), (len(images),))
    if len(q) and (q.min() < 1 or q.max() > 95):
        raise ValueError("JPEG quality must be in 1..95 (Pillow treats above 95 as near-lossless)")
    out = np.empty_like(images)
    for i in range(len(images)):
        out[i] = reencode_one(images[i], int(q[i]))
    return out


def random_copies(
    images: np.ndarray, copies: int, quality_range: tuple[int, int], seed: int
) -> np.ndarray:
    """`copies` re-encoded versions of `images`, `(copies, N, H, W, 3)`, each image of each copy
    at its own quality drawn uniformly from `quality_range` (inclusive) with `seed`."""
    lo, hi = quality_range
    if not 1 <= lo <= hi <= 95:
        raise ValueError(f"quality_range {quality_range} must satisfy 1 <= low <= high <= 95")
    rng = np.random.default_rng(seed)
    out = np.empty((copies, *images.shape), dtype=np.uint8)
    for k in range(copies):
        out[k] = reencode(images, rng.integers(lo, hi + 1, size=len(images)))
    return out
