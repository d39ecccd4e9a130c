"""The bundled serving model is as accurate as its metadata says, on real test images.

    .venv/bin/pytest tests/test_bundled_model.py

Runs `src/cifarlab/serve/models/default.onnx` through the serving `Predictor` (ONNX Runtime,
no torch) on a fixed subset of the official test split and compares the accuracy with the
`test_accuracy` recorded in the model's metadata (measured on all 10,000 at export time).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cifarlab.serve.predictor import BUNDLED_MODEL, Predictor, preprocess

N = 2000  # test images: the binomial standard error at ~90% accuracy is then ~0.7 points


@pytest.mark.real_data
def test_bundled_model_accuracy_agrees_with_its_metadata(
    cifar_source: Path, tmp_path: Path
) -> None:
    from cifarlab import data

    data.prepare(cifar_source, tmp_path, progress=False)
    images, labels = data.load_split("test", tmp_path)
    # Every 5th image: a subset spread over the whole file, fixed so the test is deterministic.
    images, labels = images[:: len(images) // N][:N], labels[:: len(labels) // N][:N]
    predictor = Predictor(BUNDLED_MODEL)
    claimed = predictor.info.test_accuracy
    assert claimed is not None, "the bundled model's metadata has no test_accuracy"
    logits = np.concatenate(
        [predictor.infer(preprocess(images[i : i + 250])) for i in range(0, N, 250)]
    )
    measured = float((logits.argmax(1) == labels).mean())
    # A subset of the very test set the claim was measured on: the two agree unless the model,
    # its preprocessing or its metadata is wrong. 4 standard errors: fails by chance ~1 in 16,000.
    tolerance = 4 * math.sqrt(claimed * (1 - claimed) / N)
    assert abs(measured - claimed) <= tolerance, (measured, claimed, tolerance)
    assert measured > 0.5  # and far above chance (10%) whatever the metadata says
