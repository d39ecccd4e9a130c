"""The data layer on the real CIFAR-10 files (the `cifar_source` fixture), into a temp cache.

    .venv/bin/pytest tests/test_data_real.py   # or set CIFARLAB_DATA_SOURCE to the files

Preparing takes a few seconds once per session; every test then reads the same cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cifarlab import data, eda
from cifarlab.constants import CIFAR_MEAN_255, CIFAR_STD_255, CLASSES

pytestmark = pytest.mark.real_data

# sha256 of the validation indices (little-endian int64): pins the split across machines and
# numpy versions. Change it only together with SPLIT_SEED or the split method.
VAL_INDICES_SHA256 = "f2c51b7a8a5d365993ab6d251ca7d0588fae7239b7d9d5c24577f46b9e9997be"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_cache(cifar_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("real-cache")
    data.prepare(cifar_source, cache, progress=False)
    return cache


def test_counts_per_split_and_class(real_cache: Path) -> None:
    expected = {"train_full": 5000, "train": 4000, "val": 1000, "test": 1000}
    for split, per_class in expected.items():
        images, labels = data.load_split(split, real_cache)
        assert images.shape == (per_class * 10, 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10, split


def test_first_labels_match_the_published_files(real_cache: Path) -> None:
    assert data.load_split("train_full", real_cache)[1][:10].tolist() == [
        6,
        9,
        9,
        4,
        1,
        1,
        2,
        7,
        8,
        3,
    ]
    assert data.load_split("test", real_cache)[1][:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_channel_statistics_of_the_50000_training_images(real_cache: Path) -> None:
    images, _ = data.load_split("train_full", real_cache)
    stats = eda.channel_stats(images)
    assert stats["mean"] == list(CIFAR_MEAN_255)
    assert stats["std"] == list(CIFAR_STD_255)
    # Cross-check the histogram method against a direct float64 computation on one channel.
    red = images[..., 0].astype(np.float64)
    assert stats["mean_full_precision"][0] == pytest.approx(red.mean(), abs=1e-9)
    assert stats["std_full_precision"][0] == pytest.approx(red.std(), abs=1e-9)


def test_split_is_stratified_disjoint_and_deterministic(real_cache: Path) -> None:
    train_idx, val_idx = data.load_split_indices(real_cache)
    _, labels = data.load_split("train_full", real_cache)
    assert np.intersect1d(train_idx, val_idx).size == 0
    assert np.array_equal(np.union1d(train_idx, val_idx), np.arange(50_000))
    assert np.bincount(labels[val_idx]).tolist() == [1000] * 10
    again_train, again_val = data.stratified_split(labels)
    assert np.array_equal(again_train, train_idx) and np.array_equal(again_val, val_idx)
    assert hashlib.sha256(val_idx.astype("<i8").tobytes()).hexdigest() == VAL_INDICES_SHA256


def test_second_prepare_verifies_without_rebuilding(cifar_source: Path, real_cache: Path):
    ddir = data.dataset_dir(real_cache)
    stamp = (ddir / "manifest.json").stat().st_mtime_ns
    assert data.prepare(cifar_source, real_cache, progress=False) == ddir
    assert (ddir / "manifest.json").stat().st_mtime_ns == stamp
    manifest = data.verify_cache(ddir)
    assert manifest["source_sha256"] == {
        n: data.OFFICIAL_SHA256[n] for n in data.OFFICIAL_SPEC.bin_files
    }


def test_real_files_match_embedded_checksums(cifar_source: Path) -> None:
    for name, want in data.OFFICIAL_SHA256.items():
        assert data.sha256_file(cifar_source / name) == want, name
    names = (cifar_source / "batches.meta.txt").read_text().split()
    assert tuple(names) == CLASSES


def test_committed_eda_json_has_the_published_statistics() -> None:
    report = json.loads((REPO / "reports" / "eda.json").read_text())
    assert report["channel_stats"]["train_full"]["mean"] == list(CIFAR_MEAN_255)
    assert report["channel_stats"]["train_full"]["std"] == list(CIFAR_STD_255)
    assert report["counts"]["train"]["total"] == 40_000
    assert report["channel_stats"]["train"]["images"] == 40_000
    for figure in report["figures"]:
        assert (REPO / "reports" / figure).is_file()
