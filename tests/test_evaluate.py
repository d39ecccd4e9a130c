"""Evaluation metrics on synthetic logits whose answers are known, and a tiny evaluate_run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cifarlab.constants import CLASSES
from cifarlab.evaluate import (
    EvaluationError,
    confusion,
    evaluate_run,
    expected_calibration_error,
    fit_temperature,
    nll,
    overfitting_gap,
    per_class_metrics,
    save_confusion_figure,
    softmax,
)


def test_ece_is_zero_for_perfectly_calibrated_bins() -> None:
    # Confidence 0.75 in every row and exactly 3 of 4 correct: calibrated by construction.
    probs = np.tile([0.75, 0.25], (400, 1))
    labels = np.array([0, 0, 0, 1] * 100)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_equals_confidence_minus_accuracy_for_one_bin() -> None:
    probs = np.tile([0.9, 0.1], (10, 1))  # confidence 0.9, only half right
    labels = np.array([0, 1] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)


def test_ece_weights_bins_by_their_size() -> None:
    # 2 samples at confidence 1.0 (both right) and 2 at 0.6 (both wrong): |1-1|*0.5+|0-0.6|*0.5
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3)


def test_temperature_recovers_the_scale_of_overconfident_logits() -> None:
    # Labels drawn from softmax(z); the model reports 3*z, so the best temperature is 3.
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5000, 10)) * 1.5
    p = softmax(z)
    # Inverse-CDF sampling of one label per row, vectorised.
    labels = (p.cumsum(axis=1) < rng.random((len(p), 1))).sum(axis=1).clip(0, 9)
    t = fit_temperature(3.0 * z, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    before = expected_calibration_error(softmax(3.0 * z), labels)
    after = expected_calibration_error(softmax(3.0 * z / t), labels)
    assert after < before / 3
    assert nll(3.0 * z / t, labels) < nll(3.0 * z, labels)


def test_nll_matches_hand_computation() -> None:
    logits = np.array([[0.0, np.log(3.0)]])  # p = (0.25, 0.75)
    assert nll(logits, np.array([1])) == pytest.approx(-np.log(0.75))


def test_per_class_metrics_match_counts() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 1, 0])
    m = per_class_metrics(labels, preds, classes=["a", "b", "c"])
    assert m["a"]["precision"] == pytest.approx(2 / 3)
    assert m["a"]["recall"] == pytest.approx(2 / 3)
    assert m["b"]["precision"] == pytest.approx(2 / 3)
    assert m["b"]["recall"] == pytest.approx(1.0)
    assert m["b"]["f1"] == pytest.approx(0.8)
    assert m["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_confusion_matrix_rows_are_true_classes(tmp_path: Path) -> None:
    cm = confusion(np.array([0, 0, 1]), np.array([1, 0, 1]), n_classes=10)
    assert cm.shape == (10, 10)
    assert cm[0, 1] == 1 and cm[0, 0] == 1 and cm[1, 1] == 1 and cm.sum() == 3
    path = save_confusion_figure(cm, tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overfitting_gap_is_read_at_the_selected_epoch() -> None:
    rows = [
        {"epoch": 1.0, "train_acc": 0.5, "val_acc": 0.45},
        {"epoch": 2.0, "train_acc": 0.8, "val_acc": 0.7},
        {"epoch": 3.0, "train_acc": 0.9, "val_acc": 0.69},
    ]
    gap, train, val = overfitting_gap(rows, 2)
    assert (train, val) == (0.8, 0.7)
    assert gap == pytest.approx(0.1)


def _tiny_run(tmp_path: Path) -> Path:
    """A run folder holding a random-backbone transfer model checkpoint."""
    import torch

    from cifarlab.checkpoint import save_checkpoint
    from cifarlab.models import get_model

    torch.manual_seed(0)
    model = get_model("mobilenet_v2_transfer", pretrained=False)
    run = tmp_path / "tiny"
    run.mkdir()
    meta = {
        "model": "mobilenet_v2_transfer",
        "model_kwargs": {"pretrained": False},
        "classes": list(CLASSES),
        "epoch": 2,
        "metrics": {},
        "config": {},
    }
    save_checkpoint(run / "best", model, meta)
    with open(run / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"])
        w.writerow([1, 2.3, 0.10, 2.3, 0.12, 0.001, 1.0])
        w.writerow([2, 2.2, 0.30, 2.2, 0.20, 0.001, 1.0])
    return run


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_evaluate_run_writes_eval_json_and_figure(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path)
    res = evaluate_run(run, data={"val": _data(30, 1), "test": _data(40, 2)}, batch_size=16)
    saved = json.loads((run / "eval.json").read_text())
    assert saved["test_accuracy"] == res["test_accuracy"]
    assert saved["n_test"] == 40
    assert saved["epoch"] == 2
    assert saved["overfitting_gap"] == pytest.approx(0.10)
    assert saved["params_total"] == 2_389_130
    assert saved["params_trainable"] == 165_258
    assert set(saved["per_class"]) == set(CLASSES)
    assert sum(map(sum, saved["confusion_matrix"])) == 40
    assert saved["temperature"] > 0
    assert 0 <= saved["ece"] <= 1 and 0 <= saved["ece_after_temperature"] <= 1
    assert saved["inference_images_per_second"] > 0
    assert saved["inference_backend"] == "onnxruntime"
    assert (run / "confusion_matrix.png").stat().st_size > 1000

    # Eager torch gives the same answers as the onnxruntime default.
    res_torch = evaluate_run(
        run, data={"val": _data(30, 1), "test": _data(40, 2)}, batch_size=16, backend="torch"
    )
    assert res_torch["inference_backend"] == "torch"
    assert res_torch["test_loss"] == pytest.approx(res["test_loss"], abs=1e-4)
    assert res_torch["confusion_matrix"] == res["confusion_matrix"]


def test_evaluate_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_run(tmp_path / "nope", data={})


def test_evaluate_cli_reports_missing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cifarlab.cli import main

    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_overfitting_gap_is_none_without_validation_columns() -> None:
    assert overfitting_gap([{"epoch": 1.0, "train_acc": 0.9}], 1) == (None, 0.9, None)
