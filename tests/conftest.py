"""Shared fixtures: where the real CIFAR-10 files are, and the policy when they are missing.

Real-data tests use `CIFARLAB_DATA_SOURCE` or `../shared/datasets/cifar-10-batches-bin` next
to the repo. Missing data fails loudly in CI (`CI=true`) and skips with a reason elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    msg = f"{what} not found at {path}; set the variable or put ../shared beside the repo"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def cifar_source() -> Path:
    """Folder with the official CIFAR-10 binary files."""
    env = os.environ.get("CIFARLAB_DATA_SOURCE")
    path = Path(env) if env else SHARED / "datasets" / "cifar-10-batches-bin"
    return _need(path, "CIFAR-10 binary files (CIFARLAB_DATA_SOURCE)")


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """torchvision's ImageNet mobilenet_v2 weights file."""
    env = os.environ.get("CIFARLAB_MOBILENET_WEIGHTS")
    path = Path(env) if env else SHARED / "weights" / "mobilenet_v2-b0353104.pth"
    return _need(path, "mobilenet_v2 weights (CIFARLAB_MOBILENET_WEIGHTS)")


@pytest.fixture()
def baseline_checkpoint_meta() -> dict[str, object]:
    """The least metadata `save_checkpoint` accepts for an untrained `baseline_cnn`."""
    return {
        "model": "baseline_cnn",
        "model_kwargs": {},
        "classes": [],
        "epoch": 1,
        "metrics": {},
        "config": {},
    }
