"""Class activation map overlays: where in the image the evidence for the predicted class sits.

    curl -F file=@cat.jpg 'http://127.0.0.1:8000/predict?explain=true'

Models exported with a `cam` output (fastnet: global pooling + a linear head) return, for each
image, a map of the predicted class's logit contribution on the network's last feature grid
(3x3 cells for a 32x32 input). `overlay_png` scales that map to 0-1 within the image, upsamples
it smoothly to the preview size, colours it (blue = little evidence, red = most) and blends it
over the 32x32 image the model saw (after centre crop and resize). Pillow and numpy only.

Limits: the map is coarse (each cell sees most of the image through its receptive field), it
is relative (the hottest cell is always red, even for a low-confidence guess), and it shows
where the linear head found evidence, not a causal explanation of the decision.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

OVERLAY_SIZE = 128  # pixels per side of the returned PNG
ALPHA = 0.45  # weight of the heatmap in the blend


def _colour(heat: np.ndarray) -> np.ndarray:
    """0-1 heat `(H, W)` -> uint8 RGB `(H, W, 3)` on a blue-cyan-yellow-red ramp."""
    stops = np.array([0.0, 0.35, 0.65, 1.0])
    ramp = np.array([[40, 60, 200], [40, 200, 220], [250, 220, 40], [220, 30, 30]], np.float64)
    rgb = np.stack([np.interp(heat, stops, ramp[:, c]) for c in range(3)], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def overlay_png(image: np.ndarray, cam: np.ndarray, size: int = OVERLAY_SIZE) -> bytes:
    """uint8 RGB `(32, 32, 3)` and a map `(h, w)` -> PNG bytes of the blended `size`^2 overlay."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if cam.ndim != 2 or not np.isfinite(cam).all():
        raise ValueError(f"expected a finite (h, w) map, got shape {cam.shape}")
    low, high = float(cam.min()), float(cam.max())
    scaled = (cam - low) / (high - low) if high > low else np.zeros_like(cam)
    heat = Image.fromarray(scaled.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BICUBIC
    )
    colours = _colour(np.clip(np.asarray(heat), 0.0, 1.0))
    base = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    blended = (1 - ALPHA) * base.astype(np.float64) + ALPHA * colours
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def overlay_base64(image: np.ndarray, cam: np.ndarray) -> str:
    return base64.b64encode(overlay_png(image, cam)).decode("ascii")
