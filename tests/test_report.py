"""The report from tiny synthetic run folders: files, figures and the results.json schema."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cifarlab.constants import CLASSES
from cifarlab.report import RESULT_KEYS, ReportError, build_report, find_runs

PNG = b"\x89PNG\r\n\x1a\n"


def _fake_run(root: Path, name: str, model: str, acc: float, epochs: int = 3) -> Path:
    """A run folder as train + evaluate leave it (no checkpoint needed for the report)."""
    run = root / name
    run.mkdir(parents=True)
    with open(run / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"])
        for e in range(1, epochs + 1):
            w.writerow([e, 2.0 / e, acc - 0.1 + 0.05 * e, 2.1 / e, acc - 0.12 + 0.04 * e, 1e-3, 10])
    (run / "config.json").write_text(json.dumps({"model": model}))
    (run / "env.json").write_text(json.dumps({"command": ["cifarlab", "train", "--model", model]}))
    per_class = {c: {"precision": acc, "recall": acc, "f1": acc, "support": 2} for c in CLASSES}
    ev = {
        "run": name,
        "model": model,
        "epoch": epochs,
        "n_test": 20,
        "test_accuracy": acc,
        "test_loss": 1.0 - acc,
        "overfitting_gap": 0.02,
        "ece": 0.05,
        "ece_after_temperature": 0.01,
        "temperature": 1.5,
        "test_loss_after_temperature": 0.9 - acc,
        "params_total": 1000,
        "params_trainable": 100,
        "inference_images_per_second": 1234.0,
        "per_class": per_class,
        "confusion_matrix": [[2 if i == j else 0 for j in range(10)] for i in range(10)],
    }
    (run / "eval.json").write_text(json.dumps(ev))
    (run / "confusion_matrix.png").write_bytes(PNG + b"fake")
    return run


def test_report_writes_markdown_results_and_figures(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _fake_run(runs, "mobilenet_v2_transfer", "mobilenet_v2_transfer", 0.86)
    _fake_run(runs, "baseline_cnn", "baseline_cnn", 0.80)
    _fake_run(runs, "augmented_cnn", "augmented_cnn", 0.82)
    (runs / "not_evaluated").mkdir()
    out = tmp_path / "reports"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "class_distribution.png").write_bytes(PNG)  # an EDA figure
    (out / "NOTES.md").write_text("Hand-written explanation.")
    (tmp_path / "runs" / "mobilenet_v2_transfer" / "timing.json").write_text(
        json.dumps({"extra_seconds": 100.0})
    )

    report = build_report(runs_dir=runs, out_dir=out)

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"models", "hardware", "date", "git_sha", "provenance"}
    assert results["provenance"]["git"]["commit"] == results["git_sha"]
    assert [m["name"] for m in results["models"]] == [
        "baseline_cnn",
        "augmented_cnn",
        "mobilenet_v2_transfer",
    ]
    for m in results["models"]:
        assert tuple(m) == RESULT_KEYS
    mob = results["models"][2]
    assert mob["train_seconds"] == pytest.approx(130.0)  # 3 epochs x 10 s + feature extraction
    assert mob["command"] == "cifarlab train --model mobilenet_v2_transfer"
    assert mob["test_accuracy"] == 0.86

    text = report.read_text()
    assert "| baseline_cnn | baseline_cnn | 1,000 | 100 | 80.00% |" in text
    # Floors: 80.00 vs 78.66 met; 86.00 vs 87.42 missed by 1.42 points, and said so.
    assert "mobilenet_v2_transfer misses its floor by 1.42 percentage points" in text
    assert "baseline_cnn misses" not in text
    assert "Hand-written explanation." in text
    assert "figures/class_distribution.png" in text
    assert "## Best model: mobilenet_v2_transfer" in text
    assert (out / "figures" / "three_model_comparison.png").read_bytes()[:8] == PNG
    for name in ("baseline_cnn", "augmented_cnn", "mobilenet_v2_transfer"):
        copied = out / "runs" / name
        for f in ("metrics.csv", "eval.json", "config.json", "env.json", "confusion_matrix.png"):
            assert (copied / f).is_file(), (name, f)
        assert (copied / "training_curves.png").read_bytes()[:8] == PNG
        assert f"runs/{name}/training_curves.png" in text
    assert not list((out / "runs").rglob("*.safetensors"))


def test_report_on_explicit_runs_only(tmp_path: Path) -> None:
    a = _fake_run(tmp_path / "runs", "a", "baseline_cnn", 0.79)
    _fake_run(tmp_path / "runs", "b", "augmented_cnn", 0.81)
    build_report([a], out_dir=tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["a"]


def test_report_requires_evaluated_runs(tmp_path: Path) -> None:
    (tmp_path / "runs" / "x").mkdir(parents=True)
    assert find_runs(tmp_path / "runs") == []
    with pytest.raises(ReportError, match="no evaluated runs"):
        build_report(runs_dir=tmp_path / "runs", out_dir=tmp_path / "out")
    with pytest.raises(ReportError, match="cifarlab evaluate"):
        build_report([tmp_path / "runs" / "x"], out_dir=tmp_path / "out")


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cifarlab.cli import main

    _fake_run(tmp_path / "runs", "baseline_cnn", "baseline_cnn", 0.8)
    out = tmp_path / "out"
    assert main(["report", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert (out / "REPORT.md").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_handles_runs_without_validation_columns(tmp_path: Path) -> None:
    # The fast speed-run trains on all 50,000 images: val columns empty, gap unknown.
    run = _fake_run(tmp_path / "runs", "fast94", "fastnet", 0.94)
    rows = (run / "metrics.csv").read_text().splitlines()
    cut = [rows[0]] + [",".join([*r.split(",")[:3], "", "", *r.split(",")[5:]]) for r in rows[1:]]
    (run / "metrics.csv").write_text("\n".join(cut) + "\n")
    ev = json.loads((run / "eval.json").read_text())
    (run / "eval.json").write_text(json.dumps({**ev, "overfitting_gap": None}))
    build_report([run], out_dir=tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["models"][0]["overfitting_gap"] is None
    assert (
        "| fastnet | fast94 | 1,000 | 100 | 94.00% | 0.060 | n/a |"
        in (tmp_path / "out" / "REPORT.md").read_text()
    )
