"""MobileNetV2 transfer: weights lookup and checks, feature cache, head training, fine-tuning."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.checkpoint import load_model_from_run
from cifarlab.models import get_model
from cifarlab.models.mobilenet import (
    WEIGHTS_SHA256,
    WeightsError,
    count_params,
    find_weights,
    load_imagenet_state_dict,
    weights_filename,
)
from cifarlab.recipes import RecipeError
from cifarlab.runs import train_seconds
from cifarlab.transfer import (
    FinetuneConfig,
    TransferConfig,
    TransferError,
    feature_dir,
    finetune,
    train_transfer,
)


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.fixture
def tiny_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": _split(48, 0), "val": _split(16, 1)}


def test_transfer_model_counts_and_freezing() -> None:
    model = get_model("mobilenet_v2_transfer", pretrained=False)
    assert count_params(model) == (2_389_130, 165_258)
    model.train()
    assert not model.features.training  # frozen backbone: BatchNorm stays in eval mode
    assert model.head.training
    assert count_params(get_model("mobilenet_v2_finetune", pretrained=False)) == (
        2_389_130,
        2_389_130,
    )


def test_finetune_variant_keeps_batchnorm_statistics_frozen() -> None:
    model = get_model("mobilenet_v2_finetune", pretrained=False).train()
    bns = [m for m in model.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert torch.equal(bns[0].running_mean, before)
    assert model.features[0][0].weight.grad is not None  # backbone gets gradients


def test_transfer_head_trains_on_cached_features(
    tmp_path: Path, tiny_data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    cfg = TransferConfig(
        name="tiny",
        runs_dir=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache"),
        epochs=3,
        batch_size=16,
        extract_batch_size=32,
    )
    run = train_transfer(cfg, data=tiny_data, pretrained=False)
    folder = feature_dir(cfg.cache_dir, "random-seed0", "float32")
    for split in ("train", "val", "train_flip"):
        feats = np.load(folder / f"{split}.npy")
        assert feats.shape == (len(tiny_data[split.removesuffix("_flip")][0]), 1280)
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "seconds",
    ]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for name in ("config.json", "env.json", "timing.json", "best.json", "last.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"] == "mobilenet_v2_transfer"
    assert train_seconds(run) > 0

    # The checkpoint rebuilds the whole network, and its head reproduces the cached path.
    model, meta = load_model_from_run(run, "best")
    assert meta["model"] == "mobilenet_v2_transfer"
    x = torch.from_numpy(
        __import__("cifarlab.preprocess", fromlist=["normalize"]).normalize(tiny_data["val"][0])
    )
    with torch.inference_mode():
        direct = model(x)
        via_cache = model.forward_head(torch.from_numpy(np.load(folder / "val.npy")))
    torch.testing.assert_close(direct, via_cache, atol=1e-4, rtol=1e-4)
    val_acc = float(rows[int(meta["epoch"]) - 1]["val_acc"])
    assert val_acc == pytest.approx(float((direct.argmax(1).numpy() == tiny_data["val"][1]).mean()))


def test_onnxruntime_features_equal_torch_features() -> None:
    from cifarlab.transfer import extract_features

    torch.manual_seed(0)
    model = get_model("mobilenet_v2_transfer", pretrained=False)
    images, _ = _split(6, 3)
    ref = extract_features(model, images, batch_size=4, backend="torch")
    got = extract_features(model, images, batch_size=4, backend="onnxruntime")
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_second_run_reuses_the_feature_cache(
    tmp_path: Path,
    tiny_data: dict[str, tuple[np.ndarray, np.ndarray]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = TransferConfig(
        name="a",
        runs_dir=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache"),
        epochs=1,
        batch_size=16,
        flip=False,
    )
    train_transfer(cfg, data=tiny_data, pretrained=False)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("features were recomputed instead of read from the cache")

    monkeypatch.setattr("cifarlab.transfer.extract_features", boom)

    run = train_transfer(replace(cfg, name="b"), data=tiny_data, pretrained=False)
    assert (run / "best.safetensors").is_file()


def test_finetune_starts_from_the_head_run(
    tmp_path: Path, tiny_data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    from cifarlab.train import TrainData

    runs = tmp_path / "runs"
    head_run = train_transfer(
        TransferConfig(
            name="head",
            runs_dir=str(runs),
            cache_dir=str(tmp_path / "c"),
            epochs=1,
            batch_size=16,
            flip=False,
        ),
        data=tiny_data,
        pretrained=False,
    )
    head_model, _ = load_model_from_run(head_run)
    data = TrainData(*tiny_data["train"], *tiny_data["val"])
    run = finetune(
        FinetuneConfig(
            finetune_from=str(head_run),
            name="ft",
            runs_dir=str(runs),
            epochs=1,
            batch_size=16,
            progress=False,
        ),
        data=data,
    )
    model, meta = load_model_from_run(run, "last")
    assert meta["model"] == "mobilenet_v2_finetune"
    assert count_params(model)[1] == 2_389_130
    # The backbone moved away from the head run's (it was trained end to end).
    w0 = head_model.features[0][0].weight
    assert not torch.equal(model.features[0][0].weight, w0)
    timing = json.loads((run / "timing.json").read_text())
    assert timing["parent_seconds"] == pytest.approx(train_seconds(head_run))
    assert json.loads((run / "config.json").read_text())["finetune_from"] == str(head_run)


def test_finetune_rejects_a_non_transfer_run(
    tmp_path: Path, baseline_checkpoint_meta: dict[str, object]
) -> None:
    from cifarlab.checkpoint import save_checkpoint

    # A valid checkpoint of another registered model: it loads, so only the guard can object.
    run = tmp_path / "other"
    run.mkdir()
    save_checkpoint(run / "best", get_model("baseline_cnn"), baseline_checkpoint_meta)
    with pytest.raises(TransferError, match="holds a 'baseline_cnn' run; pass a mobilenet_v2"):
        finetune(FinetuneConfig(finetune_from=str(run), runs_dir=str(tmp_path)))


# ---------------------------------------------------------------- weights file


def test_missing_weights_error_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CIFARLAB_MOBILENET_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError) as err:
        find_weights()
    msg = str(err.value)
    assert weights_filename() == "mobilenet_v2-b0353104.pth"
    assert "--weights" in msg
    assert f"cp PATH/TO/{weights_filename()}" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg


def test_explicit_missing_weights_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"not found at .*nope\.pth"):
        get_model("mobilenet_v2_transfer", weights=str(tmp_path / "nope.pth"))


def test_wrong_weights_file_fails_the_sha_check(tmp_path: Path) -> None:
    bad = tmp_path / weights_filename()
    torch.save({"features.0.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="sha256"):
        load_imagenet_state_dict(bad)


def test_weights_found_in_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIFARLAB_MOBILENET_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / weights_filename()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert find_weights() == target


def test_real_weights_pass_the_sha_and_load(mobilenet_weights: Path) -> None:
    state = load_imagenet_state_dict(mobilenet_weights)
    assert "features.0.0.weight" in state
    model = get_model("mobilenet_v2_transfer", weights=str(mobilenet_weights))
    torch.testing.assert_close(model.features[0][0].weight, state["features.0.0.weight"])
    assert WEIGHTS_SHA256.startswith("b0353104")


def test_finetune_can_train_only_the_top_blocks() -> None:
    model = get_model("mobilenet_v2_finetune", pretrained=False, trainable_from=14)
    trainable = {
        n.split(".")[1]
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith("features.")
    }
    assert trainable == {"14", "15", "16", "17", "18"}
    assert all(p.requires_grad for p in model.head.parameters())
    with pytest.raises(ValueError, match="start must be"):
        model.unfreeze_backbone(19)


def test_image_size_keys_the_cache_and_rebuilds_from_the_checkpoint(
    tmp_path: Path, tiny_data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    cfg = TransferConfig(
        name="px64",
        runs_dir=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache"),
        epochs=1,
        batch_size=16,
        flip=False,
        image_size=64,
    )
    run = train_transfer(cfg, data=tiny_data, pretrained=False)
    folder = feature_dir(cfg.cache_dir, "random-seed0", "float32", 64)
    assert folder.name.endswith("-64px-float32")
    assert (folder / "val.npy").is_file()
    assert not feature_dir(cfg.cache_dir, "random-seed0", "float32").exists()  # 96 px untouched
    model, meta = load_model_from_run(run, "best")
    assert meta["model_kwargs"]["input_size"] == 64
    assert model.to_backbone_input(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 64, 64)
    x = torch.from_numpy(
        __import__("cifarlab.preprocess", fromlist=["normalize"]).normalize(tiny_data["val"][0])
    )
    with torch.inference_mode():  # the rebuilt model resizes to 64 px, as the cache did
        via_cache = model.forward_head(torch.from_numpy(np.load(folder / "val.npy")))
        torch.testing.assert_close(model(x), via_cache, atol=1e-4, rtol=1e-4)
    with pytest.raises(RecipeError, match="image-size"):
        train_transfer(replace(cfg, image_size=16), data=tiny_data, pretrained=False)
