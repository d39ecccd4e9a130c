"""The standard recipe through the engine on tiny synthetic data: run folder, resume, bad input.

.venv/bin/pytest tests/test_train.py
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_from_run,
    save_checkpoint,
)
from cifarlab.cli import main
from cifarlab.engine import EvalResult, FitResult, evaluate
from cifarlab.errors import CifarlabError
from cifarlab.models import get_model
from cifarlab.recipes import StandardRecipe, load_recipe
from cifarlab.runs import METRICS_HEADER, RunError, write_metrics_csv
from cifarlab.train import TrainData, train


@pytest.fixture(scope="module")
def tiny() -> TrainData:
    # Learnable on purpose: class k images are brighter in channel k % 3, so loss must fall.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 160).astype(np.int64)
    x = rng.integers(0, 120, (160, 32, 32, 3)).astype(np.uint8)
    x[np.arange(160), :, :, y % 3] += (y * 12).astype(np.uint8)[:, None, None]
    return TrainData(x[:128], y[:128], x[128:], y[128:])


def _cfg(run_dir: Path, **kw: object) -> tuple[StandardRecipe, Path]:
    base = {
        "model": "augmented_cnn",
        "augment": "keras_aug",
        "epochs": 2,
        "batch_size": 32,
        "lr": 3e-3,
        "progress": False,
        "threads": 1,
        "precision": "fp32",
    }
    return StandardRecipe(**{**base, **kw}), run_dir  # type: ignore[arg-type]


def fit(cfg: tuple[StandardRecipe, Path], **kw: object) -> FitResult:
    return train(cfg[0], cfg[1], **kw)  # type: ignore[arg-type]


def load_config(run: Path) -> tuple[StandardRecipe, Path]:
    recipe = load_recipe(run)
    assert isinstance(recipe, StandardRecipe)
    return recipe, run


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_fit_writes_complete_run_folder(tmp_path: Path, tiny: TrainData) -> None:
    cfg = _cfg(tmp_path / "run")
    result = fit(cfg, data=tiny)
    run = tmp_path / "run"
    for name in ("config.json", "env.json", "metrics.csv", "best.json", "best.safetensors"):
        assert (run / name).is_file(), name
    assert load_config(run) == cfg
    assert json.loads((run / "config.json").read_text())["recipe"] == "standard"
    env = json.loads((run / "env.json").read_text())
    assert {"torch", "cpu", "git_sha", "command", "start_time", "precision"} <= env.keys()
    assert env["precision"]["chosen"] == "fp32" and "requested" in env["precision"]["reason"]
    rows = _read_csv(run / "metrics.csv")
    assert tuple(rows[0].keys()) == METRICS_HEADER
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    _, meta = load_checkpoint(run / "best")
    assert meta["model"] == "augmented_cnn" and meta["classes"][0] == "airplane"
    assert meta["epoch"] == result.best_epoch
    assert {"format", "model_kwargs", "metrics", "config"} <= meta.keys()


def test_checkpoint_rebuilds_model_that_scores_like_training(
    tmp_path: Path, tiny: TrainData
) -> None:
    result = fit(_cfg(tmp_path / "run"), data=tiny)
    model, meta = load_model_from_run(tmp_path / "run", which="last")
    assert not model.training
    scored = evaluate(model, tiny.x_val, tiny.y_val, return_logits=True)
    assert scored.logits is not None and scored.logits.shape == (32, 10)
    assert scored.acc == pytest.approx(meta["metrics"]["val_acc"])
    assert scored.loss == pytest.approx(meta["metrics"]["val_loss"], rel=1e-5)
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_resume_continues_exactly_like_an_uninterrupted_run(
    tmp_path: Path, tiny: TrainData
) -> None:
    # augmented_cnn + keras_aug exercises dropout, BatchNorm buffers, augmentation RNG,
    # Adam moments and the OneCycle schedule at once.
    straight = fit(_cfg(tmp_path / "straight"), data=tiny)
    fit(_cfg(tmp_path / "split"), data=tiny, stop_after_epoch=1)
    assert [r["epoch"] for r in _read_csv(tmp_path / "split" / "metrics.csv")] == ["1"]
    resumed = fit(load_config(tmp_path / "split"), data=tiny, resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for ra, rb in zip(straight.history, resumed.history, strict=True):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {
            k: v for k, v in rb.items() if k != "seconds"
        }


def test_cli_resume_of_a_finished_run_trains_nothing(tmp_path: Path, tiny: TrainData) -> None:
    fit(_cfg(tmp_path / "run", epochs=1, model="baseline_cnn", augment="none"), data=tiny)
    again = fit(load_config(tmp_path / "run"), data=tiny, resume=True)
    assert len(again.history) == 1


def test_early_stopping_stops_after_patience_and_stays_stopped(
    tmp_path: Path, tiny: TrainData, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frozen validation score never improves after epoch 1.
    monkeypatch.setattr(
        "cifarlab.engine.evaluate", lambda *a, **k: EvalResult(loss=1.0, acc=0.5, n=32)
    )
    cfg = _cfg(tmp_path / "run", epochs=5, patience=2, model="baseline_cnn", augment="none")
    result = fit(cfg, data=tiny)
    assert result.stopped_early
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.best_epoch == 1
    resumed = fit(load_config(tmp_path / "run"), data=tiny, resume=True)
    assert resumed.stopped_early and len(resumed.history) == 3


def test_fit_accepts_preloaded_features_and_a_prebuilt_model(tmp_path: Path) -> None:
    # The transfer head path: float features in, a plain module, no image preprocessing.
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 96)
    feats = rng.normal(size=(96, 16)).astype(np.float32)
    feats[np.arange(96), y] += 3.0
    head = torch.nn.Linear(16, 10)
    data = TrainData(feats[:64], y[:64], feats[64:], y[64:])
    recipe, run = _cfg(tmp_path / "head", model="baseline_cnn", augment="none", epochs=8, lr=0.05)
    cfg = (replace(recipe, batch_size=16, schedule="constant"), run)
    result = fit(cfg, data=data, model=head)
    assert result.model is head
    assert result.history[-1]["val_acc"] > 0.5


def test_existing_run_folder_is_not_overwritten_by_accident(
    tmp_path: Path, tiny: TrainData
) -> None:
    cfg = _cfg(tmp_path / "run", epochs=1, model="baseline_cnn", augment="none")
    fit(cfg, data=tiny)
    with pytest.raises(RunError, match="--resume"):
        fit(cfg, data=tiny)
    (tmp_path / "run" / "eval.json").write_text("{}")  # an evaluation of the old weights
    fit(cfg, data=tiny, overwrite=True)
    assert not (tmp_path / "run" / "eval.json").exists()


def test_unknown_model_error_lists_known_models(tmp_path: Path, tiny: TrainData) -> None:
    with pytest.raises(CifarlabError, match="baseline_cnn"):
        fit(_cfg(tmp_path / "run", model="vgg99"), data=tiny)


def test_cli_unknown_model_exits_2_with_known_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "vgg99"]) == 2
    err = capsys.readouterr().err
    assert "vgg99" in err and "augmented_cnn" in err


def test_cli_resume_rejects_run_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path), "--epochs", "3"]) == 2
    assert "--epochs" in capsys.readouterr().err
    # Falsy values are options too: silently dropping them would train something else.
    argv = ["train", "--resume", str(tmp_path), "--seed", "0", "--no-bf16", "--model-kwarg", "a=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "--bf16" in err and "--model-kwarg" in err


def test_bad_config_values_are_clear_errors(tmp_path: Path, tiny: TrainData) -> None:
    with pytest.raises(CifarlabError, match="keras_aug"):
        fit(_cfg(tmp_path / "a", augment="wobble"), data=tiny)
    with pytest.raises(CifarlabError, match="optimizer"):
        fit(_cfg(tmp_path / "b", optimizer="lbfgs"), data=tiny)
    with pytest.raises(CifarlabError, match="batch size 1000"):
        fit(_cfg(tmp_path / "c", batch_size=1000), data=tiny)


def test_missing_run_folder_is_a_clear_error(tmp_path: Path, tiny: TrainData) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_from_run(missing)
    with pytest.raises(RunError, match="does not exist"):
        load_config(missing)
    with pytest.raises(RunError, match="does not exist"):
        fit(_cfg(missing), data=tiny, resume=True)
    missing.mkdir()
    with pytest.raises(RunError, match=r"last\.json"):
        fit(_cfg(missing), data=tiny, resume=True)


def test_metrics_csv_has_one_format_for_every_trainer(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    row = {"epoch": 3.0, "train_loss": 0.123456789, "train_acc": 0.5, "lr": 1e-7, "seconds": 9.876}
    write_metrics_csv(path, [row, {**row, "epoch": 4, "val_loss": "", "val_acc": None}])
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(METRICS_HEADER)
    # Integer epoch, 6 significant digits, seconds to 0.01, empty cells for unmeasured values.
    assert lines[1] == "3,0.123457,0.5,,,1e-07,9.88"
    assert lines[2] == "4,0.123457,0.5,,,1e-07,9.88"
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file


@pytest.fixture()
def saved(tmp_path: Path, baseline_checkpoint_meta: dict[str, object]) -> Path:
    model = get_model("baseline_cnn")
    stem = tmp_path / "run" / "best"
    save_checkpoint(
        stem, model, baseline_checkpoint_meta, extra_tensors={"optim/0/step": torch.tensor(3.0)}
    )
    return stem


def test_checkpoint_round_trip_keeps_weights_and_extras(saved: Path) -> None:
    tensors, meta = load_checkpoint(saved)
    assert meta["format"].startswith("cifarlab-checkpoint/")
    assert tensors["extra/optim/0/step"].item() == 3.0
    model, _ = load_model_from_run(saved.parent)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_truncated_weights_are_a_clear_error(saved: Path) -> None:
    path = saved.with_suffix(".safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model_from_run(saved.parent)


def test_corrupt_weights_with_valid_length_are_caught_by_hash(saved: Path) -> None:
    path = saved.with_suffix(".safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(saved)


def test_corrupt_weights_without_hash_are_a_clear_error(saved: Path) -> None:
    meta_path = saved.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    del meta["weights_sha256"]
    meta_path.write_text(json.dumps(meta))
    saved.with_suffix(".safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(saved)


def test_truncated_metadata_is_a_clear_error(saved: Path) -> None:
    meta_path = saved.with_suffix(".json")
    meta_path.write_text(meta_path.read_text()[:40])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model_from_run(saved.parent)


def test_foreign_json_is_refused(saved: Path) -> None:
    saved.with_suffix(".json").write_text(json.dumps({"format": "keras", "model": "x"}))
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(saved)


def test_weights_of_another_model_are_refused(saved: Path) -> None:
    meta_path = saved.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["model"] = "augmented_cnn"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit model"):
        load_model_from_run(saved.parent)


@pytest.mark.real_data
def test_cli_train_smoke_on_real_data(
    tmp_path: Path, cifar_source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cifarlab.data import prepare

    cache = tmp_path / "cache"
    prepare(source=cifar_source, cache_dir=cache)
    run = tmp_path / "runs" / "smoke"
    args = ["train", "--model", "baseline_cnn", "--subset", "256", "--epochs", "1"]
    args += ["--batch-size", "64", "--run-dir", str(run), "--cache-dir", str(cache)]
    assert main([*args, "--no-progress", "--threads", "1"]) == 0
    assert "best epoch 1" in capsys.readouterr().out
    cfg, _ = load_config(run)
    assert cfg.subset == 256 and cfg.augment == "none"
    assert asdict(cfg)["model"] == "baseline_cnn"
    _, meta = load_checkpoint(run / "last")
    assert meta["train_state"]["history"][0]["epoch"] == 1


def test_config_defaults_to_each_models_own_augmentation() -> None:
    assert StandardRecipe(model="augmented_cnn").augment == "keras_aug"
    assert StandardRecipe(model="baseline_cnn").augment == "none"
    assert StandardRecipe(model="augmented_cnn", augment="none").augment == "none"
