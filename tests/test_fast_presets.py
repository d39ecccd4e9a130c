"""Each fast preset's own recipe (optimiser, schedule, lookahead...) trains, deterministically.

.venv/bin/pytest -q tests/test_fast_presets.py

The nets are shrunk and the batches made small so a few steps take seconds; everything else
(optimiser and its settings, schedule, label smoothing, low-resolution phase) is the preset's.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab import fast
from cifarlab.checkpoint import load_model_from_run


def _shrunk(name: str, **kw: object) -> fast.FastConfig:
    preset = fast.PRESETS[name]
    small = dict(
        epochs=4.0,
        low_res_epochs=min(preset.low_res_epochs, 1),
        batch_size=32,
        widths=(8, 16, 16),
        whiten_samples=64,
        eval_batch_size=64,
        threads=1,
        precision="fp32",
        progress=False,
    )
    small.update(kw)
    return fast.get_preset(name, **small)


def _synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class decides the colour of a central square: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int64)
    images = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    colours = rng.integers(0, 256, (10, 3))
    images[:, 8:24, 8:24, :] = colours[labels][:, None, None, :].astype(np.uint8)
    return images, labels


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", sorted(fast.PRESETS))
def test_a_few_steps_of_each_preset_lower_the_loss(name: str, tmp_path: Path) -> None:
    images, labels = _synthetic(256)
    result = fast.train(_shrunk(name), (images, labels), (images[:64], labels[:64]), tmp_path)
    losses = _losses(tmp_path)
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 0.1, losses  # label smoothing 0.2 keeps it above ~0.6
    assert np.isfinite(result["test_accuracy"])


def test_muon_recipe_beats_chance_on_learnable_data(tmp_path: Path) -> None:
    images, labels = _synthetic(256)
    cfg = _shrunk("fast94", optimizer="muon", lookahead_every=0, head_unit_init=True)
    result = fast.train(cfg, (images, labels), (images[:64], labels[:64]), tmp_path)
    assert result["test_accuracy"] > 0.5  # chance is 0.1


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_fixed_seed_gives_the_same_weights_twice(optimizer: str, tmp_path: Path) -> None:
    images, labels = _synthetic(128)
    cfg = _shrunk("fast94", optimizer=optimizer, epochs=2.0, seed=3)
    for run in ("a", "b"):
        fast.train(cfg, (images, labels), None, tmp_path / run)
    ma, _ = load_model_from_run(tmp_path / "a")
    mb, _ = load_model_from_run(tmp_path / "b")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
