"""MobileNetV2 transfer learning on CIFAR-10: an ImageNet backbone with a small new head.

    cifarlab transfer --weights ../shared/weights/mobilenet_v2-b0353104.pth

Two registered variants share one module:

- `mobilenet_v2_transfer`: backbone frozen (weights and BatchNorm statistics), only the head
  trains. Because the backbone never changes, `cifarlab.transfer` computes its pooled features
  once and trains the head on that cache.
- `mobilenet_v2_finetune`: the same network with the backbone trainable (BatchNorm still in
  eval mode, so its ImageNet statistics survive small CPU batches); it starts from a converged
  transfer run.

Both keep the project's input contract: CIFAR-normalised `(B, 3, 32, 32)` in, logits
`(B, 10)` out. Inside `forward` the input is converted to ImageNet normalisation and resized to
`input_size` x `input_size` (default 96, the seed study's; bilinear upsampling, so antialiasing
would change nothing and stays off), which keeps export and serving identical for every model.

ImageNet weights come through torchvision's weights API metadata
(`MobileNet_V2_Weights.IMAGENET1K_V1`: its file name) and are looked up, in order, in
`weights=PATH`, `$CIFARLAB_MOBILENET_WEIGHTS`, then torch hub's checkpoint cache
(`$TORCH_HOME/hub/checkpoints/`). Nothing is downloaded implicitly; the sha256 is checked and
the file is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torch.nn import functional as F

from cifarlab.constants import CIFAR_MEAN, CIFAR_STD, NUM_CLASSES
from cifarlab.errors import CifarlabError
from cifarlab.io import sha256_file
from cifarlab.models.registry import register_model

log = logging.getLogger(__name__)

# sha256 of torchvision's IMAGENET1K_V1 file; its name carries the first 8 hex digits.
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_ENV = "CIFARLAB_MOBILENET_WEIGHTS"
INPUT_SIZE = 96  # pixels: the study's resize; 3x3 final feature map
FEATURE_DIM = 1280  # channels of MobileNetV2's last 1x1 conv
# torchvision's ImageNet normalisation for these weights (transforms() of IMAGENET1K_V1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(CifarlabError):
    """The ImageNet weights file is missing, corrupt or not the expected one."""


def weights_filename() -> str:
    """File name torchvision uses for IMAGENET1K_V1 (read from its weights API, not hard-coded)."""
    from torchvision.models import MobileNet_V2_Weights

    return Path(urlparse(MobileNet_V2_Weights.IMAGENET1K_V1.url).path).name


def hub_weights_path() -> Path:
    """Where torchvision itself would cache the file: `$TORCH_HOME/hub/checkpoints/<name>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_filename()


def find_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """Locate the weights file: explicit path, then the env variable, then the hub cache."""
    hub = hub_weights_path()
    if path is not None:
        candidate, origin = Path(path), "--weights"
    elif os.environ.get(WEIGHTS_ENV):
        candidate, origin = Path(os.environ[WEIGHTS_ENV]), f"${WEIGHTS_ENV}"
    else:
        candidate, origin = hub, "the torch hub cache"
    if candidate.is_file():
        return candidate
    raise WeightsError(
        f"MobileNetV2 ImageNet weights not found at {candidate} (from {origin}). "
        f"Fix: pass `--weights PATH/TO/{weights_filename()}`, or copy the file into the hub "
        f'cache with `mkdir -p "{hub.parent}" && cp PATH/TO/{weights_filename()} "{hub}"`, '
        'or, with internet access, download it once with `python -c "import torchvision; '
        "torchvision.models.mobilenet_v2(weights='IMAGENET1K_V1')\"`."
    )


