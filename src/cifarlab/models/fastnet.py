"""Model family fastnet: a small VGG-like net for fast from-scratch CIFAR-10 training.

    python -c "from cifarlab.models import get_model; print(get_model('fastnet'))"

The shape follows the public speed-run literature (David Page's "How to train your ResNet",
Keller Jordan's airbench): a frozen 2x2 patch-whitening convolution, three conv groups
(conv -> maxpool -> BN -> GELU -> conv -> BN -> GELU), a global max-pool and a linear head
whose logits are scaled down. Our own code; `cifarlab.fast` trains it.

The net is fully convolutional with a global pool, so it also accepts crops smaller than
32x32: the fast recipe trains its early epochs at lower resolution to spend fewer FLOPs.
Input contract as every registered model: normalised `(B, 3, H, W)`, logits `(B, 10)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cifarlab.constants import NUM_CLASSES
from cifarlab.models.registry import register_model

WHITEN_KERNEL = 2  # patch size of the whitening layer
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2  # eigenvectors and their negatives (GELU follows)


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays at 1 and only the bias trains (fewer, better-behaved params).

    `momentum` is the fraction of the old running statistic kept (0.6 here), the convention of
    the speed-run papers; PyTorch's own `momentum` is the fraction replaced, hence `1 - m`.
    """

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12) -> None:
        super().__init__(num_features, eps=eps, momentum=1.0 - momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBatchNorm(c_out, bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = FrozenScaleBatchNorm(c_out, bn_momentum)
        self.act = nn.GELU()
        # Start each conv as (partly) the identity so the deep net trains like a shallow one
        # in its first steps; the remaining output channels keep the default random init.
        for conv in (self.conv1, self.conv2):
            w = conv.weight.data
            nn.init.dirac_(w[: min(w.size(0), w.size(1))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))  # (B, C, H/2, W/2)
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    def __init__(
        self,
        widths: Sequence[int] = (64, 256, 256),
        bn_momentum: float = 0.6,
        logit_scale: float = 1 / 9,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"fastnet needs three positive widths, got {widths!r}")
        self.widths = tuple(int(w) for w in widths)
        self.logit_scale = float(logit_scale)
        # Weights set from data by `init_whitening` and then frozen; only the bias trains.
        self.whiten = nn.Conv2d(3, WHITEN_WIDTH, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        w1, w2, w3 = self.widths
        self.layers = nn.Sequential(
            ConvGroup(WHITEN_WIDTH, w1, bn_momentum),
            ConvGroup(w1, w2, bn_momentum),
            ConvGroup(w2, w3, bn_momentum),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(w3, num_classes, bias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature grid, before global pooling (timm's convention)."""
        x = self.act(self.whiten(x))  # (B, 24, H-1, W-1)
        return self.layers(x)  # (B, w3, ~H/8, ~W/8)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(x), 1)  # (B, w3)
        # Small logits at init behave like a temperature; the speed-run recipes use 1/9.
        return self.head(x) * self.logit_scale

    def forward_cam(self, features: torch.Tensor) -> torch.Tensor:
        """Class activation maps: the linear head applied at every cell of the feature grid.

        `(B, w3, h, w)` -> `(B, classes, h, w)`, on the logits' scale. A logit is a weighted
        sum of each channel's maximum over the grid; the map is the same weighted sum taken
        at each cell, so it shows where the evidence for a class sits (and equals the logit at
        a cell that holds every channel's maximum).
        """
        weight = self.head.weight[:, :, None, None] * self.logit_scale  # (classes, w3, 1, 1)
        return torch.nn.functional.conv2d(features, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first layer to whiten 2x2 patches of `images` (normalised, (N, 3, H, W)).

        Filters are the covariance eigenvectors scaled by 1/sqrt(eigenvalue), plus their
        negatives so that the GELU after them keeps both signs of each component.
        """
        k = WHITEN_KERNEL
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # (N, 3, H-1, W-1, k, k)
        patches = patches.transpose(1, 3).reshape(-1, 3 * k * k)  # (N*(H-1)*(W-1), 12)
        patches = patches - patches.mean(0, keepdim=True)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = eigenvectors.T.reshape(-1, 3, k, k) / torch.sqrt(eigenvalues + eps).view(
            -1, 1, 1, 1
        )
        self.whiten.weight.copy_(torch.cat([filters, -filters]))


@register_model
def fastnet(
    widths: Sequence[int] = (64, 256, 256),
    bn_momentum: float = 0.6,
    logit_scale: float = 1 / 9,
    num_classes: int = NUM_CLASSES,
) -> FastNet:
    """The fast-training net (about 2M parameters at the default widths)."""
    return FastNet(widths, bn_momentum, logit_scale, num_classes)
