"""EDA numbers and figures on small synthetic splits (no cache needed: the loader is injected).

.venv/bin/pytest tests/test_eda.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifarlab import eda
from cifarlab.cli import main
from cifarlab.constants import CLASSES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _split(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.int64), n_per_class)
    images = rng.integers(0, 256, size=(labels.size, 32, 32, 3), dtype=np.uint8)
    images[..., 2] //= 2  # make the channels differ so a channel mix-up would show
    return images, labels


SPLITS = {"train_full": _split(10, 0), "val": _split(2, 1), "test": _split(3, 2)}
SPLITS["train"] = (SPLITS["train_full"][0][:80], SPLITS["train_full"][1][:80])


def fake_loader(split: str, cache_dir: object = None) -> tuple[np.ndarray, np.ndarray]:
    return SPLITS[split]


def test_stats_of_a_hand_checkable_image_set() -> None:
    # Channel R: half 0, half 255 -> mean 127.5, population std 127.5 (sample std would differ).
    # Channel G: all 10 -> mean 10, std 0. Channel B: values 0, 1, 2, 3 equally -> mean 1.5,
    # std sqrt(1.25).
    images = np.zeros((2, 2, 2, 3), dtype=np.uint8)
    images[0, ..., 0] = 255
    images[..., 1] = 10
    images[..., 2] = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    stats = eda.channel_stats(images)
    assert stats["images"] == 2
    np.testing.assert_allclose(stats["mean_full_precision"], [127.5, 10.0, 1.5])
    np.testing.assert_allclose(stats["std_full_precision"], [127.5, 0.0, 1.25**0.5])
    assert stats["mean"] == [127.5, 10.0, 1.5]


@pytest.mark.real_data
def test_real_training_set_matches_the_published_cifar10_statistics(
    cifar_source: Path, tmp_path: Path
) -> None:
    from cifarlab import data

    data.prepare(cifar_source, tmp_path, progress=False)
    images, _ = data.load_split("train_full", tmp_path)
    stats = eda.channel_stats(images)
    # Published (0-1 scale): mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616).
    np.testing.assert_allclose(
        np.asarray(stats["mean_full_precision"]) / 255, [0.4914, 0.4822, 0.4465], atol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(stats["std_full_precision"]) / 255, [0.2470, 0.2435, 0.2616], atol=1e-4
    )


def test_histograms_count_every_pixel_per_channel() -> None:
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    images[..., 1] = 255
    images[0, 0, 0, 2] = 7
    hist = eda.channel_histograms(images)
    assert hist.shape == (3, 256) and hist.sum(axis=1).tolist() == [32, 32, 32]
    assert hist[0, 0] == 32 and hist[1, 255] == 32 and hist[2, 7] == 1 and hist[2, 0] == 31


def test_histograms_reject_non_uint8_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        eda.channel_histograms(np.zeros((1, 32, 32, 3), dtype=np.float32))


def test_class_counts_name_every_class() -> None:
    counts = eda.class_counts(np.array([0, 0, 9, 3]))
    assert list(counts) == [*CLASSES, "total"]
    assert counts["airplane"] == 2 and counts["truck"] == 1 and counts["bird"] == 0
    assert counts["total"] == 4


def test_run_writes_three_figures_and_the_json(tmp_path: Path) -> None:
    written = eda.run(tmp_path / "reports", loader=fake_loader)
    names = sorted(p.name for p in written)
    assert names == [
        "channels_distribution.png",
        "class_distribution.png",
        "eda.json",
        "sample_per_class.png",
    ]
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC
            assert path.stat().st_size > 10_000  # an actual drawing, not an empty canvas
    report = json.loads((tmp_path / "reports" / "eda.json").read_text())
    assert report["counts"]["val"]["total"] == 20
    assert report["counts"]["test"]["cat"] == 3
    assert report["counts"]["train_full"]["total"] == 100
    expected = SPLITS["train"][0].reshape(-1, 3).astype(np.float64).mean(axis=0)
    assert np.allclose(report["channel_stats"]["train"]["mean_full_precision"], expected)
    assert report["channel_stats"]["train"]["images"] == 80
    assert report["figures"] == [
        "figures/sample_per_class.png",
        "figures/class_distribution.png",
        "figures/channels_distribution.png",
    ]
    # No temp files left beside the outputs.
    assert not [p for p in (tmp_path / "reports").rglob(".*")]


def test_sample_grid_tolerates_classes_with_few_images(tmp_path: Path) -> None:
    images, labels = _split(3, 5)  # fewer than the 10 columns per class
    path = eda.plot_samples(images, labels, tmp_path / "grid.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_cli_eda_without_cache_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = main(["eda", "--cache-dir", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "cifarlab data prepare" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
