"""The orthogonalised-update optimiser used by the fast recipe.

.venv/bin/pytest -q tests/test_muon.py
"""

from __future__ import annotations

import pytest
import torch

from cifarlab.muon import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(16, 144), (144, 16), (64, 576)])
def test_orthogonalize_flattens_the_singular_values(shape: tuple[int, int]) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 100  # one dominant direction, as a momentum buffer often has
    s_before = torch.linalg.svdvals(g)
    s_after = torch.linalg.svdvals(orthogonalize(g, steps=5).float())
    assert s_before.max() / s_before.min() > 20
    # The quintic iteration lands every singular value near 1 (not exactly: it trades
    # precision for speed), whatever the spread before.
    assert s_after.min() > 0.5 and s_after.max() < 1.5
    assert orthogonalize(g).shape == g.shape


def test_orthogonalize_rejects_non_matrices() -> None:
    with pytest.raises(ValueError, match="2-D"):
        orthogonalize(torch.randn(2, 3, 4))


def test_orthogonal_group_keeps_the_filter_norm_fixed() -> None:
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3) * 5)
    opt = Muon([w], lr=0.1, momentum=0.6)
    for _ in range(3):
        w.grad = torch.randn_like(w)
        before = w.detach().clone()
        opt.step()
        assert not torch.equal(before, w)
    # Rescaled to sqrt(out_channels) before each step; a step of lr moves it only a little.
    assert w.norm().item() == pytest.approx(8**0.5, rel=0.15)


def test_plain_groups_step_like_torch_nesterov_sgd() -> None:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(10))
    b = torch.nn.Parameter(a.detach().clone())
    ours = Muon([{"params": [a], "orthogonal": False}], lr=0.05, momentum=0.85, weight_decay=0.1)
    ref = torch.optim.SGD([b], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.1)
    for _ in range(4):
        g = torch.randn(10)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="momentum"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.1, momentum=1.5)
