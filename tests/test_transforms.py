"""Augmentation presets and the torch eval path.

.venv/bin/pytest tests/test_transforms.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cifarlab.constants import CIFAR_MEAN, CIFAR_STD
from cifarlab.errors import CifarlabError
from cifarlab.preprocess import normalize
from cifarlab.transforms import KerasAugment, get_preset, to_model_input


@pytest.fixture()
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)


def test_to_model_input_equals_numpy_normalize(images: np.ndarray) -> None:
    ours = to_model_input(torch.from_numpy(images)).numpy()
    assert ours.dtype == np.float32 and ours.shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(ours, normalize(images))


# The CIFAR-10 training-set channel statistics as published and used across the literature
# (0-1 scale, population std over all pixels), typed in independently of cifarlab.constants.
PUBLISHED_MEAN = (0.4914, 0.4822, 0.4465)
PUBLISHED_STD = (0.2470, 0.2435, 0.2616)


def test_normalize_maps_black_white_and_mean_grey_to_the_published_values() -> None:
    img = np.zeros((3, 1, 1, 3), dtype=np.uint8)
    img[1] = 255
    img[2] = (125, 123, 114)  # the published means in 0-255, rounded to integers
    out = normalize(img)
    assert out.shape == (3, 3, 1, 1) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    assert not np.shares_memory(out, img)
    for c in range(3):
        m, s = PUBLISHED_MEAN[c], PUBLISHED_STD[c]
        assert out[0, c, 0, 0] == pytest.approx(-m / s, abs=2e-3)  # black
        assert out[1, c, 0, 0] == pytest.approx((1 - m) / s, abs=2e-3)  # white
        assert abs(out[2, c, 0, 0]) < 0.02  # mean grey is about zero


def test_constants_are_the_published_cifar10_statistics() -> None:
    np.testing.assert_allclose(CIFAR_MEAN, PUBLISHED_MEAN, atol=1e-4)
    np.testing.assert_allclose(CIFAR_STD, PUBLISHED_STD, atol=1e-4)


def test_to_model_input_rejects_float_or_nchw() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(torch.zeros(2, 32, 32, 3))
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def _float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def test_zero_factors_are_the_identity(images: np.ndarray) -> None:
    aug = KerasAugment(flip=False, rotation=0, zoom=0, translate=0, contrast=0)
    x = _float(images)
    torch.testing.assert_close(aug(x), x, atol=1e-3, rtol=0)


def test_flip_mirrors_exactly_the_samples_drawn(images: np.ndarray) -> None:
    aug = KerasAugment(flip=True, rotation=0, zoom=0, translate=0, contrast=0)
    x = _float(images)
    params = aug.sample_params(8, torch.Generator().manual_seed(3))
    flipped = params[:, 0] < 0
    assert 0 < flipped.sum() < 8  # per-sample, not one decision for the batch
    out = aug.apply(x, params)
    torch.testing.assert_close(out[flipped], x[flipped].flip(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[~flipped], x[~flipped], atol=1e-3, rtol=0)


def test_translation_moves_content_by_the_keras_fraction(images: np.ndarray) -> None:
    aug = KerasAugment(flip=False, rotation=0, zoom=0, translate=0.1, contrast=0)
    x = _float(images[:1])
    params = torch.tensor([[1.0, 0.0, 1.0, 4 / 32, -2 / 32, 1.0]])  # right 4 px, up 2 px
    out = aug.apply(x, params)
    torch.testing.assert_close(out[..., :-2, 4:], x[..., 2:, :-4], atol=1e-3, rtol=0)


def test_keras_ranges_rotation_is_a_fraction_of_a_turn() -> None:
    aug = KerasAugment()
    p = aug.sample_params(20_000, torch.Generator().manual_seed(0))
    assert p[:, 1].abs().max() <= 0.1 * 2 * math.pi
    assert p[:, 1].abs().max() > 0.09 * 2 * math.pi  # +-36 degrees, not +-0.1 rad
    assert p[:, 2].min() >= 0.9 and p[:, 2].max() <= 1.1
    assert p[:, 3:5].abs().max() <= 0.1
    assert p[:, 5].min() >= 0.9 and p[:, 5].max() <= 1.1


def test_contrast_scales_around_the_per_channel_mean(images: np.ndarray) -> None:
    aug = KerasAugment(flip=False, rotation=0, zoom=0, translate=0, contrast=0.5)
    x = _float(images[:1]) * 0.5 + 64  # keep away from the clip at 0 and 255
    out = aug.apply(x, torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 1.5]]))
    mean = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(out, (x - mean) * 1.5 + mean, atol=1e-3, rtol=0)


def test_full_preset_is_seeded_in_range_and_changes_images(images: np.ndarray) -> None:
    aug = get_preset("keras_aug")
    assert aug is not None
    x = _float(images)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    assert (a - x).abs().mean() > 1.0


def test_unknown_preset_lists_known_ones() -> None:
    assert get_preset("none") is None
    with pytest.raises(CifarlabError, match="keras_aug"):
        get_preset("autoaugment")
