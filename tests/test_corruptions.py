"""CIFAR-10-C generator and the robustness measurement.

.venv/bin/pytest -q tests/test_corruptions.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifarlab import corruptions as cc
from cifarlab import robustness
from cifarlab.jpeg import random_copies, reencode


@pytest.fixture(scope="module")
def real_images(cifar_source: Path) -> np.ndarray:
    """The first 40 official test images (parsed straight from the .bin file)."""
    from cifarlab.data import parse_records

    images, _ = parse_records((cifar_source / "test_batch.bin").read_bytes(), "test_batch.bin")
    return images[:40]


@pytest.mark.real_data
@pytest.mark.parametrize("name", cc.CORRUPTIONS)
def test_each_corruption_is_deterministic_and_changes_the_image(
    name: str, real_images: np.ndarray
) -> None:
    for severity in (1, 5):
        a = cc.corrupt(real_images, name, severity, seed=3)
        b = cc.corrupt(real_images, name, severity, seed=3)
        assert a.dtype == np.uint8 and a.shape == real_images.shape
        np.testing.assert_array_equal(a, b)
        changed = (a != real_images).any(axis=(1, 2, 3))
        # Impulse noise at severity 1 hits 1% of values: a few images may escape it.
        assert changed.mean() >= (0.7 if name == "impulse_noise" else 0.95), (name, severity)


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["gaussian_noise", "contrast", "fog", "motion_blur"])
def test_severity_5_moves_pixels_further_than_severity_1(
    name: str, real_images: np.ndarray
) -> None:
    def dist(s: int) -> float:
        return float(np.abs(cc.corrupt(real_images, name, s).astype(int) - real_images).mean())

    assert dist(5) > dist(1)


@pytest.mark.real_data
def test_random_corruptions_depend_on_the_seed(real_images: np.ndarray) -> None:
    a = cc.corrupt(real_images, "shot_noise", 3, seed=0)
    b = cc.corrupt(real_images, "shot_noise", 3, seed=1)
    assert not np.array_equal(a, b)


def test_unknown_corruption_or_severity_is_a_clear_error() -> None:
    x = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(cc.CorruptionError, match="gaussian_noise"):
        cc.corrupt(x, "rain", 1)
    with pytest.raises(cc.CorruptionError, match="severity"):
        cc.corrupt(x, "fog", 6)
    with pytest.raises(cc.CorruptionError, match="uint8"):
        cc.corrupt(x.astype(np.float32), "fog", 1)


def test_missing_frost_textures_name_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CIFARLAB_FROST_DIR", str(tmp_path))
    cc._frost_textures.cache_clear()
    try:
        with pytest.raises(cc.CorruptionError, match="frost"):
            cc.corrupt(np.zeros((1, 32, 32, 3), np.uint8), "frost", 1)
    finally:
        cc._frost_textures.cache_clear()


def test_clipped_zoom_matches_scipy_zoom() -> None:
    import math

    from scipy import ndimage

    x = np.random.default_rng(0).random((2, 32, 32, 3))
    for f in (1.03, 1.25, 2.25):
        ch = math.ceil(32 / f)
        top = (32 - ch) // 2
        z = ndimage.zoom(x[:, top : top + ch, top : top + ch], (1, f, f, 1), order=1)
        trim = (z.shape[1] - 32) // 2
        np.testing.assert_allclose(cc._clipped_zoom(x, f), z[:, trim : trim + 32, trim : trim + 32])


def test_jpeg_reencode_changes_pixels_more_at_lower_quality() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    err = {q: np.abs(reencode(x, q).astype(int) - x).mean() for q in (30, 90)}
    assert 0 < err[90] < err[30]
    with pytest.raises(ValueError, match="quality"):
        reencode(x, 100)
    np.testing.assert_array_equal(
        random_copies(x, 2, (30, 95), 7), random_copies(x, 2, (30, 95), 7)
    )


def test_measure_scores_clean_jpeg_and_corruptions_and_merges(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(60) % 10

    def oracle(x: np.ndarray) -> np.ndarray:
        # Right on bright images, wrong on dark ones: corruptions that darken cost accuracy.
        bright = x.reshape(len(x), -1).mean(1) > 120
        out = np.zeros((len(x), 10))
        out[np.arange(len(x)), np.where(bright, truth[: len(x)], (truth[: len(x)] + 1) % 10)] = 5
        return out

    subset = robustness.stratified_subset(labels, 20)
    truth = labels[subset]
    assert len(subset) == 20 and np.bincount(truth).tolist() == [2] * 10
    res = robustness.measure(
        oracle, images, labels, subset=subset, names=["contrast"], cache_root=tmp_path
    )
    assert res["n_images"] == 20 and set(res["jpeg"]) == {"90", "75", "50", "30"}
    assert set(res["corruptions"]["contrast"]) == {"1", "2", "3", "4", "5"}
    cells = list(res["corruptions"]["contrast"].values())
    assert res["mean_corruption_accuracy"] == pytest.approx(np.mean(cells))
    # Cached arrays are reused: the second call reads what the first wrote.
    cached = robustness.cache_folder(tmp_path, 0) / "contrast-3.npy"
    np.testing.assert_array_equal(np.load(cached), cc.corrupt(images, "contrast", 3))
    out = tmp_path / "robustness.json"
    robustness.merge_result(out, "a", {"x": 1})
    robustness.merge_result(out, "b", {"x": 2})
    assert set(json.loads(out.read_text())["models"]) == {"a", "b"}


def test_health_shows_the_robustness_summary_of_this_very_file(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cifarlab.io import sha256_file
    from cifarlab.serve.app import create_app
    from cifarlab.serve.settings import Settings
    from tiny_onnx import write_tiny_model

    model = write_tiny_model(tmp_path / "m.onnx")
    side = model.with_suffix(".json")
    side.write_text(json.dumps({"sha256": sha256_file(model)}))
    entry = {
        "clean": {"accuracy": 0.9, "ece": 0.01},
        "jpeg": {"75": {"accuracy": 0.88, "ece": 0.02}},
        "mean_corruption_accuracy": 0.7,
        "corruptions_measured": 15,
        "n_images": 10000,
    }
    assert robustness.update_sidecar(model, "bundled", entry)
    with TestClient(create_app(Settings(model_path=model))) as client:
        got = client.get("/health").json()["model"]["robustness"]
    assert got["jpeg75_accuracy"] == 0.88 and got["mean_corruption_accuracy"] == 0.7
    assert got["source"] == "reports/robustness.json#models.bundled"
    # A side-car that describes another file is not believed.
    side.write_text(json.dumps({"sha256": "0" * 64, "robustness": {"clean_accuracy": 1.0}}))
    assert not robustness.update_sidecar(model, "bundled", entry)
    with TestClient(create_app(Settings(model_path=model))) as client:
        assert client.get("/health").json()["model"]["robustness"] is None


def test_report_section_renders_every_model_from_the_json() -> None:
    entry = {
        "n_images": 2000,
        "subset": "stratified 2000 of 10000",
        "clean": {"accuracy": 0.9, "ece": 0.01},
        "jpeg": {"75": {"accuracy": 0.8, "ece": 0.05}, "50": {"accuracy": 0.7, "ece": 0.06}},
        "corruptions": {"fog": {str(s): 0.5 for s in cc.SEVERITIES}},
        "mean_corruption_accuracy": 0.5,
    }
    lines = robustness.render_section({"models": {"a": entry, "b": {**entry, "subset": None}}})
    text = "\n".join(lines)
    assert "| a | 2,000 (subset) | 90.00% | 80.00% | 70.00% | 50.00% | 1.00% | 5.00% |" in text
    assert "| b | 2,000 |" in text and "| fog | 50.00% | 50.00% |" in text
