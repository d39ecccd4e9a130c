"""Named training presets and the torch twin of the one eval preprocessing path.

    python -c "from cifarlab.transforms import PRESETS; print(sorted(PRESETS))"
    cifarlab train --model augmented_cnn --augment keras_aug

Training batches stay uint8 NHWC tensors in memory until the step that uses them:
`augment(batch)` works on float 0-255 NCHW, then `to_model_input` scales and normalises exactly
like `cifarlab.preprocess.normalize` (tests check the two agree), so train, eval, export and
serving share one preprocessing.

Presets (`get_preset(name)`):

- `none`: no augmentation.
- `keras_aug`: the study's Keras pipeline, with Keras' meaning of each factor:
  RandomFlip("horizontal"), RandomRotation(0.1) = +-0.1 of a full turn (+-36 degrees),
  RandomZoom(0.1) = scale in [0.9, 1.1] (same factor for height and width, as Keras does when
  `width_factor` is unset), RandomTranslation(0.1, 0.1) = shift up to 10% of height/width,
  RandomContrast(0.1) = per-image, per-channel `(x - mean) * c + mean` with c in [0.9, 1.1],
  clipped to 0-255. Keras fills with `reflect` and samples bilinearly; so do we.

Why not `torchvision.transforms.v2.RandomAffine` on the batch: v2 draws one set of random
parameters per call, so a batched call would rotate/zoom/shift the whole batch identically,
which weakens augmentation badly, and a per-sample loop costs ~100x more Python overhead on
2 CPU cores. Flip, rotation, zoom and translation compose into one 2x3 affine matrix per
sample, so a single `affine_grid` + `grid_sample` applies all four with per-sample parameters.
Parameters are drawn from an explicit `torch.Generator` for the whole global batch, so a
distributed rank that augments its slice gets exactly what one process would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cifarlab.constants import CIFAR_MEAN, CIFAR_STD

_MEAN = torch.tensor(CIFAR_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
_STD = torch.tensor(CIFAR_STD, dtype=torch.float32).view(1, 3, 1, 1)


def to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 `(N, H, W, 3)` -> float32 `(N, 3, H, W)` still on the 0-255 scale."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {tuple(images.shape)}"
        )
    return images.permute(0, 3, 1, 2).float()


def normalize_float(x: torch.Tensor) -> torch.Tensor:
    """float 0-255 `(N, 3, H, W)` -> normalised, with the same float32 ops as numpy's path."""
    x = x / 255.0
    return (x - _MEAN.to(x.device)) / _STD.to(x.device)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """The eval path: uint8 NHWC -> normalised float32 NCHW (= `preprocess.normalize`)."""
    return normalize_float(to_float_nchw(images)).contiguous()


@dataclass(frozen=True)
class KerasAugment:
    """Per-sample flip/rotate/zoom/translate/contrast, vectorised over the batch.

    Factors follow Keras: `rotation` is a fraction of a full turn, `zoom`, `translate` and
    `contrast` are +- fractions.
    """

    flip: bool = True
    rotation: float = 0.1  # fraction of 2*pi (Keras RandomRotation factor)
    zoom: float = 0.1  # scale in [1 - zoom, 1 + zoom]
    translate: float = 0.1  # fraction of width/height, both axes
    contrast: float = 0.1  # contrast factor in [1 - contrast, 1 + contrast]

    def sample_params(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random parameters `(n, 6)`: flip sign, angle, zoom, shift x, shift y, contrast."""
        u = torch.rand(n, 6, generator=generator)
        flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0) if self.flip else torch.ones(n)
        angle = (2 * u[:, 1] - 1) * self.rotation * 2 * math.pi
        zoom = 1 + (2 * u[:, 2] - 1) * self.zoom
        shift_x = (2 * u[:, 3] - 1) * self.translate
        shift_y = (2 * u[:, 4] - 1) * self.translate
        contrast = 1 + (2 * u[:, 5] - 1) * self.contrast
        return torch.stack([flip, angle, zoom, shift_x, shift_y, contrast], dim=1)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Augment float 0-255 `(N, 3, H, W)` with `params` from `sample_params`."""
        params = params.to(x.device, torch.float32)
        flip, angle, zoom, sx, sy, contrast = params.unbind(1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # affine_grid maps output coords to input coords in [-1, 1] units: zooming out
        # (zoom > 1) samples a larger input area; a shift of +t moves content by +t of the
        # side, i.e. samples the input at (p - 2t) in normalised units.
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
        theta[:, 0, 0] = zoom * cos * flip
        theta[:, 0, 1] = -zoom * sin
        theta[:, 1, 0] = zoom * sin * flip
        theta[:, 1, 1] = zoom * cos
        theta[:, 0, 2] = -2 * sx
        theta[:, 1, 2] = -2 * sy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # "reflection" with align_corners=False repeats the edge pixel, like Keras "reflect".
        out = F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        mean = out.mean(dim=(2, 3), keepdim=True)
        out = (out - mean) * contrast.view(-1, 1, 1, 1) + mean
        return out.clamp_(0.0, 255.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample_params(x.shape[0], generator))


PRESETS: dict[str, Callable[[], KerasAugment | None]] = {
    "none": lambda: None,
    "keras_aug": KerasAugment,
}


def get_preset(name: str) -> KerasAugment | None:
    """The named train-time augmentation (`None` for `none`); unknown names list the known."""
    try:
        return PRESETS[name]()
    except KeyError:
        from cifarlab.errors import CifarlabError

        raise CifarlabError(
            f"unknown augmentation preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None
