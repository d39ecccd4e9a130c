"""Every registered model: forward and backward on a CIFAR-shaped batch.

.venv/bin/pytest tests/test_models.py
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cifarlab.errors import CifarlabError
from cifarlab.models import get_model, list_models, seed_cnns


def _kwargs(name: str) -> dict[str, Any]:
    # Transfer models would otherwise need the ImageNet weights file; random init suffices
    # to check shapes and gradient flow.
    return {"pretrained": False} if name.startswith("mobilenet") else {}


@pytest.mark.parametrize("name", list_models())
def test_model_forward_backward_on_cifar_batch(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, **_kwargs(name))
    model.train()
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, f"{name} has no trainable parameters"
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"trainable parameters got no gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", list_models())
def test_model_eval_mode_is_deterministic(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, **_kwargs(name)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("builder", "trainable"),
    [(seed_cnns.baseline_cnn, 2_168_362), (seed_cnns.augmented_cnn, 2_169_066)],
)
def test_seed_cnn_parameter_counts_match_docstrings(builder: Any, trainable: int) -> None:
    model = builder()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert f"{trainable:,}" in builder.__doc__


def test_augmented_cnn_has_batchnorm_and_baseline_has_none() -> None:
    def has_bn(m: torch.nn.Module) -> bool:
        return any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())

    assert has_bn(get_model("augmented_cnn"))
    assert not has_bn(get_model("baseline_cnn"))


def test_unknown_model_error_lists_known_models() -> None:
    with pytest.raises(CifarlabError) as err:
        get_model("resnet9000")
    assert "resnet9000" in str(err.value)
    assert "baseline_cnn" in str(err.value) and "augmented_cnn" in str(err.value)
