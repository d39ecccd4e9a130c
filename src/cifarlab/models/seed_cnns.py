"""The two CNNs of the original study, rebuilt layer for layer from the Keras models.

    cifarlab train --model baseline_cnn --epochs 20
    python -c "from cifarlab.models import get_model; print(get_model('augmented_cnn'))"

Keras `Conv2D(..., padding="same")` is a 3x3 convolution with padding 1, so the two max-pools
take 32x32 to 8x8 and the classifier sees 8*8*64 = 4096 features. The models take the
normalised `(B, 3, 32, 32)` input of `cifarlab.preprocess` and return logits (Keras' softmax
lives in the loss here).
"""

from __future__ import annotations

import torch
from torch import nn

from cifarlab.constants import NUM_CLASSES
from cifarlab.models.registry import register_model


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    # Bias is redundant in front of BatchNorm (its shift absorbs it).
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class SeedCNN(nn.Module):
    """Conv(32)-Conv(32)-Pool-Drop-Conv(64)-Conv(64)-Pool-Drop-Dense(512)-Drop-Dense(10).

    timm-style pieces (`forward_features`, `forward_head`) so features can be reused.
    """

    def __init__(
        self,
        batch_norm: bool = False,
        drop_conv: float = 0.25,
        drop_fc: float = 0.5,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(3, 32, batch_norm),
            *_conv_block(32, 32, batch_norm),
            nn.MaxPool2d(2),  # (B, 32, 16, 16)
            nn.Dropout(drop_conv),
            *_conv_block(32, 64, batch_norm),
            *_conv_block(64, 64, batch_norm),
            nn.MaxPool2d(2),  # (B, 64, 8, 8)
            nn.Dropout(drop_conv),
        )
        hidden: list[nn.Module] = [nn.Flatten(), nn.Linear(64 * 8 * 8, 512, bias=not batch_norm)]
        if batch_norm:
            hidden.append(nn.BatchNorm1d(512))
        hidden += [nn.ReLU(inplace=True), nn.Dropout(drop_fc)]
        self.pre_logits = nn.Sequential(*hidden)  # (B, 512)
        self.classifier = nn.Linear(512, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pre_logits(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def baseline_cnn(drop_conv: float = 0.25, drop_fc: float = 0.5) -> SeedCNN:
    """The study's baseline: 2,168,362 trainable parameters (all trainable).

    Dropout rates are arguments only so tests can switch dropout off (distributed
    equivalence needs a deterministic forward); the study uses the defaults.
    """
    return SeedCNN(batch_norm=False, drop_conv=drop_conv, drop_fc=drop_fc)


@register_model
def augmented_cnn(drop_conv: float = 0.25, drop_fc: float = 0.5) -> SeedCNN:
    """The baseline with BatchNorm after every conv and the 512-unit dense layer.

    2,169,066 trainable parameters (convs and the dense layer lose their bias to BatchNorm's
    shift), plus 1,408 BatchNorm running statistics; trained with the `keras_aug` preset of
    `cifarlab.transforms`.
    """
    return SeedCNN(batch_norm=True, drop_conv=drop_conv, drop_fc=drop_fc)