def load_imagenet_state_dict(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Checked, pickle-free load of torchvision's ImageNet MobileNetV2 state dict."""
    file = find_weights(path)
    digest = sha256_file(file)
    if digest != WEIGHTS_SHA256:
        raise WeightsError(
            f"{file} has sha256 {digest}, expected {WEIGHTS_SHA256} "
            f"(torchvision's {weights_filename()}). The file is corrupt or a different model; "
            "replace it with the original download."
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise WeightsError(f"{file} does not hold a state dict; replace it with the original.")
    return state


class MobileNetV2Transfer(nn.Module):
    """MobileNetV2 features + GAP -> Dropout(0.5) -> Linear(1280,128) -> ReLU -> Dropout(0.3)
    -> Linear(128,10), on CIFAR-normalised 32x32 input."""

    in_scale: torch.Tensor
    in_shift: torch.Tensor

    def __init__(
        self,
        pretrained: bool = True,
        weights: str | os.PathLike[str] | None = None,
        freeze_backbone: bool = True,
        num_classes: int = NUM_CLASSES,
        trainable_from: int = 0,
        input_size: int = INPUT_SIZE,
    ) -> None:
        super().__init__()
        if not 32 <= input_size <= 512:
            raise ValueError(f"input_size must be 32..512 pixels, got {input_size}")
        self.input_size = input_size  # the backbone sees input_size x input_size images
        from torchvision.models import mobilenet_v2

        self.features = mobilenet_v2(weights=None).features
        if pretrained:
            state = load_imagenet_state_dict(weights)
            backbone = {
                k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")
            }
            self.features.load_state_dict(backbone)
        self.head = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(FEATURE_DIM, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )
        # CIFAR-normalised x -> ImageNet-normalised: x * scale + shift, per channel.
        # Non-persistent: constants of the contract, not learned state.
        c_mean, c_std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
        i_mean, i_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("in_scale", (c_std / i_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "in_shift", ((c_mean - i_mean) / i_std).view(1, 3, 1, 1), persistent=False
        )
        self.backbone_frozen = False
        if freeze_backbone:
            self.freeze_backbone()
        elif trainable_from > 0:
            self.freeze_backbone()
            self.unfreeze_backbone(trainable_from)

    def freeze_backbone(self) -> None:
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.backbone_frozen = True
        self.features.eval()

    def unfreeze_backbone(self, start: int = 0) -> None:
        """Make backbone blocks `features[start:]` trainable (all by default); BatchNorm
        statistics stay frozen (see `train`). Earlier blocks then need no backward pass."""
        if not 0 <= start < len(self.features):
            raise ValueError(f"start must be in [0, {len(self.features) - 1}], got {start}")
        for block in list(self.features)[start:]:
            for p in block.parameters():
                p.requires_grad_(True)
        self.backbone_frozen = False

    def train(self, mode: bool = True) -> MobileNetV2Transfer:
        super().train(mode)
        # BatchNorm keeps its ImageNet statistics in both variants: frozen features must not
        # drift, and fine-tuning batches on 2 CPU cores are too small to re-estimate them well.
        for m in self.features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        if self.backbone_frozen:
            self.features.eval()
        return self

    def to_backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.in_scale + self.in_shift  # (B, 3, 32, 32), ImageNet-normalised
        return F.interpolate(
            x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=False
        )  # (B, 3, S, S), S = input_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.to_backbone_input(x))  # (B, 1280, S/32, S/32)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 1280)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)  # (B, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


@register_model
def mobilenet_v2_transfer(
    pretrained: bool = True, weights: str | None = None, **kwargs: Any
) -> MobileNetV2Transfer:
    """Frozen ImageNet backbone, trainable head: 2,389,130 params, 165,258 trainable."""
    return MobileNetV2Transfer(
        pretrained=pretrained, weights=weights, freeze_backbone=True, **kwargs
    )


@register_model
def mobilenet_v2_finetune(
    pretrained: bool = True, weights: str | None = None, trainable_from: int = 0, **kwargs: Any
) -> MobileNetV2Transfer:
    """Same network with the backbone trainable from block `trainable_from` on (0: all of it;
    BatchNorm statistics stay frozen)."""
    return MobileNetV2Transfer(
        pretrained=pretrained,
        weights=weights,
        freeze_backbone=False,
        trainable_from=trainable_from,
        **kwargs,
    )
