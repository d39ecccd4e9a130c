"""The one evaluation preprocessing path, in numpy so that serving needs no torch.

    python -c "from cifarlab.preprocess import normalize; help(normalize)"

uint8 RGB images `(N, 32, 32, 3)` -> float32 `(N, 3, 32, 32)`, scaled to 0-1 and normalised
with the CIFAR-10 training mean/std. Training, evaluation, export checks, the CLI `predict` and
the API all go through this function (or, on torch tensors, `cifarlab.transforms`, which tests
check against it).
"""

from __future__ import annotations

import numpy as np

from cifarlab.constants import CIFAR_MEAN, CIFAR_STD

_MEAN = np.asarray(CIFAR_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
_STD = np.asarray(CIFAR_STD, dtype=np.float32).reshape(1, 3, 1, 1)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 `(N, H, W, 3)` -> normalised float32 `(N, 3, H, W)`."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    # One copy into a C-contiguous NCHW float32 array, then in-place arithmetic: the same
    # operations in the same order (so bit-identical results) as `(x / 255 - mean) / std`,
    # without four temporaries; about 6x faster on a batch of 32, which serving pays per batch.
    x = images.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    x /= 255.0
    x -= _MEAN
    x /= _STD
    return x
