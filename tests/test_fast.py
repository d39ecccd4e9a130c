"""Fast-training path: presets, loader, whitening, a tiny end-to-end run and its run folder.

.venv/bin/pytest -q tests/test_fast.py
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab import fast
from cifarlab.checkpoint import load_model_from_run
from cifarlab.cli import build_parser
from cifarlab.cli.fast_cmds import PRESET_NAMES
from cifarlab.models import get_model
from cifarlab.models.fastnet import FastNet


def _tiny_cfg(**kw: object) -> fast.FastConfig:
    # fp32, narrow, small batches: seconds on any CPU.
    base = dict(
        epochs=3.0,
        low_res_epochs=1,
        low_res=24,
        batch_size=32,
        widths=(8, 16, 16),
        whiten_samples=64,
        eval_batch_size=64,
        threads=1,
        lr=2.0,
        precision="fp32",
        progress=False,
    )
    base.update(kw)
    return fast.get_preset("quick", **base)


def _synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class decides the mean colour of a square: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int64)
    images = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    colours = rng.integers(0, 256, (10, 3))
    images[:, 8:24, 8:24, :] = np.clip(colours[labels][:, None, None, :], 0, 255).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize("name", sorted(fast.PRESETS))
def test_presets_parse_and_build(name: str) -> None:
    cfg = fast.get_preset(name)
    assert cfg.name == name
    model = get_model("fastnet", **cfg.model_kwargs())
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    # The cheap early phase runs at low resolution through the same net.
    assert model(torch.randn(2, 3, cfg.low_res, cfg.low_res)).shape == (2, 10)
    args = build_parser().parse_args(["fast-train", "--preset", name, "--seed", "3"])
    assert args.preset == name and args.seed == 3


def test_cli_presets_match_library() -> None:
    assert set(PRESET_NAMES) == set(fast.PRESETS)


def test_unknown_preset_and_setting_are_clear_errors() -> None:
    with pytest.raises(fast.FastConfigError, match="fast94"):
        fast.get_preset("fast99")
    with pytest.raises(fast.FastConfigError, match="unknown fast-training settings"):
        fast.get_preset("quick", epocs=3)
    with pytest.raises(fast.FastConfigError, match="tta_level"):
        fast.get_preset("quick", tta_level=5)


def test_presets_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.PRESETS["fast94"].epochs = 1  # type: ignore[misc]


def test_loader_crops_flips_and_normalises_like_preprocess() -> None:
    images, labels = _synthetic(8)
    loader = fast.GpuStyleLoader(images, labels, 4, translate=0, seed=0)
    want = fast.to_input(images)
    flipped: list[dict[int, bool]] = []  # per epoch: image index -> served mirrored
    for epoch in (1, 2, 3):
        seen: dict[int, bool] = {}
        for x, y in loader.epoch(epoch):
            assert x.shape == (4, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
            for xi, yi in zip(x, y, strict=True):
                # With no translate every crop is the image itself or its mirror.
                match = [
                    i
                    for i in range(8)
                    if labels[i] == yi and torch.allclose(xi, want[i], atol=1e-5)
                ]
                mirror = [
                    i
                    for i in range(8)
                    if labels[i] == yi and torch.allclose(xi, want[i].flip(2), atol=1e-5)
                ]
                # Random images are never their own mirror, so each crop names one image.
                assert len(match) + len(mirror) == 1
                i = (match or mirror)[0]
                assert i not in seen
                seen[i] = bool(mirror)
        assert sorted(seen) == list(range(8))
        flipped.append(seen)
    # Alternating flips, read off the pixels: every image changes orientation each epoch.
    assert all(flipped[1][i] != flipped[0][i] for i in range(8))
    assert flipped[2] == flipped[0]
    assert 0 < sum(flipped[0].values()) < 8


def test_low_res_crops_have_the_requested_size() -> None:
    images, labels = _synthetic(8)
    loader = fast.GpuStyleLoader(images, labels, 8, 2, seed=0, low_res=24, low_res_epochs=1)
    x, _ = next(iter(loader.epoch(1)))
    assert x.shape == (8, 3, 24, 24)
    x, _ = next(iter(loader.epoch(2)))
    assert x.shape == (8, 3, 32, 32)
    assert torch.isfinite(x).all()


def test_whitening_decorrelates_patches() -> None:
    images, _ = _synthetic(64)
    x = fast.to_input(images, channels_last=False)
    model = get_model("fastnet", widths=(8, 8, 8))
    assert isinstance(model, FastNet)
    model.init_whitening(x)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, model.whiten.weight[:12])  # (N, 12, 31, 31)
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = torch.cov(flat)
    # Near-identity covariance on the data it was fitted to (eps keeps it slightly below 1).
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=0.05)
    assert (torch.diagonal(cov) > 0.5).all()
    assert not model.whiten.weight.requires_grad


def test_lr_schedule_warms_up_then_decays() -> None:
    s = fast.lr_schedule(100, start=0.2, peak=0.25, end=0.1)
    assert s[0] == pytest.approx(0.2) and s.max() == pytest.approx(1.0)
    assert int(np.argmax(s)) == 25 and s[-1] == pytest.approx(0.1)


@pytest.mark.real_data
def test_fast_trainer_learns_real_cifar10(cifar_source: Path, tmp_path: Path) -> None:
    # A few epochs on 2,500 real training images must lift accuracy on 1,000 held-out real
    # test images well above chance (10%): a trainer that does not learn fails here.
    from cifarlab import data

    data.prepare(cifar_source, tmp_path, progress=False)
    train_x, train_y = data.load_split("train", tmp_path)
    test_x, test_y = data.load_split("test", tmp_path)
    lr = fast.get_preset("quick").lr  # the preset's own learning rate, not the tiny tests' 2.0
    cfg = _tiny_cfg(epochs=8.0, widths=(16, 32, 32), batch_size=64, whiten_samples=512, lr=lr)
    result = fast.train(cfg, (train_x[:2500], train_y[:2500]), (test_x[:1000], test_y[:1000]))
    assert result["train_images"] == 8 * (2500 // 64) * 64
    assert result["test_accuracy"] > 0.40, result["test_accuracy"]  # measured about 0.5


def test_training_loss_falls_per_epoch(tmp_path: Path) -> None:
    images, labels = _synthetic(256)
    fast.train(_tiny_cfg(epochs=4.0), (images, labels), None, run_dir=tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in rows]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_fixed_seed_gives_identical_results(tmp_path: Path) -> None:
    images, labels = _synthetic(128)
    cfg = _tiny_cfg(epochs=2.0, seed=5)
    a = fast.train(cfg, (images, labels), (images[:32], labels[:32]), tmp_path / "a")
    b = fast.train(cfg, (images, labels), (images[:32], labels[:32]), tmp_path / "b")
    assert a["test_accuracy"] == b["test_accuracy"]
    ma, _ = load_model_from_run(tmp_path / "a")
    mb, _ = load_model_from_run(tmp_path / "b")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    rows = []
    for run in ("a", "b"):
        with open(tmp_path / run / "metrics.csv") as f:
            rows.append([{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)])
    assert rows[0] == rows[1]


def test_run_folder_reloads_and_matches_reported_accuracy(tmp_path: Path) -> None:
    images, labels = _synthetic(128)
    test = (images[:48], labels[:48])
    cfg = _tiny_cfg(epochs=2.0, tta_level=0, seed=1)
    result = fast.train(cfg, (images, labels), test, run_dir=tmp_path)
    for name in ("config.json", "env.json", "metrics.csv", "result.json"):
        assert (tmp_path / name).is_file(), name
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds"
    model, meta = load_model_from_run(tmp_path, "best")
    assert meta["model"] == "fastnet" and meta["config"]["seed"] == 1
    assert meta["metrics"]["test_acc"] == result["test_accuracy"]
    with torch.inference_mode():
        logits = model(fast.to_input(test[0], channels_last=False))
    assert fast.accuracy(logits, test[1]) == pytest.approx(result["test_accuracy"])
    assert json.loads((tmp_path / "result.json").read_text())["seed"] == 1


def _served_source(x: torch.Tensor, clean: torch.Tensor, copies: torch.Tensor) -> str:
    """'clean' or 'jpeg': which stored version (or its mirror) one served crop is."""
    for name, bank in (("clean", clean), ("jpeg", copies)):
        for ref in bank:
            if torch.allclose(x, ref, atol=1e-5) or torch.allclose(x, ref.flip(2), atol=1e-5):
                return name
    raise AssertionError("served crop matches no stored image")


@pytest.mark.parametrize(("fraction", "expect"), [(0.0, {"clean"}), (1.0, {"jpeg"})])
def test_loader_serves_jpeg_copies_by_fraction(fraction: float, expect: set[str]) -> None:
    from cifarlab.jpeg import random_copies

    images, labels = _synthetic(8)
    copies = random_copies(images, 2, (20, 40), seed=0)
    assert not np.array_equal(copies[0], images)  # re-encoding changed the pixels
    loader = fast.GpuStyleLoader(images, labels, 4, 0, seed=0, jpeg_copies=copies)
    clean = fast.to_input(images)
    jpeg = fast.to_input(copies.reshape(-1, 32, 32, 3))
    sources = set()
    for x, _ in loader.epoch(1, 32, jpeg_fraction=fraction):
        sources |= {_served_source(xi, clean, jpeg) for xi in x}
    assert sources == expect


def test_loader_mixes_clean_and_jpeg_at_half() -> None:
    from cifarlab.jpeg import random_copies

    images, labels = _synthetic(64)
    copies = random_copies(images, 1, (20, 20), seed=0)
    loader = fast.GpuStyleLoader(images, labels, 64, 0, seed=0, jpeg_copies=copies)
    clean, jpeg = fast.to_input(images), fast.to_input(copies[0])
    ((x, _),) = list(loader.epoch(1, 32, jpeg_fraction=0.5))
    n_jpeg = sum(_served_source(xi, clean, jpeg) == "jpeg" for xi in x)
    assert 16 <= n_jpeg <= 48  # Binomial(64, 0.5): outside this range has p < 1e-4


def test_holdout_fits_a_temperature_and_trains_on_the_rest(tmp_path: Path) -> None:
    images, labels = _synthetic(320)
    cfg = _tiny_cfg(epochs=2.0, holdout=0.25, jpeg_copies=1, jpeg_clean_epochs=1)
    result = fast.train(cfg, (images, labels), (images[:64], labels[:64]), tmp_path)
    assert result["holdout_images"] == 80
    temps = result["temperature"]
    assert set(temps) == {"none", "flip"} and all(t > 0 for t in temps.values())
    _, meta = load_model_from_run(tmp_path)
    assert meta["metrics"]["temperature"] == temps
    assert "test_ece_flip_after_temperature" in result["test_ece"]
    # 240 images train; batches of 32 drop the ragged end: 7 steps of 32 per epoch.
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 2
    assert result["train_images"] == 2 * 7 * 32


def test_jpeg_and_holdout_settings_are_validated() -> None:
    with pytest.raises(fast.FastConfigError, match="jpeg_quality"):
        fast.get_preset("quick", jpeg_quality=(50, 99))
    with pytest.raises(fast.FastConfigError, match="holdout"):
        fast.get_preset("quick", holdout=0.7)
    args = build_parser().parse_args(
        ["fast-train", "--jpeg-copies", "4", "--jpeg-quality", "30", "90", "--holdout", "0.05"]
    )
    assert args.jpeg_copies == 4 and args.jpeg_quality == [30, 90] and args.holdout == 0.05
